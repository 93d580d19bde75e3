"""The example downstream pipeline composed with Seedream twice more, on a real server: through
the tasks inside a flow, and through `run_deployment` with an idempotency key. Plus the nightly
batch deployment, run on demand with a manifest in S3."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest
from e2e_support import Stack, wait_for_final_state, wait_for_flow_runs
from PIL import Image

from prefect_seedream.flows.pipeline_example import sheet_layout

pytestmark = pytest.mark.server


def sheet_size(s3_client: Any, bucket: str, key: str) -> tuple[int, int]:
    data = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def start(client: Any, deployment: str, parameters: dict[str, Any]) -> Any:
    dep = client.read_deployment_by_name(deployment)
    return client.create_flow_run_from_deployment(dep.id, parameters=parameters)


def test_run_deployment_composition_checks_the_child_and_never_runs_it_twice(
    seedream_stack: Stack, prefect_api: Any, s3_client: Any,
) -> None:
    client = prefect_api
    parent = start(client, "catalogue-via-deployment/example",
                   {"prompt": f"tea bowls, studio light {uuid.uuid4().hex[:8]}",
                    "max_images": 2, "timeout_seconds": 120})
    parent = wait_for_final_state(client, parent.id, 120, seedream_stack.diagnostics)
    assert parent.state.is_completed(), parent.state

    (child,) = wait_for_flow_runs(client, "generate-images/on-request",
                                  {"key_prefix": f"catalogues/{parent.id}"})
    assert child.state.is_completed()
    assert child.idempotency_key == f"{parent.id}:generate"
    assert client.read_task_run(child.parent_task_run_id).flow_run_id == parent.id  # a subflow
    # A retried parent asking again with the same key gets the same child, not a new prediction.
    again = client.create_flow_run_from_deployment(child.deployment_id,
                                                   parameters=child.parameters,
                                                   idempotency_key=child.idempotency_key)
    assert again.id == child.id

    _, width, height = sheet_layout(2, 4, 256, 8)
    key = f"seedream/contact-sheets/catalogue-{parent.id}.jpg"
    assert sheet_size(s3_client, seedream_stack.bucket, key) == (width, height)


def test_tasks_inside_a_flow_make_images_and_their_contact_sheet(
    seedream_stack: Stack, prefect_api: Any, s3_client: Any,
) -> None:
    client = prefect_api
    prompt = f"paper boats on a canal {uuid.uuid4().hex[:8]}"
    run = start(client, "catalogue-with-contact-sheet/example", {"prompt": prompt,
                                                                  "max_images": 3})
    run = wait_for_final_state(client, run.id, 90, seedream_stack.diagnostics)
    assert run.state.is_completed(), run.state
    (prediction,) = [p for p in seedream_stack.sandbox.predictions()
                     if p["input"].get("prompt") == prompt]
    _, width, height = sheet_layout(len(prediction["output"]), 4, 256, 8)
    key = f"seedream/contact-sheets/catalogue-{prediction['id']}.jpg"
    assert sheet_size(s3_client, seedream_stack.bucket, key) == (width, height)


def test_nightly_batch_deployment_generates_its_manifest(
    seedream_stack: Stack, prefect_api: Any, s3_client: Any,
) -> None:
    client, bucket = prefect_api, seedream_stack.bucket
    tag = uuid.uuid4().hex[:8]
    rows = [{"prompt": f"a night market {tag}", "size": "1K"},
            {"prompt": f"a harbour at dawn {tag}", "size": "1K", "aspect_ratio": "16:9"}]
    s3_client.put_object(Bucket=bucket, Key=f"manifests/{tag}.jsonl",
                         Body="\n".join(json.dumps(r) for r in rows).encode())
    run = start(client, "generate-batch/nightly", {"manifest": f"s3://{bucket}/manifests/{tag}.jsonl",
                                                   "key_prefix": f"nightly-{tag}"})
    run = wait_for_final_state(client, run.id, 90, seedream_stack.diagnostics)
    assert run.state.is_completed(), run.state
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
            if f"/nightly-{tag}/batch/" in o["Key"]]  # nested under the destination's prefix
    assert len([k for k in keys if k.endswith(".jpg")]) == 2
