"""The sandbox's prediction lifecycle, driven by the real replicate client over HTTP."""

# The fixtures are imported (F401) and then requested by name (F811) until the
# `pytest11` entry point registers prefect_seedream.sandbox.pytest_plugin for the whole suite.
# ruff: noqa: F811

from __future__ import annotations

import io
import time
from datetime import datetime, timezone

import httpx
import pytest
import replicate
from PIL import Image

from prefect_seedream.sandbox.model_info import VERSION_ID
from prefect_seedream.sandbox.pytest_plugin import (  # noqa: F401
    close_client,
    seedream_client,
    seedream_sandbox,
    seedream_sandbox_server,
)

MODEL = "bytedance/seedream-4"
TEXT = {"prompt": "a red fox in snow", "aspect_ratio": "4:3"}


def _wait_terminal(client: replicate.Client, prediction_id: str, timeout: float = 10.0) -> dict:
    end = time.monotonic() + timeout
    while True:
        body = client._request("GET", f"/v1/predictions/{prediction_id}").json()
        if body["status"] in ("succeeded", "failed", "canceled", "aborted"):
            return body
        if time.monotonic() > end:
            raise AssertionError(f"prediction stuck in {body['status']}")
        time.sleep(0.02)


def test_models_endpoint_with_wait_returns_finished_prediction(seedream_client):
    prediction = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)

    assert prediction.status == "succeeded"
    assert prediction.model == MODEL
    assert prediction.version == VERSION_ID
    assert prediction.input == TEXT
    assert len(prediction.output) == 1
    assert "Generating 2304x1728 image with aspect ratio 4:3 at 2K resolution" in prediction.logs
    assert prediction.metrics["image_count"] == 1
    assert prediction.metrics["predict_time"] > 0
    assert prediction.completed_at >= prediction.started_at >= prediction.created_at
    image = Image.open(io.BytesIO(httpx.get(prediction.output[0]).content))
    assert (image.format, image.size) == ("JPEG", (2304, 1728))


def test_predictions_endpoint_without_wait_runs_async(seedream_sandbox, seedream_client):
    seedream_sandbox.configure(run_seconds=0.3)
    prediction = seedream_client.predictions.create(version=MODEL, input=TEXT)

    assert prediction.status in ("starting", "processing")
    assert prediction.output is None
    assert prediction.urls["get"] == f"{seedream_sandbox.base_url}/v1/predictions/{prediction.id}"
    prediction.wait()
    assert prediction.status == "succeeded"
    assert prediction.output[0].startswith(f"{seedream_sandbox.base_url}/files/{prediction.id}/")


def test_full_prediction_object_has_every_field(seedream_sandbox, seedream_client):
    created = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)
    body = seedream_client._request("GET", f"/v1/predictions/{created.id}").json()

    assert set(body) >= {
        "id", "model", "version", "input", "output", "logs", "error", "status", "data_removed",
        "created_at", "started_at", "completed_at", "deadline", "urls", "metrics",
    }
    assert body["data_removed"] is False and body["deadline"] is None and body["error"] is None
    assert set(body["urls"]) == {"get", "cancel", "web"}
    assert {"predict_time", "total_time", "image_count"} <= set(body["metrics"])
    assert body == seedream_sandbox.prediction(created.id)


@pytest.mark.parametrize(
    "version", [MODEL, f"{MODEL}:{VERSION_ID}", VERSION_ID, f"{MODEL}:{'a' * 64}"]
)
def test_version_forms_are_accepted(seedream_client, version):
    prediction = seedream_client.predictions.create(version=version, input=TEXT)

    assert prediction.model == MODEL
    expected = version.split(":")[-1] if len(version) > len(MODEL) else VERSION_ID
    assert prediction.version == expected


def test_prefer_wait_window_returns_incomplete_prediction_with_location(
    seedream_sandbox, seedream_client
):
    seedream_sandbox.configure(run_seconds=5.0)
    response = seedream_client._request(
        "POST", f"/v1/models/{MODEL}/predictions", json={"input": TEXT},
        headers={"Prefer": "wait=1"},
    )

    body = response.json()
    assert response.status_code == 201
    assert body["status"] == "processing"
    assert response.headers["Location"] == body["urls"]["get"]
    seedream_client.predictions.cancel(body["id"])


def test_get_reflects_server_state(seedream_sandbox, seedream_client):
    seedream_sandbox.configure(queue_seconds=0.5, run_seconds=0.1)
    prediction = seedream_client.predictions.create(version=MODEL, input=TEXT)

    assert prediction.status == "starting"
    final = _wait_terminal(seedream_client, prediction.id)
    assert final["status"] == "succeeded"
    assert seedream_sandbox.counters()["per_prediction"][prediction.id]["gets"] >= 1


def test_cancel_running_prediction_and_cancel_is_idempotent(seedream_sandbox, seedream_client):
    seedream_sandbox.configure(run_seconds=30.0)
    prediction = seedream_client.predictions.create(version=MODEL, input=TEXT)

    canceled = seedream_client.predictions.cancel(prediction.id)
    again = seedream_client.predictions.cancel(prediction.id)

    assert canceled.status == again.status == "canceled"
    assert canceled.completed_at == again.completed_at
    assert canceled.output is None
    assert seedream_sandbox.counters()["per_prediction"][prediction.id]["cancels"] == 2


def test_cancel_of_finished_prediction_leaves_it_succeeded(seedream_client):
    done = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)

    after = seedream_client.predictions.cancel(done.id)

    assert after.status == "succeeded"
    assert after.output == done.output


def test_list_is_newest_first_and_paginates_with_full_urls(seedream_sandbox, seedream_client):
    seedream_sandbox.configure(rate_limits=False, run_seconds=0.0)
    ids = [seedream_client.predictions.create(version=MODEL, input=TEXT).id for _ in range(105)]

    first = seedream_client.predictions.list()
    second = seedream_client.predictions.list(first.next)

    assert [p.id for p in first.results] == ids[::-1][:100]
    assert [p.id for p in second.results] == ids[::-1][100:]
    assert first.next.startswith(f"{seedream_sandbox.base_url}/v1/predictions?cursor=")
    assert first.previous is None and second.next is None
    back = seedream_client.predictions.list(second.previous)
    assert [p.id for p in back.results] == [p.id for p in first.results]
    raw = seedream_client._request("GET", "/v1/predictions").json()
    assert {item["source"] for item in raw["results"]} == {"api"}
    assert len(list(replicate.paginate(seedream_client.predictions.list))) == 2


def test_list_filters_by_created_after_and_before(seedream_client):
    old = seedream_client.predictions.create(version=MODEL, input=TEXT)
    time.sleep(0.01)
    cut = datetime.now(timezone.utc).isoformat()
    time.sleep(0.01)
    new = seedream_client.predictions.create(version=MODEL, input=TEXT)

    after = seedream_client._request("GET", "/v1/predictions", params={"created_after": cut})
    before = seedream_client._request("GET", "/v1/predictions", params={"created_before": cut})

    assert [p["id"] for p in after.json()["results"]] == [new.id]
    assert [p["id"] for p in before.json()["results"]] == [old.id]


def test_model_object_carries_input_schema(seedream_client):
    model = seedream_client.models.get(MODEL)

    schema = model.latest_version.openapi_schema["components"]["schemas"]["Input"]
    assert model.owner == "bytedance" and model.name == "seedream-4"
    assert model.latest_version.id == VERSION_ID
    assert schema["required"] == ["prompt"]
    components = model.latest_version.openapi_schema["components"]["schemas"]
    assert schema["properties"]["size"]["allOf"] == [{"$ref": "#/components/schemas/size"}]
    assert components["size"]["enum"] == ["1K", "2K", "4K", "custom"]
    assert schema["properties"]["max_images"]["maximum"] == 15


def test_account_and_webhook_secret(seedream_sandbox, seedream_client):
    account = seedream_client.accounts.current()
    secret = seedream_client.webhooks.default.secret()

    assert account.username == "sandbox"
    assert secret.key == seedream_sandbox.webhook_secret
    assert secret.key.startswith("whsec_")


@pytest.mark.parametrize(("max_images", "configured", "expected"),
                         [(4, None, 3), (1, None, 1), (8, None, 6), (4, 2, 2), (3, 9, 3)])
def test_auto_sequential_generation_returns_fewer_images(
    seedream_sandbox, seedream_client, max_images, configured, expected
):
    seedream_sandbox.configure(auto_image_count=configured)
    request = {**TEXT, "sequential_image_generation": "auto", "max_images": max_images}

    prediction = seedream_client.models.predictions.create(model=MODEL, input=request, wait=True)

    assert len(prediction.output) == expected
    assert prediction.metrics["image_count"] == expected


def test_holds_200_predictions_in_flight(seedream_sandbox, seedream_client):
    seedream_sandbox.configure(rate_limits=False, run_seconds=10.0)
    ids = [seedream_client.predictions.create(version=MODEL, input=TEXT).id for _ in range(200)]

    statuses = {p["status"] for p in seedream_sandbox.predictions()}
    bodies = [seedream_client.predictions.get(i) for i in ids[:20]]

    assert len(seedream_sandbox.predictions()) == 200
    assert statuses <= {"starting", "processing"}
    assert all(b.status == "processing" for b in bodies)
    seedream_sandbox.configure(run_seconds=0.0)
    for prediction_id in ids:
        seedream_client.predictions.cancel(prediction_id)
    assert {p["status"] for p in seedream_sandbox.predictions()} == {"canceled"}
