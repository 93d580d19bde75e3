# Everything a fresh machine needs: Python 3 and make. `make demo` and `make test` set up .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: demo test lint bench reliability clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# uv installs (and byte-compiles: PYTHONDONTWRITEBYTECODE may be set) the ~160 packages in
	@# well under a minute where pip takes ~2; pip if uv is unreachable.
	@{ $(PY) -m pip install --quiet --disable-pip-version-check uv && \
	   $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -e '.[dev]'; } || \
	 { $(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip && \
	   $(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'; }
	@rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)  ## the main job end to end on the sandbox + local S3 (no account, no bill)
	$(VENV)/bin/seedream generate "a lighthouse at dawn, oil painting" --sandbox --size 1K --aspect-ratio 16:9 --max-images 2

# Three workers, a test file each at a time (module fixtures such as the wheel's venv stay
# whole): most tests wait on servers and sandboxed predictions, so even on two cores a third
# worker shortens the run (fresh clone, 792 tests: 731 s with two workers, 693 s with three).
test: lint  ## lint, then the whole test suite
	$(PY) -m pytest -n 3 --dist loadfile --durations=15

# mypy cannot follow setuptools' editable mapping (prefect_seedream.flows -> flows/, ...), so it
# checks a tree of links with the installed layout; .mypy-tree is rebuilt every time.
lint: $(STAMP)  ## ruff and mypy (strict)
	$(VENV)/bin/ruff check .
	@rm -rf .mypy-tree && mkdir -p .mypy-tree/prefect_seedream
	@for f in prefect_seedream/* blocks deployments flows sandbox tasks; do \
		ln -s "$$PWD/$$f" .mypy-tree/prefect_seedream/; done
	$(VENV)/bin/mypy

reliability: $(STAMP)  ## rerun the fault tests and rewrite RELIABILITY.md from what they measured
	rm -f .reliability.json.*
	SEEDREAM_RELIABILITY_OUT=.reliability.json $(PY) -m pytest -q -n 2 --dist loadfile \
		tests/test_lifecycle.py tests/test_secrets.py tests/test_image_flows.py \
		tests/test_command_line.py tests/test_storage.py tests/test_paid_images_kept.py \
		tests/e2e/test_e2e_lifecycle.py tests/test_hostile_*.py tests/e2e/test_hostile_*.py \
		tests/test_fault_matrix*.py tests/e2e/test_fault_matrix*.py tests/test_request_ledger.py \
		tests/test_spend_limit.py tests/e2e/test_spend_limit_burst.py
	$(PY) tests/render_reliability.py .reliability.json.* > RELIABILITY.md && rm .reliability.json.*

# The Postgres figures need PostgreSQL's server binaries: from the system packages when they are
# missing and we may install them (root, apt); without them those figures say so, never faked.
bench: $(STAMP)  ## every benchmark figure; rewrites BENCHMARKS.md and bench/plots/
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || \
	 { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } ; } || \
	 echo "[bench] PostgreSQL is not installable here: the Postgres figures will say so"
	$(PY) -m bench

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .mypy-tree build
