"""Flow-run hooks that cancel predictions when a run is cancelled or crashes.

Prefect runs `on_cancellation` and `on_crashed` hooks in the runner or worker process, not in the
flow's own process, so they read the prediction ids from the prediction ledger.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect_seedream.tasks import prediction_ledger as ledger
from prefect_seedream.tasks.connections import replicate_api
from prefect_seedream.tasks.replicate_client import protocol


def cancel_open_predictions(flow: Any, flow_run: Any, state: Any) -> None:
    """Cancel every prediction this flow run started that has not finished."""
    from prefect.logging import get_logger

    log = get_logger("prefect_seedream.hooks")
    flow_run_id = str(flow_run.id)
    try:
        open_ids = ledger.open_predictions(flow_run_id)
        pending = ledger.pending_requests(flow_run_id)
    except Exception as exc:
        log.error("Could not read flow run %s's predictions: %s", flow_run_id, type(exc).__name__)
        return
    if not open_ids and not pending:
        return
    credentials = (flow_run.parameters or {}).get("credentials")
    if not isinstance(credentials, str):
        credentials = None  # a block passed by value is not available here; use the defaults
    api = replicate_api(credentials)
    for request in pending:  # sync-mode creates the run never heard back from
        since = datetime.fromisoformat(str(request["sent_at"]))
        try:
            found = api.run(protocol.abandon(str(request["model"]), dict(request["input"]),
                                             since=since, policy=protocol.RetryPolicy()))
        except Exception as exc:
            log.error("Could not look for the run's unanswered create: %s", exc)
            continue
        for prediction_id in found:
            log.warning("Flow run %s ended (%s): cancelled prediction %s, made by a create it "
                        "never heard back from", flow_run_id, state.name, prediction_id)
    for prediction_id in open_ids:
        try:
            result = api.run(protocol.cancel(prediction_id, policy=protocol.RetryPolicy()))
        except Exception as exc:
            log.error("Could not cancel prediction %s: %s", prediction_id, exc)
            continue
        status = result.status if result is not None else None
        log.warning("Flow run %s ended (%s): cancelled prediction %s (now %s)",
                    flow_run_id, state.name, prediction_id, status.value if status else "unknown")
        for name, value in ledger.entries(flow_run_id):
            if value.get("prediction_id") == prediction_id and status is not None:
                ledger.remember(name, prediction_id, status)
