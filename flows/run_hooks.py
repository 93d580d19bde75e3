"""Flow-run hooks that cancel predictions when a run is cancelled or crashes.

Prefect runs `on_cancellation` and `on_crashed` hooks in the runner or worker process, not in the
flow's own process, so they read what the run owns from the prediction ledger in S3: the
destination comes from the run's parameters (a saved block's name) or the settings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect_seedream.tasks import prediction_ledger as ledger
from prefect_seedream.tasks.connections import replicate_api, resolve_destination
from prefect_seedream.tasks.replicate_client import protocol
from prefect_seedream.tasks.replicate_client.request_builders import RequestMatch
from prefect_seedream.tasks.s3_storage.keys import key_prefix_under


def run_ledger(flow_run: Any, key_prefix: str | None = None) -> ledger.Ledger:
    """The ledger a run wrote to, rebuilt from its parameters (a block passed by value is not
    available here: the settings' destination stands in), under `key_prefix` if the run kept
    it there (a batch keeps its ledger under its own `key_prefix`)."""
    named = (flow_run.parameters or {}).get("destination")
    target = resolve_destination(named if isinstance(named, str) else None)
    return ledger.Ledger(target, key_prefix_under(target.prefix, key_prefix))


def cancel_run_predictions(at: ledger.Ledger, flow_run: Any, state: Any) -> list[str]:
    """Cancel what the run owns and has not seen finish: created predictions by id, and creates
    it never heard back from by their request (`RequestMatch`). Returns the ids cancelled."""
    credentials = (flow_run.parameters or {}).get("credentials")
    return cancel_open_records(at, str(flow_run.id), state.name,
                               credentials if isinstance(credentials, str) else None)


def cancel_open_records(at: ledger.Ledger, run_id: str, why: str, credentials: Any,
                        *, unanswered_only: bool = False) -> list[str]:
    """Cancel the predictions of run `run_id`'s open ledger records (only those whose create
    has not answered yet, with `unanswered_only`): by id, else found by their request."""
    from prefect.logging import get_logger

    log = get_logger("prefect_seedream.hooks")
    try:
        records = [r for r in at.records_of(run_id) if ledger.is_open(r)
                   and not (unanswered_only and r.get("prediction_id"))]
    except Exception as exc:
        log.error("Could not read flow run %s's predictions: %s", run_id, type(exc).__name__)
        return []
    if not records:
        return []
    api = replicate_api(credentials)
    cancelled: list[str] = []
    for record in records:
        try:
            if record.get("prediction_id"):
                prediction_id = str(record["prediction_id"])
                result = api.run(protocol.cancel(prediction_id, policy=protocol.RetryPolicy()))
                status = result.status.value if result is not None else "unknown"
                log.warning("Flow run %s ended (%s): cancelled prediction %s (now %s)",
                            run_id, why, prediction_id, status)
                cancelled.append(prediction_id)
                continue
            found = api.run(protocol.abandon(
                RequestMatch.from_json(record["match"]),
                since=datetime.fromisoformat(str(record["sent_at"])),
                policy=protocol.RetryPolicy()))
        except Exception as exc:
            log.error("Could not cancel request %s's prediction: %s", record.get("key"), exc)
            continue
        for prediction_id in found:
            log.warning("Flow run %s ended (%s): cancelled prediction %s, made by a create it "
                        "never heard back from", run_id, why, prediction_id)
        cancelled += found
    return cancelled


def cancel_open_predictions(flow: Any, flow_run: Any, state: Any) -> None:
    """Cancel every prediction this flow run started that has not finished."""
    try:
        at = run_ledger(flow_run)
    except Exception as exc:
        from prefect.logging import get_logger

        get_logger("prefect_seedream.hooks").error(
            "Could not find flow run %s's prediction ledger: %s", flow_run.id, exc)
        return
    cancel_run_predictions(at, flow_run, state)
