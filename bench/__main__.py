"""`python -m bench`: run every figure, write bench/results.json, rewrite BENCHMARKS.md and plots.

Each figure runs in its own Python process (`bench/fig_*.py`, `run() -> dict`); its log goes to
bench/results/<figure>.log. Figure 2 mostly sleeps (a 90 s prediction), so it runs in the
background while the others run one after another. Options:

    python -m bench                      # everything (~8 minutes here)
    python -m bench --only fig_storage   # some figures; the others keep their last results
    python -m bench --render-only        # re-render BENCHMARKS.md and plots from results.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT
from bench.report import machine_facts, render

RESULTS_JSON = ROOT / "bench" / "results.json"
LOGS = ROOT / "bench" / "results"
BACKGROUND = ("fig_api_calls",)
FOREGROUND = ("fig_orchestration", "fig_orchestration_pg", "profile_batch", "fig_scaling",
              "fig_throughput_large", "fig_storage", "fig_cold_start", "fig_sandbox",
              "fig_loop_lag", "fig_batch", "fig_ledger", "fig_manifest", "fig_sustained")

_CHILD = ("import json, sys; from bench import {name} as fig; "
          "json.dump(fig.run(), open(sys.argv[1], 'w'), indent=1)")


def _start(name: str) -> tuple[subprocess.Popen[bytes], Path, float]:
    LOGS.mkdir(exist_ok=True)
    out = LOGS / f"{name}.json"
    out.unlink(missing_ok=True)
    log = open(LOGS / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-c", _CHILD.format(name=name), str(out)],
                            cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(f"[bench] {name} started", flush=True)
    return proc, out, time.perf_counter()


def _finish(name: str, proc: subprocess.Popen[bytes], out: Path, start: float) -> dict[str, Any]:
    code = proc.wait()
    seconds = round(time.perf_counter() - start, 1)
    if code != 0 or not out.exists():
        print(f"[bench] {name} FAILED (exit {code}) after {seconds}s; "
              f"see bench/results/{name}.log", flush=True)
        return {"error": f"exit {code}; see bench/results/{name}.log", "bench_seconds": seconds}
    result = dict(json.loads(out.read_text()))
    result["bench_seconds"] = seconds
    print(f"[bench] {name} done in {seconds}s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated figure modules (default: all)")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)

    previous: dict[str, Any] = {}
    if RESULTS_JSON.exists():
        previous = json.loads(RESULTS_JSON.read_text())
    if args.render_only:
        render(previous)
        return 0
    wanted = set(args.only.split(",")) if args.only else set(BACKGROUND + FOREGROUND)
    figures: dict[str, Any] = dict(previous.get("figures", {}))
    started = time.perf_counter()
    load_before = os.getloadavg()
    background = [(n, *_start(n)) for n in BACKGROUND if n in wanted]
    commit = machine_facts()["git_commit"]
    for name in FOREGROUND:
        if name in wanted:
            figures[name] = {**_finish(name, *_start(name)), "measured_at_commit": commit}
    for name, proc, out, start in background:
        figures[name] = {**_finish(name, proc, out, start), "measured_at_commit": commit}
    total = round(time.perf_counter() - started, 1)
    command = "make bench" if os.environ.get("MAKELEVEL") else "python -m bench" + (
        f" --only {args.only}" if args.only else "")
    results = {
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "total_seconds": total,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_facts(),
        "figures": figures,
    }
    RESULTS_JSON.write_text(json.dumps(results, indent=1) + "\n")
    render(results)
    print(f"[bench] all done in {total}s; wrote bench/results.json, BENCHMARKS.md, bench/plots/",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
