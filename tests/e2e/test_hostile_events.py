"""Events that cannot become a valid run, on a real Prefect server with the process worker of
`prefect.yaml`: each still makes a flow run of `generate-images/on-request`, which ends Failed
with the reason, emits `seedream.images.failed` and creates no prediction. Before, a missing
`prompt` made no run at all, only an `InvalidJinja()` line in the server's log."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from e2e_support import Stack, emit_by_rest, read_events, wait_for, wait_for_flow_runs

pytestmark = pytest.mark.server


def objects_with(s3_client: Any, bucket: str, marker: str) -> int:
    """Objects anywhere in the bucket whose key holds `marker` (this request's id)."""
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(marker in o["Key"] for page in pages for o in page.get("Contents", []))


def failed_run_and_event(stack: Stack, client: Any, payload: dict[str, Any],
                         request_id: str) -> tuple[Any, dict[str, Any]]:
    emit_by_rest(stack.server.api_url, "seedream.generate.requested",
                 {"prefect.resource.id": f"seedream.request.{request_id}"}, payload)
    (run,) = wait_for_flow_runs(client, "generate-images/on-request",
                                {"key_prefix": payload["key_prefix"]}, timeout=90,
                                diagnostics=stack.diagnostics)
    assert run.state.is_failed(), run.state
    (event,) = wait_for(
        lambda: [e for e in read_events(client, "seedream.images.failed")
                 if e["payload"].get("flow_run_id") == str(run.id)],
        30, "the seedream.images.failed event")
    return run, event


def test_an_event_without_a_prompt_is_a_failed_run_with_the_reason(
    seedream_stack: Stack, prefect_api: Any, s3_client: Any, record_hostile: Any,
) -> None:
    request_id = uuid.uuid4().hex[:12]
    creates_before = seedream_stack.sandbox.counters()["creates"]
    run, event = failed_run_and_event(
        seedream_stack, prefect_api,
        {"size": "1K", "aspect_ratio": "16:9", "key_prefix": f"requests/{request_id}"},
        request_id)

    assert run.parameters["prompt"] == ""  # the template's default, not a rendering error
    assert "prompt is empty" in run.state.message, run.state.message
    assert event["payload"]["error_type"] == "InvalidInput"
    assert "prompt is empty: describe the image you want" in event["payload"]["message"]
    assert event["resource"]["prefect.resource.id"] == f"seedream.flow-run.{run.id}"
    created = seedream_stack.sandbox.counters()["creates"] - creates_before
    assert created == 0
    writes = objects_with(s3_client, seedream_stack.bucket, request_id)
    assert writes == 0
    record_hostile("a `seedream.generate.requested` event without `prompt`",
                   "a Failed `generate-images/on-request` run: `InvalidInput: invalid Seedream "
                   "input: prompt: prompt is empty`, and a `seedream.images.failed` event",
                   created=created, outside_writes=writes, internal_requests=0)


def test_an_event_with_a_mistyped_option_is_refused_by_the_run_not_the_server(
    seedream_stack: Stack, prefect_api: Any, s3_client: Any, record_hostile: Any,
) -> None:
    request_id = uuid.uuid4().hex[:12]
    creates_before = seedream_stack.sandbox.counters()["creates"]
    run, event = failed_run_and_event(
        seedream_stack, prefect_api,
        {"prompt": "a lighthouse", "max_images": "lots", "key_prefix": f"requests/{request_id}"},
        request_id)

    assert "max_images" in run.state.message, run.state.message
    assert event["payload"]["error_type"] == "ParameterTypeError"
    assert "max_images: Input should be a valid integer" in event["payload"]["message"]
    created = seedream_stack.sandbox.counters()["creates"] - creates_before
    assert created == 0
    writes = objects_with(s3_client, seedream_stack.bucket, request_id)
    assert writes == 0
    record_hostile('a `seedream.generate.requested` event with `"max_images": "lots"`',
                   "a Failed run (`ParameterTypeError`: `max_images: Input should be a valid "
                   "integer`) and a `seedream.images.failed` event, not a server-side refusal",
                   created=created, outside_writes=writes, internal_requests=0)
