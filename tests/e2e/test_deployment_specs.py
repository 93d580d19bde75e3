"""prefect.yaml and the Python `build()` functions describe the same deployments, and the example
pipeline's pure parts behave. No server needed."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from prefect_seedream.deployments import build_all
from prefect_seedream.deployments.common import RATE_LIMIT, WORK_POOL
from prefect_seedream.flows.pipeline_example import render_sheet, sheet_layout
from prefect_seedream.tasks.concurrency import create_command

ROOT = Path(__file__).resolve().parents[2]


def spec_of_yaml(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "entrypoint": item["entrypoint"], "parameters": item.get("parameters", {}),
        "triggers": [(set(t["expect"]), t["match"], t.get("parameters", {}))
                     for t in item.get("triggers", [])],
        "schedules": [(s["cron"], s["timezone"]) for s in item.get("schedules", [])],
        "pool": item["work_pool"]["name"], "env": item["work_pool"]["job_variables"]["env"],
        "enforce_parameter_schema": item.get("enforce_parameter_schema", True),
    }


def spec_of_python(deployment: Any) -> dict[str, Any]:
    return {
        "entrypoint": deployment.entrypoint, "parameters": deployment.parameters,
        "triggers": [(set(t.expect), t.match.model_dump(), t.parameters)
                     for t in deployment.triggers],
        "schedules": [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules],
        "pool": deployment.work_pool_name, "env": deployment.job_variables["env"],
        "enforce_parameter_schema": deployment.enforce_parameter_schema,
    }


def test_prefect_yaml_and_build_functions_agree() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    from_yaml = {(item["entrypoint"], item["name"]): spec_of_yaml(item)
                 for item in config["deployments"]}
    from_python = {(d.entrypoint, d.name): spec_of_python(d) for d in build_all(WORK_POOL)}
    assert from_yaml == from_python
    assert config["build"] == [{"prefect_seedream.deployments.bootstrap.ensure_rate_limit": {
        "name": RATE_LIMIT, "creates_per_minute": 600}}]


def test_served_deployments_need_no_pool() -> None:
    served = build_all()
    assert all(d.work_pool_name is None for d in served)
    assert {d.name for d in served} == {"on-request", "nightly", "on-webhook", "with-webhook",
                                        "on-images-stored", "example"}


def test_the_documented_rate_limit_command() -> None:
    assert create_command() == (
        "prefect gcl create replicate-create --limit 100 --slot-decay-per-second 10")
    assert create_command("x", 90) == "prefect gcl create x --limit 15 --slot-decay-per-second 1.5"


@pytest.mark.parametrize(("count", "columns", "expected"),
                         [(1, 4, (1, 272, 272)), (4, 4, (4, 1064, 272)), (5, 4, (4, 1064, 536))])
def test_sheet_layout(count: int, columns: int, expected: tuple[int, int, int]) -> None:
    assert sheet_layout(count, columns, 256, 8) == expected


def test_render_sheet_fits_every_image_into_the_grid() -> None:
    def jpeg(size: tuple[int, int], color: str) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", size, color).save(out, "JPEG")
        return out.getvalue()

    data = render_sheet([jpeg((1280, 720), "red"), jpeg((720, 1280), "blue")], thumb=100, gap=10)
    with Image.open(io.BytesIO(data)) as sheet:
        assert sheet.size == (230, 120)
        assert sheet.getpixel((60, 60))[0] > 200       # the red one, first cell
        assert sheet.getpixel((170, 60))[2] > 200      # the blue one, second cell
        assert sheet.getpixel((5, 5)) == (255, 255, 255)
