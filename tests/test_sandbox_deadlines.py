"""`Cancel-After` deadlines: `aborted` before the start, `canceled` while running."""

# The fixtures are imported (F401) and then requested by name (F811) until the
# `pytest11` entry point registers prefect_seedream.sandbox.pytest_plugin for the whole suite.
# ruff: noqa: F811

from __future__ import annotations

import time
from datetime import datetime

import replicate

from prefect_seedream.sandbox.pytest_plugin import (  # noqa: F401
    close_client,
    seedream_client,
    seedream_sandbox,
    seedream_sandbox_server,
)

MODEL = "bytedance/seedream-4"
TEXT = {"prompt": "a red fox in snow", "aspect_ratio": "1:1"}
TERMINAL = {"succeeded", "failed", "canceled", "aborted"}


def _raw(client, prediction_id):
    return client._request("GET", f"/v1/predictions/{prediction_id}").json()


def _until_terminal(client, prediction_id, timeout=10.0):
    end = time.monotonic() + timeout
    body = _raw(client, prediction_id)
    while body["status"] not in TERMINAL:
        assert time.monotonic() < end, f"stuck in {body['status']}"
        time.sleep(0.02)
        body = _raw(client, prediction_id)
    return body


def _create(client, cancel_after, wait=None):
    headers = {"Cancel-After": cancel_after}
    if wait:
        headers["Prefer"] = wait
    response = client._request("POST", f"/v1/models/{MODEL}/predictions", json={"input": TEXT},
                               headers=headers)
    return response.json()


def test_deadline_before_start_aborts(seedream_sandbox, seedream_client):
    seedream_sandbox.configure(queue_seconds=5.0, run_seconds=0.1)

    created = _create(seedream_client, "200ms")
    final = _until_terminal(seedream_client, created["id"])

    assert created["status"] == "starting"
    assert final["status"] == "aborted"
    assert final["started_at"] is None and final["output"] is None
    assert "predict_time" not in final["metrics"]
    deadline = datetime.fromisoformat(final["deadline"].replace("Z", "+00:00"))
    created_at = datetime.fromisoformat(final["created_at"].replace("Z", "+00:00"))
    assert abs((deadline - created_at).total_seconds() - 0.2) < 0.01


def test_deadline_while_running_cancels(seedream_sandbox, seedream_client):
    seedream_sandbox.configure(queue_seconds=0.0, run_seconds=10.0)

    final = _create(seedream_client, "300ms", wait="wait=5")

    assert final["status"] == "canceled"
    assert final["started_at"] is not None
    assert final["completed_at"] == final["deadline"]
    assert final["output"] is None
    assert "predict_time" in final["metrics"]


def test_deadline_after_completion_changes_nothing(seedream_sandbox, seedream_client):
    final = _create(seedream_client, "1h30m", wait="wait")

    assert final["status"] == "succeeded"
    assert final["deadline"] is not None
    assert len(final["output"]) == 1


def test_cancel_after_header_through_client_headers(seedream_sandbox):
    seedream_sandbox.configure(queue_seconds=0.0, run_seconds=10.0)
    client = replicate.Client(api_token=seedream_sandbox.api_token,
                              base_url=seedream_sandbox.base_url,
                              headers={"Cancel-After": "1s"})
    try:
        prediction = client.models.predictions.create(model=MODEL, input=TEXT, wait=3)
    finally:
        close_client(client)

    assert prediction.status == "canceled"
    assert seedream_sandbox.prediction(prediction.id)["deadline"] is not None
