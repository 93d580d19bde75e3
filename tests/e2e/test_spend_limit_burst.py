"""A burst of events against an event-triggered deployment with a spend limit, on a real Prefect
server with the process worker of `prefect.yaml`: the runs start together, each reserves in the
one S3 record before it creates, and no more predictions are made than the limit allows."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest
from e2e_support import Stack, emit_by_rest, wait_for, wait_for_flow_runs

from prefect_seedream.tasks.spend_limit import period_names

pytestmark = pytest.mark.server

BURST, LIMIT = 4, 1  # a small burst: each event is a flow-run process on a 2-core CI


def limited_copy_of_on_request(client: Any, stack: Stack, tag: str) -> tuple[str, Any]:
    """`generate-images/on-request` deployed again with a one-image daily limit kept under its
    own prefix, and an automation that runs it for each `seedream.burst.requested` event."""
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    source = client.read_deployment_by_name("generate-images/on-request")
    env = {**source.job_variables.get("env", {}),
           "SEEDREAM_SPEND_LIMIT_IMAGES_PER_DAY": str(LIMIT),
           "SEEDREAM_BUCKET": stack.bucket, "SEEDREAM_PREFIX": f"burst-{tag}",
           "SEEDREAM_S3_ENDPOINT_URL": stack.s3_endpoint}
    name = f"limited-{tag}"
    deployment_id = client.create_deployment(
        flow_id=source.flow_id, name=name, entrypoint=source.entrypoint, path=source.path,
        work_pool_name=source.work_pool_name, parameters=source.parameters,
        job_variables={**source.job_variables, "env": env}, pull_steps=source.pull_steps,
        parameter_openapi_schema=source.parameter_openapi_schema.model_dump()
        if hasattr(source.parameter_openapi_schema, "model_dump")
        else source.parameter_openapi_schema,
        enforce_parameter_schema=False)
    client.create_automation(AutomationCore(
        name=f"burst {tag}",
        trigger=EventTrigger(expect={"seedream.burst.requested"},
                             match={"prefect.resource.id": f"seedream.burst.{tag}.*"},
                             posture=Posture.Reactive, threshold=1),
        actions=[RunDeployment(source="selected", deployment_id=deployment_id, parameters={
            "prompt": "{{ event.payload.prompt }}", "size": "1K",
            "key_prefix": "{{ event.payload.key_prefix }}"})]))
    return f"generate-images/{name}", deployment_id


def test_a_burst_of_events_never_spends_past_the_limit(
    seedream_stack: Stack, prefect_api: Any, s3_client: Any, record_spend: Any,
) -> None:
    client, tag = prefect_api, uuid.uuid4().hex[:8]
    deployment, _ = limited_copy_of_on_request(client, seedream_stack, tag)
    wait_for(lambda: [a for a in client.read_automations() if a.name == f"burst {tag}"], 30,
             "the burst automation")
    for n in range(BURST):
        emit_by_rest(seedream_stack.server.api_url, "seedream.burst.requested",
                     {"prefect.resource.id": f"seedream.burst.{tag}.{n}"},
                     {"prompt": f"burst {tag} kite {n}", "key_prefix": f"burst/{tag}/{n}"})

    runs = wait_for_flow_runs(client, deployment, {}, timeout=180, count=BURST,
                              diagnostics=seedream_stack.diagnostics)
    created = [p for p in seedream_stack.sandbox.predictions()
               if f"burst {tag} " in str(p["input"].get("prompt"))]
    assert len(created) == LIMIT  # the sandbox's own count: never more than the limit allows
    states = sorted(run.state.name for run in runs)
    assert states == ["Completed"] * LIMIT + ["Failed"] * (BURST - LIMIT), states
    for run in runs:
        if run.state.is_failed():
            message = run.state.message
            assert f"SEEDREAM_SPEND_LIMIT_IMAGES_PER_DAY={LIMIT}" in message, message
    day = period_names(datetime.now(timezone.utc))["day"]
    record = json.loads(s3_client.get_object(
        Bucket=seedream_stack.bucket,
        Key=f"burst-{tag}/_ledger/spend/{day}.json")["Body"].read())
    assert (record["settled_images"], record["entries"]) == (LIMIT, {})
    assert record["by"] == {f"deployment limited-{tag}": {"images": LIMIT, "usd": 0.03 * LIMIT}}
    record_spend(f"a burst of {BURST} events to an event-triggered deployment (process worker, "
                 "one flow run per event, all at once)", f"{LIMIT} image(s) a day",
                 limit_value=LIMIT, requests=BURST, allowed=LIMIT, created=len(created),
                 spent=record["settled_images"])
