"""The fault matrix's deployment column: `generate-images/on-request` (prefect.yaml) run by the
session's process worker on a real `prefect server start`.

Two cells are measured here, the two where the deployment's process boundary is the point: a
failed run retried from the UI (the worker runs the same flow run again, in a new process, and
it must re-attach instead of paying again), and two runs of one request at once (two flow-run
processes sharing one `request_id`). The other cells run the same flow in-process in
`tests/test_fault_matrix_flows.py` and are recorded here as such (see `NOT_APPLICABLE` in
`tests/test_fault_matrix.py`), so the column is complete.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from e2e_support import Stack, wait_for_final_state
from test_fault_matrix import ENTRIES, FAULTS, NOT_APPLICABLE, RUNNING  # tests/, on sys.path

DEPLOYMENT = "generate-images/on-request"
MEASURED = ("rerun", "concurrent")


def _mine(sandbox: Any, prompt: str) -> list[dict[str, Any]]:
    return [p for p in sandbox.predictions() if p["input"].get("prompt") == prompt]


def _lost(stack: Stack, s3_client: Any, predictions: list[dict[str, Any]]) -> int:
    """Outputs of these predictions with no object (image or quarantined copy) in the bucket."""
    kept: set[tuple[str, str]] = set()
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
    ids = {p["id"] for p in predictions}
    for obj in (o for page in pages for o in page.get("Contents", [])):
        if "_ledger/" in obj["Key"] or not any(pid in obj["Key"] for pid in ids):
            continue
        meta = s3_client.head_object(Bucket=stack.bucket, Key=obj["Key"]).get("Metadata", {})
        if meta.get("prediction-id") in ids:
            kept.add((meta["prediction-id"], str(meta.get("index"))))
    return sum(1 for p in predictions if p["status"] == "succeeded"
               for i, _ in enumerate(p.get("output") or []) if (p["id"], str(i)) not in kept)


def _start(client: Any, prompt: str, **parameters: Any) -> Any:
    deployment = client.read_deployment_by_name(DEPLOYMENT)
    return client.create_flow_run_from_deployment(deployment.id, parameters={
        "prompt": prompt, "size": "1K", "credentials": "seedream-replicate",
        "destination": "seedream-images", "timeout_seconds": 120, **parameters})


def _record(record_cell: Any, fault: str, stack: Stack, s3_client: Any, prompt: str,
            handling: str) -> tuple[int, int, int]:
    made = _mine(stack.sandbox, prompt)
    measured = (len(made), sum(p["status"] in RUNNING for p in made),
                _lost(stack, s3_client, made))
    record_cell(ENTRIES["deployment"], FAULTS[fault], created=measured[0],
                left_running=measured[1], outputs_lost=measured[2], handling=handling)
    return measured


@pytest.mark.server
def test_a_failed_deployment_run_retried_from_the_ui_reattaches(
    seedream_stack: Stack, prefect_api: Any, s3_client: Any, record_cell: Any,
) -> None:
    from prefect.states import AwaitingRetry

    prompt = f"a lighthouse in a gale {uuid.uuid4().hex[:8]}"
    # The first run fails after paying: its output download is refused once.
    seedream_stack.sandbox.faults.fail_next("files", 1, status=403)
    run = _start(prefect_api, prompt)
    first = wait_for_final_state(prefect_api, run.id, 120, seedream_stack.diagnostics)
    assert first.state.is_failed(), first.state
    prefect_api.set_flow_run_state(run.id, AwaitingRetry(), force=True)  # the UI's "Retry"
    second = wait_for_final_state(prefect_api, run.id, 120, seedream_stack.diagnostics)
    assert second.state.is_completed(), second.state
    assert second.run_count >= 2
    measured = _record(record_cell, "rerun", seedream_stack, s3_client, prompt,
                       "the run failed after paying; the UI's Retry ran the same flow run in a "
                       "new process on the worker, which re-attached through the ledger")
    assert measured == (1, 0, 0)


@pytest.mark.server
def test_two_deployment_runs_of_one_request_id_share_one_prediction(
    seedream_stack: Stack, prefect_api: Any, s3_client: Any, record_cell: Any,
) -> None:
    prompt = f"a harbour at dawn {uuid.uuid4().hex[:8]}"
    request_id = f"order-{uuid.uuid4().hex[:8]}"
    runs = [_start(prefect_api, prompt, request_id=request_id) for _ in range(2)]
    for run in runs:
        final = wait_for_final_state(prefect_api, run.id, 120, seedream_stack.diagnostics)
        assert final.state.is_completed(), final.state
    measured = _record(record_cell, "concurrent", seedream_stack, s3_client, prompt,
                       "two flow-run processes with one request_id: one claimed it in the "
                       "ledger, the other attached to its prediction")
    assert measured == (1, 0, 0)


@pytest.mark.parametrize("fault", [f for f in FAULTS if f not in MEASURED])
def test_cell_covered_in_process(fault: str, record_na: Any) -> None:
    record_na(ENTRIES["deployment"], FAULTS[fault], NOT_APPLICABLE[("deployment", fault)])
