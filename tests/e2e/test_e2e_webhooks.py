"""The webhook path on a real Prefect server: Replicate's signed completion (the sandbox signs
like Replicate) reaches the project's receiver, becomes `replicate.prediction.completed`, and the
`store-prediction/on-webhook` deployment stores the images. Unsigned, tampered, stale and
replayed deliveries produce nothing."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from e2e_support import (
    CaptureServer,
    Stack,
    deployment_runs,
    read_events,
    wait_for,
    wait_for_final_state,
    wait_for_flow_runs,
)

from prefect_seedream.tasks.webhooks import sign_delivery

pytestmark = pytest.mark.server


def sandbox_prediction(stack: Stack, prompt: str) -> dict[str, Any]:
    return wait_for(lambda: [p for p in stack.sandbox.predictions()
                             if p["input"].get("prompt") == prompt],
                    30, f"a prediction for {prompt!r}")[0]


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_signed_webhook_stores_images_with_no_worker_waiting(
    seedream_stack: Stack, prefect_api: Any, s3_client: Any,
) -> None:
    client, sandbox = prefect_api, seedream_stack.sandbox
    prompt = f"a koi pond at night {uuid.uuid4().hex[:8]}"
    sandbox.configure(run_seconds=3.0)  # long enough that waiting would show
    try:
        submit = client.read_deployment_by_name("submit-images/with-webhook")
        run = client.create_flow_run_from_deployment(submit.id, parameters={
            "prompt": prompt, "size": "1K", "webhook_url": seedream_stack.receiver_url})
        submitted = wait_for_final_state(client, run.id, 60, seedream_stack.diagnostics)
    finally:
        sandbox.configure(run_seconds=0.3)
    assert submitted.state.is_completed(), submitted.state
    prediction_id = sandbox_prediction(seedream_stack, prompt)["id"]

    (store,) = wait_for_flow_runs(client, "store-prediction/on-webhook",
                                  {"prediction_id": prediction_id}, timeout=60,
                                  diagnostics=seedream_stack.diagnostics)
    assert store.state.is_completed(), store.state
    prediction = sandbox.prediction(prediction_id)
    completed_at = stamp(prediction["completed_at"])
    # The submitting run was over before the prediction finished: no worker waited on it...
    assert submitted.end_time < completed_at
    assert store.created > completed_at
    # ...and nothing polled it: the store run read it exactly once.
    assert sandbox.counters()["per_prediction"][prediction_id]["gets"] == 1
    key = f"seedream/{prediction_id}/0.jpg"
    assert s3_client.head_object(Bucket=seedream_stack.bucket, Key=key)["ContentLength"] > 0
    stored = wait_for(lambda: read_events(client, "seedream.images.stored",
                                          f"seedream.prediction.{prediction_id}"),
                      30, "seedream.images.stored from the webhook path")
    assert stored[0]["payload"]["uris"] == [f"s3://{seedream_stack.bucket}/{key}"]


def test_unsigned_tampered_stale_and_replayed_deliveries_produce_nothing(
    seedream_stack: Stack, prefect_api: Any, s3_client: Any,
) -> None:
    client, sandbox = prefect_api, seedream_stack.sandbox
    capture = CaptureServer()
    try:
        created = httpx.post(
            f"{sandbox.base_url}/v1/models/bytedance/seedream-4/predictions",
            headers={"Authorization": f"Bearer {sandbox.api_token}"},
            json={"input": {"prompt": f"a glass greenhouse {uuid.uuid4().hex[:8]}",
                            "size": "1K", "aspect_ratio": "1:1"},
                  "webhook": capture.url, "webhook_events_filter": ["completed"]},
            timeout=10)
        created.raise_for_status()
        wait_for(lambda: capture.deliveries, 30, "the sandbox's signed delivery")
    finally:
        capture.close()
    headers, body = capture.deliveries[0]
    prediction_id = created.json()["id"]
    forged_id = "forged" + prediction_id[6:]
    tampered = body.replace(prediction_id.encode(), forged_id.encode())
    signed = {k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    old, stale_id = int(time.time()) - 3600, f"msg_{uuid.uuid4().hex}"
    stale = {"webhook-id": stale_id, "webhook-timestamp": str(old),  # correctly signed, an hour ago
             "webhook-signature": sign_delivery(sandbox.webhook_secret, stale_id, old, tampered)}
    url = seedream_stack.receiver_url

    def post(content: bytes, extra: dict[str, str]) -> httpx.Response:
        return httpx.post(url, content=content,
                          headers={"content-type": "application/json", **extra}, timeout=10)

    assert post(tampered, {}).status_code == 400                                 # unsigned
    assert post(tampered, signed).status_code == 401                             # tampered
    assert post(body, {**signed, "webhook-signature": "v1,AAAA"}).status_code == 401
    assert post(tampered, stale).status_code == 401                              # stale
    assert post(body, signed).json()["result"] == "accepted"                     # the real one
    assert post(body, signed).json()["result"] == "duplicate"                    # replayed

    (store,) = wait_for_flow_runs(client, "store-prediction/on-webhook",
                                  {"prediction_id": prediction_id}, timeout=60,
                                  diagnostics=seedream_stack.diagnostics)
    assert store.state.is_completed(), store.state
    # The receiver answered every bad delivery before emitting anything; check what users see.
    completed = read_events(client, "replicate.prediction.completed")
    ids = [e["payload"]["prediction_id"] for e in completed]
    assert ids.count(prediction_id) == 1 and forged_id not in ids
    assert json.dumps(completed).count("https://") == 0  # no output URL was forwarded
    runs = deployment_runs(client, "store-prediction/on-webhook")
    assert [r.parameters["prediction_id"] for r in runs].count(prediction_id) == 1
    assert forged_id not in {r.parameters["prediction_id"] for r in runs}
    assert s3_client.list_objects_v2(Bucket=seedream_stack.bucket,
                                     Prefix=f"seedream/{forged_id}/")["KeyCount"] == 0
