"""The Prefect events prefect-seedream listens to and emits, so deployments can chain on them.

- `seedream.generate.requested` (resource `seedream.request.<id>`): any system asks for images
  (`request_generation`, `prefect event emit`, a webhook); `generate-images/on-request` runs.
  One that cannot become a valid request (no prompt, a bad option) still makes that run, which
  fails with the reason and emits `seedream.images.failed` (deployments/on_request.py).
- `replicate.prediction.completed` (`replicate.prediction.<id>`): the webhook receiver
  (`prefect_seedream.deployments.webhook_receiver`) saw a signed completion;
  `store-prediction/on-webhook` runs.
- `seedream.images.stored` (`seedream.prediction.<id>`): a flow stored an image set.
- `seedream.images.failed` (`seedream.prediction.<id>`, or `seedream.flow-run.<id>` when no
  prediction was created): a flow failed or crashed; the payload names the error type.

`seedream.images.stored` relates every object (`s3://bucket/key`, role `image`) and the
prediction (`replicate.prediction.<id>`, role `prediction`); its payload repeats the URIs and
image details. Inside a flow run Prefect also relates the flow run, flow, deployment and tags.
No event carries a token, an output URL or a presigned URL.

`emit_event` is fire-and-forget: an event that cannot be sent is logged, never raised, so an
event never fails the run that stored the images.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.events import Event

    from prefect_seedream.tasks.replicate_client.prediction import Prediction
    from prefect_seedream.tasks.storage import StoredImage

GENERATE_REQUESTED = "seedream.generate.requested"
PREDICTION_COMPLETED = "replicate.prediction.completed"
IMAGES_STORED = "seedream.images.stored"
IMAGES_FAILED = "seedream.images.failed"

_log = logging.getLogger("prefect_seedream.events")
_URL_QUERY = re.compile(r"(https?://[^\s?#'\"]+)\?[^\s'\"]*")
_TOKEN = re.compile(r"\br8_[A-Za-z0-9]+")
_MESSAGE_LIMIT = 500


def prediction_resource_id(prediction_id: str) -> str:
    """`seedream.prediction.<id>`: the primary resource of stored and failed events."""
    return f"seedream.prediction.{prediction_id}"


def replicate_resource_id(prediction_id: str) -> str:
    """`replicate.prediction.<id>`: the Replicate prediction, as the receiver names it."""
    return f"replicate.prediction.{prediction_id}"


def redact(text: str) -> str:
    """`text` without URL query strings (presigned signatures) or Replicate tokens, shortened.

    Example:
        ```python
        from prefect_seedream.flows.events import redact

        assert redact("GET https://b.s3/x.jpg?X-Amz-Signature=abc failed") == (
            "GET https://b.s3/x.jpg?… failed"
        )
        ```
    """
    clean = _TOKEN.sub("r8_…", _URL_QUERY.sub(r"\1?…", text))
    return clean if len(clean) <= _MESSAGE_LIMIT else clean[:_MESSAGE_LIMIT - 1] + "…"


def images_stored_event(prediction: Prediction, stored: Sequence[StoredImage]) -> dict[str, Any]:
    """The `seedream.images.stored` event for one stored image set, as `emit_event` kwargs.

    Pure: build it here, send it with `emit_event(**event)`.
    """
    buckets = sorted({image.bucket for image in stored})
    resource = {
        "prefect.resource.id": prediction_resource_id(prediction.id),
        "prefect.resource.name": prediction.id,
        "seedream.image-count": str(len(stored)),
        "seedream.bucket": ",".join(buckets),
    }
    related: list[dict[str, str]] = [
        {"prefect.resource.id": image.uri, "prefect.resource.role": "image",
         "prefect.resource.name": image.key}
        for image in stored
    ]
    related.append({
        "prefect.resource.id": replicate_resource_id(prediction.id),
        "prefect.resource.role": "prediction",
        "replicate.model": prediction.model or "",
    })
    payload = {
        "prediction_id": prediction.id,
        "model": prediction.model,
        "prompt": prediction.prompt,
        "uris": [image.uri for image in stored],
        "images": [image.model_dump(mode="json", exclude={"preview"}) for image in stored],
    }
    return {"event": IMAGES_STORED, "resource": resource, "related": related, "payload": payload}


def images_failed_event(
    *, error_type: str, message: str, prediction_ids: Sequence[str], flow_run_id: str | None,
    flow_name: str | None, state_name: str | None, retryable: bool | None = None,
) -> dict[str, Any]:
    """The `seedream.images.failed` event, as `emit_event` kwargs (pure).

    The message is redacted: no URL query strings, no tokens.
    """
    first = prediction_ids[0] if prediction_ids else None
    if first:
        resource_id = prediction_resource_id(first)
    else:
        resource_id = f"seedream.flow-run.{flow_run_id or 'unknown'}"
    resource = {"prefect.resource.id": resource_id, "seedream.error-type": error_type}
    related = [
        {"prefect.resource.id": replicate_resource_id(pid), "prefect.resource.role": "prediction"}
        for pid in prediction_ids
    ]
    if flow_run_id:
        related.append({"prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                        "prefect.resource.role": "flow-run"})
    payload = {
        "prediction_id": first, "prediction_ids": list(prediction_ids),
        "error_type": error_type, "message": redact(message), "retryable": retryable,
        "state": state_name, "flow_run_id": flow_run_id, "flow_name": flow_name,
    }
    return {"event": IMAGES_FAILED, "resource": resource, "related": related, "payload": payload}


def generation_request(prompt: str, *, request_id: str | None = None,
                       **options: Any) -> dict[str, Any]:
    """A `seedream.generate.requested` event, as `emit_event` kwargs (pure).

    `options` are any of `generate_images`' parameters (size, aspect_ratio, max_images,
    key_prefix, ...); the `generate-images/on-request` deployment templates them into its run.
    """
    request_id = request_id or uuid.uuid4().hex
    payload = {"prompt": prompt, **{k: v for k, v in options.items() if v is not None}}
    return {"event": GENERATE_REQUESTED,
            "resource": {"prefect.resource.id": f"seedream.request.{request_id}"},
            "payload": payload}


def _emit(kwargs: dict[str, Any]) -> Event | None:
    from prefect.events import emit_event

    try:
        return emit_event(**kwargs)
    except Exception as exc:  # an event must never fail the work it reports
        _log.warning("could not emit %s: %s", kwargs["event"], type(exc).__name__)
        return None


def request_generation(prompt: str, *, request_id: str | None = None,
                       **options: Any) -> Event | None:
    """Ask for images from any Python process connected to Prefect (fire-and-forget).

    Example:
        ```python
        from prefect_seedream.flows.events import request_generation

        request_generation("a lighthouse at dawn", size="2K", aspect_ratio="16:9",
                           key_prefix="requests/ticket-481")
        ```
    """
    return _emit(generation_request(prompt, request_id=request_id, **options))


def emit_images_stored(prediction: Prediction, stored: Sequence[StoredImage]) -> Event | None:
    """Emit `seedream.images.stored` for an image set that is now in S3."""
    if not stored:
        return None
    return _emit(images_stored_event(prediction, stored))


def _failure_details(state: Any) -> tuple[str, str, str | None, bool | None]:
    """(error type, message, prediction id, retryable) from a final state, best effort."""
    exc: Any = None
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # the result may live in storage this process cannot read
        exc = None
    if isinstance(exc, BaseException):
        retryable = getattr(exc, "retryable", None)
        return (type(exc).__name__, str(exc), getattr(exc, "prediction_id", None),
                retryable if isinstance(retryable, bool) else None)
    return (str(getattr(state, "name", None) or "Failed"), str(getattr(state, "message", "") or ""),
            None, None)


def emit_images_failed(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook (`on_failure`, `on_crashed`): emit `seedream.images.failed` for this run.

    The prediction ids come from the error, else from the run's prediction ledger.
    """
    error_type, message, prediction_id, retryable = _failure_details(state)
    flow_run_id = str(flow_run.id) if getattr(flow_run, "id", None) else None
    ids = [prediction_id] if prediction_id else []
    if not ids and flow_run_id:
        try:
            from prefect_seedream.flows.run_hooks import run_ledger

            ids = [str(record["prediction_id"]) for record
                   in run_ledger(flow_run).records_of(flow_run_id) if record.get("prediction_id")]
        except Exception as exc:
            _log.warning("could not read the prediction ledger: %s", type(exc).__name__)
    _emit(images_failed_event(
        error_type=error_type, message=message, prediction_ids=ids, flow_run_id=flow_run_id,
        flow_name=getattr(flow, "name", None), state_name=getattr(state, "name", None),
        retryable=retryable,
    ))


SPEND_THRESHOLD = "seedream.spend.threshold"


def emit_spend_threshold(period: str, level: int, summary: dict[str, Any]) -> Event | None:
    """Emit `seedream.spend.threshold` (resource `seedream.spend.<period>`): the period's spend
    plus reservations reached `level` percent (80, then 100) of its limit, once per level and
    period. `summary` (limits, settled and reserved images and dollars) is the payload."""
    return _emit({"event": SPEND_THRESHOLD,
                  "resource": {"prefect.resource.id": f"seedream.spend.{period}",
                               "seedream.spend.level": str(level)},
                  "payload": {"level": level, **summary}})


__all__ = [
    "GENERATE_REQUESTED",
    "IMAGES_FAILED",
    "IMAGES_STORED",
    "PREDICTION_COMPLETED",
    "SPEND_THRESHOLD",
    "emit_images_failed",
    "emit_images_stored",
    "emit_spend_threshold",
    "generation_request",
    "images_failed_event",
    "images_stored_event",
    "prediction_resource_id",
    "redact",
    "replicate_resource_id",
    "request_generation",
]
