"""Events in, events out, on a real Prefect server with a process worker: a requested generation
lands in S3, announces itself, and the downstream contact-sheet deployment runs from that."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest
from e2e_support import (
    PREFECT,
    Stack,
    deployment_runs,
    emit_by_rest,
    event_summary,
    read_events,
    run_command,
    wait_for,
    wait_for_flow_runs,
)
from PIL import Image

from prefect_seedream.flows.pipeline_example import sheet_layout

pytestmark = pytest.mark.server


def s3_keys(s3_client: Any, bucket: str, prefix: str) -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def image_size(s3_client: Any, bucket: str, key: str) -> tuple[int, int]:
    data = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_prefect_yaml_deploys_triggers_schedule_and_rate_limit(
    seedream_stack: Stack, prefect_api: Any,
) -> None:
    client = prefect_api
    nightly = client.read_deployment_by_name("generate-batch/nightly")
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * *", "Europe/Berlin")
    on_request = client.read_deployment_by_name("generate-images/on-request")
    # Blocks by name, never a token; the deployed runs require the shared create budget.
    assert on_request.parameters == {"credentials": "seedream-replicate",
                                     "destination": "seedream-images"}
    assert on_request.job_variables["env"]["SEEDREAM_RATE_LIMIT_NAME"] == "replicate-create"
    assert seedream_stack.sandbox.api_token not in str(on_request.model_dump())
    automations = {a.name: a for a in client.read_automations()}
    expected = {"generate on request": "seedream.generate.requested",
                "store on webhook": "replicate.prediction.completed",
                "contact sheet on images stored": "seedream.images.stored"}
    assert {name: set(automations[name].trigger.expect) for name in expected} == {
        name: {event} for name, event in expected.items()}
    # bootstrap made it 1200/min; the deploy step of prefect.yaml set Replicate's 600/min.
    limit = client.read_global_concurrency_limit_by_name("replicate-create")
    assert (limit.limit, limit.slot_decay_per_second, limit.active) == (100, 10.0, True)


def test_requested_event_stores_images_and_triggers_the_contact_sheet(
    seedream_stack: Stack, prefect_api: Any, s3_client: Any,
) -> None:
    client, bucket = prefect_api, seedream_stack.bucket
    request_id = uuid.uuid4().hex[:12]
    key_prefix = f"requests/{request_id}"
    emit_by_rest(seedream_stack.server.api_url, "seedream.generate.requested",
                 {"prefect.resource.id": f"seedream.request.{request_id}"},
                 {"prompt": f"a paper lantern festival {request_id}", "size": "1K",
                  "aspect_ratio": "16:9", "max_images": 2, "key_prefix": key_prefix})

    (run,) = wait_for_flow_runs(client, "generate-images/on-request", {"key_prefix": key_prefix},
                                timeout=90, diagnostics=seedream_stack.diagnostics)
    assert run.state.is_completed(), run.state
    assert run.parameters["max_images"] == 2 and run.parameters["size"] == "1K"  # typed

    keys = s3_keys(s3_client, bucket, f"seedream/{key_prefix}/")  # nested under the prefix
    assert len(keys) == 2 and all(k.endswith((".jpg", ".png")) for k in keys)
    prediction_id = keys[0].split("/")[-2]
    assert [image_size(s3_client, bucket, k) for k in keys] == [(1280, 720)] * 2

    # The stored event: the image set, each object and the prediction as related resources.
    stored = wait_for(lambda: read_events(client, "seedream.images.stored",
                                          f"seedream.prediction.{prediction_id}"),
                      30, lambda: "the seedream.images.stored event\n" + event_summary(client)
                      + seedream_stack.diagnostics())
    (event,) = stored
    related = {(r["prefect.resource.id"], r["prefect.resource.role"]) for r in event["related"]}
    uris = {f"s3://{bucket}/{k}" for k in keys}
    assert {(uri, "image") for uri in uris} <= related
    assert (f"replicate.prediction.{prediction_id}", "prediction") in related
    assert (f"prefect.flow-run.{run.id}", "flow-run") in related
    assert set(event["payload"]["uris"]) == uris
    assert "?" not in str(event)  # no presigned or output URL travels in an event

    # The create took a slot of the global rate limit (strict: it would have failed otherwise).
    acquired = read_events(client, "prefect.concurrency-limit.acquired")
    assert any(e["resource"].get("prefect.resource.name") == "replicate-create" for e in acquired)

    # Downstream: the contact-sheet deployment ran from the stored event.
    (sheet_run,) = wait_for_flow_runs(client, "make-contact-sheet/on-images-stored",
                                      {"name": prediction_id}, timeout=60,
                                      diagnostics=seedream_stack.diagnostics)
    assert sheet_run.state.is_completed(), sheet_run.state
    assert sorted(sheet_run.parameters["images"]) == sorted(uris)
    _, width, height = sheet_layout(2, 4, 256, 8)
    assert image_size(s3_client, bucket, f"seedream/contact-sheets/{prediction_id}.jpg") == (
        width, height)


def test_a_failed_request_emits_images_failed_and_creates_nothing(
    seedream_stack: Stack, prefect_api: Any,
) -> None:
    client = prefect_api
    request_id = uuid.uuid4().hex[:12]
    creates_before = seedream_stack.sandbox.counters()["creates"]
    # Emitted the way the README shows for shells: the Prefect CLI.
    run_command([PREFECT, "event", "emit", "seedream.generate.requested",
                 "--resource-id", f"seedream.request.{request_id}", "--payload", json.dumps(
                     {"prompt": "a lighthouse", "aspect_ratio": "5:4",  # not a Seedream ratio
                      "key_prefix": f"requests/{request_id}"})],
                seedream_stack.server.env())
    (run,) = wait_for_flow_runs(client, "generate-images/on-request",
                                {"key_prefix": f"requests/{request_id}"}, timeout=60,
                                diagnostics=seedream_stack.diagnostics)
    assert run.state.is_failed()
    failed = wait_for(
        lambda: [e for e in read_events(client, "seedream.images.failed")
                 if e["payload"].get("flow_run_id") == str(run.id)],
        30, "the seedream.images.failed event")
    assert failed[0]["payload"]["error_type"] == "InvalidInput"
    assert failed[0]["resource"]["prefect.resource.id"] == f"seedream.flow-run.{run.id}"
    assert seedream_stack.sandbox.counters()["creates"] == creates_before
    assert all(r.parameters.get("name") != str(run.id)
               for r in deployment_runs(client, "make-contact-sheet/on-images-stored"))


def test_the_readme_curl_event_starts_a_generation(seedream_stack: Stack, prefect_api: Any,
                                                   s3_client: Any) -> None:
    """The README's `curl` body, run as written, is an event Prefect accepts and acts on."""
    import os
    import re
    import subprocess
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (command,) = [b for b in re.findall(r"^```bash\n(.*?)^```", readme, re.S | re.M)
                  if "/events" in b]
    env = {**os.environ, "PREFECT_API_URL": seedream_stack.server.api_url}
    result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

    (run,) = wait_for_flow_runs(prefect_api, "generate-images/on-request",
                                {"prompt": "a lighthouse seen from the sea"}, timeout=90,
                                diagnostics=seedream_stack.diagnostics)
    assert run.state.is_completed(), run.state
    assert run.parameters["size"] == "1K" and run.parameters["aspect_ratio"] == "16:9"
