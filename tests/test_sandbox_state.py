"""The clock-driven prediction state machine, without HTTP (pure, fake clock)."""

from __future__ import annotations

import pytest

from prefect_seedream.sandbox.config import image_count
from prefect_seedream.sandbox.prediction_state import PredictionRecord
from prefect_seedream.tasks.seedream_input import SeedreamInput

T0 = 1_700_000_000.0


def _record(**changes) -> PredictionRecord:
    request = SeedreamInput(prompt="fox", aspect_ratio="1:1")
    fields = dict(id="abc", seq=1, model="bytedance/seedream-4", version="v", input={},
                  request=request, width=2048, height=2048, image_count=1, created=T0,
                  queue_seconds=1.0, run_seconds=2.0)
    fields.update(changes)
    return PredictionRecord(**fields)


@pytest.mark.parametrize(("offset", "status"), [
    (0.0, "starting"), (0.99, "starting"), (1.0, "processing"), (2.9, "processing"),
    (3.0, "succeeded"), (100.0, "succeeded"),
])
def test_status_follows_the_clock(offset, status):
    assert _record().view(T0 + offset).status == status


def test_failure_shows_at_completion_only():
    record = _record(failure="boom")

    assert record.view(T0 + 2).status == "processing"
    body = record.to_json(T0 + 5, "http://sb", 3600)
    assert (body["status"], body["error"], body["output"]) == ("failed", "boom", None)


@pytest.mark.parametrize(("deadline", "at", "status", "started"), [
    (0.5, 0.6, "aborted", False),
    (0.5, 0.4, "starting", False),
    (2.0, 2.5, "canceled", True),
    (5.0, 4.0, "succeeded", True),
])
def test_deadline(deadline, at, status, started):
    view = _record(deadline=T0 + deadline).view(T0 + at)

    assert view.status == status
    assert (view.started_at is not None) is started


def test_user_cancel_before_start_is_canceled_not_aborted():
    view = _record(canceled_at=T0 + 0.5).view(T0 + 1.5)

    assert view.status == "canceled"
    assert view.completed_at == T0 + 0.5


def test_next_change_lets_waiters_sleep_until_the_transition():
    assert _record().view(T0).next_change == T0 + 1.0
    assert _record().view(T0 + 1.5).next_change == T0 + 3.0
    assert _record(deadline=T0 + 2.0).view(T0 + 1.5).next_change == T0 + 2.0


def test_retention_removes_output_after_completion():
    record = _record()

    kept = record.to_json(T0 + 3 + 59, "http://sb", 60)
    removed = record.to_json(T0 + 3 + 60, "http://sb", 60)

    assert kept["output"] == ["http://sb/files/abc/0.jpg"] and not kept["data_removed"]
    assert removed["output"] is None and removed["data_removed"]


@pytest.mark.parametrize(("max_images", "mode", "configured", "expected"), [
    (1, "disabled", None, 1), (4, "auto", None, 3), (15, "auto", None, 12), (2, "auto", None, 2),
    (4, "auto", 1, 1), (4, "auto", 10, 4),
])
def test_image_count_rule(max_images, mode, configured, expected):
    assert image_count(max_images, mode, configured) == expected
