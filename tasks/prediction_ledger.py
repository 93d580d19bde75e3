"""Where a flow run remembers the predictions it paid for, so nothing is paid twice or left running.

Each prediction a flow run creates is written to a Prefect Variable the moment its id is known:
`seedream-{flow_run_id}-{request_key}` -> `{"prediction_id": ..., "status": ...}`. The key names
the request by what was asked for (`request_identity`: an S3 source by its URI and ETag, never by
the presigned URL an attempt sends), so a task retry, a flow retry or a re-run of a crashed flow
run finds it and re-attaches instead of creating again; the flow's cancellation and crash hooks
(which run in another process) read it to cancel what is still running. Outside a flow run
there is nothing to key on, so nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from prefect_seedream.tasks.replicate_client.prediction import PredictionStatus

logger = logging.getLogger("prefect_seedream.ledger")

PREFIX = "seedream-"


def source_identity(source: str, etag: str | None = None) -> str:
    """What an image source is, the same on every attempt: never a presigned URL.

    An `s3://bucket/key` URI is named with its ETag (`s3://bucket/key#<etag>`), so a new
    version of the object is a new source; an http(s) URL is named as given; a `data:` URI by
    the SHA-256 of its text (`sha256:<hex>`).

    Example:
        ```python
        from prefect_seedream.tasks.prediction_ledger import source_identity

        assert source_identity("s3://photos/beach.jpg", '"9b2cf5"') == "s3://photos/beach.jpg#9b2cf5"
        ```
    """
    if source.startswith("s3://"):
        version = (etag or "").strip('"')
        return f"{source}#{version}" if version else source
    if source.startswith("data:"):
        return "sha256:" + hashlib.sha256(source.encode()).hexdigest()
    return source


def request_identity(
    model: str, input: Mapping[str, Any], sources: Sequence[str] | None = None
) -> str:
    """The SHA-256 (64 hex chars) of one logical request: what was asked for, not what was sent.

    The basis is the model and the normalised input, with `image_input` replaced by `sources`
    when given: one name per image, in order (`source_identity` for a flow's sources, content
    digests for a batch's), so a URL presigned afresh by each attempt does not make it a new
    request. Without `sources`, the input itself is the identity.

    Raises:
        ValueError: `sources` does not name exactly the images in `input["image_input"]`.

    Example:
        ```python
        from prefect_seedream.tasks.prediction_ledger import request_identity

        first = {"prompt": "dusk", "image_input": ["https://s3.example/a.jpg?X-Amz-Signature=1"]}
        retry = {"prompt": "dusk", "image_input": ["https://s3.example/a.jpg?X-Amz-Signature=2"]}
        assert (request_identity("m", first, ["s3://photos/a.jpg#9b2c"])
                == request_identity("m", retry, ["s3://photos/a.jpg#9b2c"]))
        ```
    """
    body = dict(input)
    if sources is not None:
        images = body.get("image_input") or []
        if len(sources) != len(images):
            raise ValueError(f"sources names {len(sources)} image(s) but image_input holds "
                             f"{len(images)}; pass one source per image, in order")
        if sources:
            body["image_input"] = list(sources)
    basis = json.dumps({"model": model, "input": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(basis.encode()).hexdigest()


def request_key(
    model: str, input: Mapping[str, Any], idempotency_key: str | None = None,
    sources: Sequence[str] | None = None,
) -> str:
    """The ledger's key for one logical request: its `request_identity`, or the caller's key.

    Raises:
        ValueError: `sources` does not name exactly the images in the input.
    """
    identity = request_identity(model, input, sources)
    if idempotency_key is not None:
        return hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
    return identity[:24]


def entry_name(flow_run_id: str, key: str) -> str:
    return f"{PREFIX}{flow_run_id}-{key}"


def current_flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    value = flow_run.id
    return str(value) if value else None


# Entries this process has seen, so the common path costs one API call per step: prediction id
# -> entry name (for `settle`), and names known to exist (update instead of create).
_lock = threading.Lock()
_entry_of: dict[str, str] = {}
_existing: set[str] = set()


def _note(name: str, prediction_id: str) -> None:
    with _lock:
        _entry_of[prediction_id] = name
        _existing.add(name)


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
    if not isinstance(value, dict):
        return None
    if value.get("prediction_id"):
        _note(name, str(value["prediction_id"]))
    return value


def remember(name: str, prediction_id: str, status: PredictionStatus | str) -> None:
    """Create or update an entry (one API call when this process knows which); failures are
    logged, never raised."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    value = {"prediction_id": prediction_id, "status": PredictionStatus(status).value}
    try:
        with get_client(sync_client=True) as client:
            if name not in _existing:
                try:
                    client.create_variable(
                        VariableCreate(name=name, value=value, tags=["seedream"])
                    )
                except ObjectAlreadyExists:
                    client.update_variable(VariableUpdate(name=name, value=value))
            else:
                client.update_variable(VariableUpdate(name=name, value=value))
        _note(name, prediction_id)
    except Exception as exc:
        logger.warning("could not write prediction ledger entry %s: %s", name, type(exc).__name__)


def fingerprint(model: str, input: dict[str, Any]) -> dict[str, Any]:
    """What identifies a request in the list of predictions, safe to store: image URLs (which may
    be presigned) are replaced by placeholders, since they are compared by count only."""
    safe = dict(input)
    if "image_input" in safe:
        safe["image_input"] = ["(url)"] * len(safe["image_input"])
    return {"model": model, "input": safe}


def remember_pending(name: str, sent_at: datetime, model: str, input: dict[str, Any]) -> None:
    """Before a sync-mode create (whose id arrives only with its answer): note that one is on its
    way, so a crash or cancel in between can still find the prediction by its request."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    value = {"prediction_id": None, "status": "pending", "sent_at": sent_at.isoformat(),
             **fingerprint(model, input)}
    try:
        with get_client(sync_client=True) as client:
            try:
                client.create_variable(VariableCreate(name=name, value=value, tags=["seedream"]))
            except ObjectAlreadyExists:
                client.update_variable(VariableUpdate(name=name, value=value))
        with _lock:
            _existing.add(name)
    except Exception as exc:
        logger.warning("could not write prediction ledger entry %s: %s", name, type(exc).__name__)


def _all(flow_run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every ledger entry of one flow run, as (variable name, value), page by page."""
    from prefect.client.orchestration import get_client

    found: list[tuple[str, dict[str, Any]]] = []
    page, offset = 200, 0
    with get_client(sync_client=True) as client:
        while True:
            response = client.request(
                "POST",
                "/variables/filter",
                json={"variables": {"name": {"like_": f"{PREFIX}{flow_run_id}-%"}},
                      "limit": page, "offset": offset},
            )
            batch = response.json()
            found += [(str(v["name"]), v["value"]) for v in batch
                      if isinstance(v.get("value"), dict)]
            if len(batch) < page:
                return found
            offset += page


def entries(flow_run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The entries of one flow run that name a prediction."""
    return [(name, value) for name, value in _all(flow_run_id) if value.get("prediction_id")]


def pending_requests(flow_run_id: str) -> list[dict[str, Any]]:
    """This flow run's sync-mode creates that never heard their answer."""
    return [value for _, value in _all(flow_run_id) if value.get("status") == "pending"]


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
    known = _entry_of.get(prediction_id)
    if known is not None and known.startswith(f"{PREFIX}{flow_run_id}-"):
        remember(known, prediction_id, status)
        return
    try:
        for name, value in entries(flow_run_id):
            if value.get("prediction_id") == prediction_id:
                remember(name, prediction_id, status)
    except Exception as exc:
        logger.warning("could not update the prediction ledger: %s", type(exc).__name__)
