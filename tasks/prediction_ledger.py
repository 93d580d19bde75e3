"""Where a flow run remembers the predictions it paid for, so nothing is paid twice or left running.

Each prediction a flow run creates is written to a Prefect Variable the moment its id is known:
`seedream-{flow_run_id}-{request_key}` -> `{"prediction_id": ..., "status": ...}`. A task retry, a
flow retry or a re-run of a crashed flow run finds it and re-attaches instead of creating again;
the flow's cancellation and crash hooks (which run in another process) read it to cancel what is
still running. Outside a flow run there is nothing to key on, so nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from tasks.prediction_model import PredictionStatus

logger = logging.getLogger("prefect_seedream.ledger")

PREFIX = "seedream-"


def request_key(model: str, input: dict[str, Any], idempotency_key: str | None = None) -> str:
    """A stable hash of one logical request (model + normalised input, or the caller's key)."""
    basis = idempotency_key if idempotency_key is not None else json.dumps(
        {"model": model, "input": input}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(basis.encode()).hexdigest()[:24]


def entry_name(flow_run_id: str, key: str) -> str:
    return f"{PREFIX}{flow_run_id}-{key}"


def current_flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    value = flow_run.id
    return str(value) if value else None


def recall(name: str) -> dict[str, Any] | None:
    """The entry saved under `name`, or None (also when the API cannot be reached)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            variable = client.read_variable_by_name(name)
    except Exception as exc:  # the ledger must never be why a prediction fails
        logger.warning("could not read prediction ledger entry %s: %s", name, type(exc).__name__)
        return None
    value = variable.value if variable is not None else None
    return value if isinstance(value, dict) else None


def remember(name: str, prediction_id: str, status: PredictionStatus | str) -> None:
    """Create or update an entry; failures are logged, never raised."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    value = {"prediction_id": prediction_id, "status": PredictionStatus(status).value}
    try:
        with get_client(sync_client=True) as client:
            if client.read_variable_by_name(name) is None:
                client.create_variable(VariableCreate(name=name, value=value, tags=["seedream"]))
            else:
                client.update_variable(VariableUpdate(name=name, value=value))
    except Exception as exc:
        logger.warning("could not write prediction ledger entry %s: %s", name, type(exc).__name__)


def entries(flow_run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every ledger entry of one flow run, as (variable name, value)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        response = client.request(
            "POST",
            "/variables/filter",
            json={"variables": {"name": {"like_": f"{PREFIX}{flow_run_id}-%"}}, "limit": 200},
        )
    found = []
    for variable in response.json():
        value = variable.get("value")
        if isinstance(value, dict) and value.get("prediction_id"):
            found.append((str(variable["name"]), value))
    return found


def _is_terminal(status: object) -> bool:
    try:
        return PredictionStatus(status).is_terminal
    except ValueError:
        return False


def open_predictions(flow_run_id: str) -> list[str]:
    """Ids of this flow run's predictions that were not seen reaching a terminal state."""
    return [
        str(value["prediction_id"])
        for _, value in entries(flow_run_id)
        if not _is_terminal(value.get("status"))
    ]


def settle(prediction_id: str, status: PredictionStatus) -> None:
    """Record a prediction's terminal state in the current flow run's ledger, if any."""
    flow_run_id = current_flow_run_id()
    if not flow_run_id:
        return
    try:
        for name, value in entries(flow_run_id):
            if value.get("prediction_id") == prediction_id:
                remember(name, prediction_id, status)
    except Exception as exc:
        logger.warning("could not update the prediction ledger: %s", type(exc).__name__)
