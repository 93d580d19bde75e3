"""The webhook-driven path: no worker waits while Replicate works.

1. `submit_images` creates a prediction with a webhook and ends at once (seconds of worker time).
2. Replicate calls the webhook when the prediction completes; the receiver
   (`python -m prefect_seedream.deployments.webhook_receiver`, or a Prefect Cloud webhook) verifies
   the signature and emits `replicate.prediction.completed`.
3. The `store-prediction/on-webhook` deployment's trigger runs `store_prediction`, which reads
   the prediction once, streams its outputs to S3 and emits `seedream.images.stored`.

The event only carries the prediction id and status: `store_prediction` reads the prediction
itself, so neither output URLs nor inputs (which may hold presigned URLs) travel in events.
"""

# No `from __future__ import annotations`: Prefect validates parameters against these
# annotations, and a runner that loads this file by path must find real types, not strings.

import time

from prefect import flow

from prefect_seedream.blocks.prefect_aws_adapter import S3BucketBlock
from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
from prefect_seedream.blocks.s3_destination import S3Destination
from prefect_seedream.flows.events import emit_images_failed, emit_images_stored
from prefect_seedream.flows.flow_support import build_request, check_bucket
from prefect_seedream.flows.image_report import publish_report
from prefect_seedream.flows.run_hooks import cancel_open_predictions
from prefect_seedream.tasks.connections import resolve_credentials, resolve_destination
from prefect_seedream.tasks.prediction_support import validate_input
from prefect_seedream.tasks.predictions import await_prediction, create_prediction, get_prediction
from prefect_seedream.tasks.replicate_client.prediction import Prediction
from prefect_seedream.tasks.s3_storage.keys import key_prefix_under
from prefect_seedream.tasks.seedream_input import output_dimensions
from prefect_seedream.tasks.seedream_settings import get_settings
from prefect_seedream.tasks.storage import StoredImage, store_outputs
from prefect_seedream.tasks.wait_support import raise_for_outcome


def expected_size(prediction: Prediction) -> tuple[int, int] | None:
    """The output size the prediction's input asks for, when it can be known from the input."""
    try:
        return output_dimensions(validate_input(prediction.input))
    except Exception:  # match_input_image, or an input this version does not model
        return None


@flow(
    name="submit-images",
    description="Starts a Seedream 4 prediction that reports back by webhook; returns at once.",
    on_crashed=[cancel_open_predictions, emit_images_failed],
    on_failure=[emit_images_failed],
)
def submit_images(
    prompt: str,
    webhook_url: str,
    *,
    size: str = "2K",
    aspect_ratio: str = "1:1",
    max_images: int = 1,
    enhance_prompt: bool | None = None,
    credentials: ReplicateCredentials | str | None = None,
    destination: S3Destination | S3BucketBlock | str | None = None,
    timeout_seconds: float | None = None,
) -> str:
    """Create a prediction whose completion is delivered to `webhook_url`; return its id.

    The destination is checked first, so a prediction is never paid for that could not be
    stored. Replicate's `Cancel-After` deadline (`timeout_seconds` plus the settings' margin)
    still bounds the prediction, since no flow waits on it.

    Example:
        ```python
        from prefect_seedream.flows.webhook_flows import submit_images

        prediction_id = submit_images("a koi pond at night",
                                      webhook_url="https://hooks.example.com/replicate")
        ```
    """
    request = build_request(prompt, size=size, aspect_ratio=aspect_ratio, width=None,
                            height=None, max_images=max_images, enhance_prompt=enhance_prompt)
    resolve_credentials(credentials)
    target = resolve_destination(destination)
    check_bucket(target)
    settings = get_settings()
    timeout = timeout_seconds if timeout_seconds is not None else settings.timeout_seconds
    prediction = create_prediction(
        request, credentials=credentials, webhook=webhook_url,
        webhook_events_filter=["completed"],
        cancel_after=timeout + settings.cancel_after_margin_seconds, ledger=target,
    )
    return prediction.id


@flow(
    name="store-prediction",
    description="Stores a finished prediction's images in S3 (run by the webhook's event).",
    on_failure=[emit_images_failed],
    on_crashed=[emit_images_failed],
)
def store_prediction(
    prediction_id: str,
    *,
    credentials: ReplicateCredentials | str | None = None,
    destination: S3Destination | S3BucketBlock | str | None = None,
    key_prefix: str | None = None,
    timeout_seconds: float = 120,
) -> list[StoredImage]:
    """Read prediction `prediction_id` once, store its outputs and emit `seedream.images.stored`.

    Idempotent: keys are deterministic, so a repeated event stores nothing twice. A prediction
    that did not succeed raises its typed error (`PredictionFailed`, ...), which the failure hook
    reports as `seedream.images.failed`. If the prediction is somehow not finished yet, it is
    awaited for at most `timeout_seconds`.

    Example:
        ```python
        from prefect_seedream.flows.webhook_flows import store_prediction

        images = store_prediction("p8x2...", credentials="seedream-replicate",
                                  destination="seedream-images")
        ```
    """
    started = time.monotonic()
    target = resolve_destination(destination)
    prefix = key_prefix_under(target.prefix, key_prefix)  # nests under it, or is refused
    prediction = get_prediction(prediction_id, credentials=credentials)
    if not prediction.status.is_terminal:
        prediction = await_prediction(prediction, credentials=credentials,
                                      timeout_seconds=timeout_seconds)
    finished = raise_for_outcome(prediction)
    stored = store_outputs(finished, target, key_prefix=prefix,
                           expected_size=expected_size(finished))
    title = f"Stored from webhook: {finished.prompt or finished.id}"
    publish_report(title, finished, stored, target, seconds=time.monotonic() - started)
    emit_images_stored(finished, stored)
    return stored


__all__ = ["expected_size", "store_prediction", "submit_images"]
