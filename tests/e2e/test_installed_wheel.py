"""What a user does: build the wheel, install it into a fresh virtualenv, and use it from a Prefect
project that has its own `flows/`, `tasks/` and `blocks/` packages.

The virtualenv gets the wheel and its declared dependencies only (no checkout on its path), so a
module missing from the wheel, a dependency missing from `pyproject.toml` or an import that still
says `from flows import ...` fails here. The sandbox, the S3 server and the Prefect API run in this
test process; the user's code runs in the fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from prefect_seedream.sandbox import Sandbox

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]

USER_FLOW = '''
"""The user's own flow: one of their tasks, then prefect-seedream's generate_images."""
import json
import os
import sys

from prefect import flow
from pydantic import SecretStr

import blocks
import flows
import tasks
from prefect_seedream import ReplicateCredentials, S3Destination, generate_images
from tasks.styling import house_style


@flow
def catalogue(product: str, bucket: str, endpoint: str) -> list[str]:
    token = SecretStr(os.environ["REPLICATE_API_TOKEN"])  # never a flow parameter
    images = generate_images(
        house_style(product), size="1K", aspect_ratio="4:3",
        credentials=ReplicateCredentials(api_token=token),  # base URL: REPLICATE_BASE_URL
        destination=S3Destination(bucket=bucket, prefix=blocks.PREFIX, endpoint_url=endpoint),
    )
    return [image.uri for image in images]


if __name__ == "__main__":
    import prefect_seedream
    uris = catalogue(*sys.argv[1:4])
    print(json.dumps({"uris": uris, "flows": flows.__file__, "tasks": tasks.__file__,
                      "blocks": blocks.__file__, "plugin": prefect_seedream.__file__}))
'''

USER_TEST = '''
from replicate.client import Client


def test_the_sandbox_fixture_comes_with_the_wheel(seedream_sandbox):
    client = Client(api_token=seedream_sandbox.api_token, base_url=seedream_sandbox.base_url)
    prediction = client.models.predictions.create(
        "bytedance/seedream-4", input={"prompt": "a test from the user project", "size": "1K"})
    assert prediction.id in {p["id"] for p in seedream_sandbox.predictions()}
'''


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv holding the built wheel, its dependencies and pytest: nothing else."""
    work = tmp_path_factory.mktemp("wheel-user")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(work / "dist"), str(ROOT)], check=True, capture_output=True)
    (wheel,) = (work / "dist").glob("prefect_seedream-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], check=True)
    python = work / "venv" / "bin" / "python"
    # The installer of this venv installs into the new one, with no pip bootstrap: uv (what
    # `make` installs with, its cache warm: a few seconds), else pip with no byte-compiling.
    uv = Path(sys.executable).with_name("uv")
    command = ([str(uv), "pip", "install", "-q", "--python", str(python)] if uv.exists() else
               [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                "--no-compile", "--disable-pip-version-check"])
    result = subprocess.run([*command, str(wheel), "pytest"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return python


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A Prefect project with packages named like ours: flows/, tasks/, blocks/."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "__init__.py").write_text('"""The user\'s own flows."""\n')
    (tmp_path / "flows" / "catalogue.py").write_text(USER_FLOW)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "__init__.py").write_text('"""The user\'s own tasks."""\n')
    (tmp_path / "tasks" / "styling.py").write_text(textwrap.dedent('''
        from prefect import task

        @task
        def house_style(product: str) -> str:
            return f"{product} on a walnut desk, house style 7"
    '''))
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "__init__.py").write_text('PREFIX = "userproj/catalogue"\n')
    (tmp_path / "test_user.py").write_text(USER_TEST)
    return tmp_path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def _run(python: Path, args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.usefixtures("prefect_harness")
def test_a_user_project_runs_generate_images_from_the_installed_wheel(
    fresh_python: Path, user_project: Path, seedream_sandbox: Sandbox, s3_endpoint: str,
    bucket: str, s3_client: Any,
) -> None:
    from prefect.settings import PREFECT_API_URL

    env = _env(PREFECT_API_URL=str(PREFECT_API_URL.value()),
               REPLICATE_API_TOKEN=seedream_sandbox.api_token,
               REPLICATE_BASE_URL=seedream_sandbox.base_url)
    out = _run(fresh_python, ["-m", "flows.catalogue", "a ceramic mug", bucket, s3_endpoint],
               user_project, env)
    result = json.loads(out.strip().splitlines()[-1])

    # The user's packages were theirs, ours came from the wheel (not this checkout).
    for name in ("flows", "tasks", "blocks"):
        assert Path(result[name]).parent == user_project / name
    plugin = Path(result["plugin"])
    assert plugin.is_relative_to(fresh_python.parent.parent) and not plugin.is_relative_to(ROOT)

    # The user's task shaped the prompt; the image is in S3 under the user's prefix.
    (prediction,) = seedream_sandbox.predictions()
    assert prediction["input"]["prompt"] == "a ceramic mug on a walnut desk, house style 7"
    (uri,) = result["uris"]
    assert uri == f"s3://{bucket}/userproj/catalogue/{prediction['id']}/0.jpg"
    head = s3_client.head_object(Bucket=bucket, Key=uri.split("/", 3)[3])
    assert head["ContentType"] == "image/jpeg" and head["ContentLength"] > 1000


@pytest.mark.usefixtures("prefect_harness")
def test_the_wheel_brings_its_command_blocks_entrypoints_and_pytest_plugin(
    fresh_python: Path, user_project: Path,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = _env(PREFECT_API_URL=str(PREFECT_API_URL.value()))
    bin_dir = fresh_python.parent
    assert "generate" in _run(bin_dir / "seedream", ["--help"], user_project, env)

    _run(fresh_python, ["-m", "prefect", "block", "register", "-m", "prefect_seedream.blocks"],
         user_project, env)
    with get_client(sync_client=True) as client:
        assert client.read_block_type_by_slug("seedream-s3-destination").slug

    # Deployment entrypoints are module paths: they load on a worker that has only the wheel.
    names = _run(fresh_python, ["-c", textwrap.dedent('''
        import yaml
        from prefect.flows import load_flow_from_entrypoint
        from importlib.metadata import entry_points
        spec = yaml.safe_load(open(__import__("sys").argv[1]))
        for d in spec["deployments"]:
            print(load_flow_from_entrypoint(d["entrypoint"]).name)
        (ep,) = [e for e in entry_points(group="prefect.collections")
                 if e.name == "prefect_seedream"]
        print(ep.load().__name__)
    '''), str(ROOT / "prefect.yaml")], user_project, env).split()
    assert {"generate-images", "generate-batch", "store-prediction", "submit-images",
            "make-contact-sheet"} <= set(names)
    assert names[-1] == "prefect_seedream.blocks"

    out = _run(fresh_python, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
               user_project, env)
    assert "1 passed" in out
