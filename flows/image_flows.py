"""Flows a user runs: generate images from a prompt, or edit images with one instruction.

Each flow checks everything it can before paying (input, credentials, bucket access), creates one
prediction, waits for it, streams every output to S3, publishes an artifact and returns the
stored images. If the run is cancelled or crashes, its hooks cancel what is still running.
The async twins are in `prefect_seedream.flows.image_flows_async`.
"""

# No `from __future__ import annotations`: Prefect validates parameters against these
# annotations, and a runner that loads this file by path must find real types, not strings.

import time

from prefect import flow

from prefect_seedream.blocks.prefect_aws_adapter import S3BucketBlock
from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
from prefect_seedream.blocks.s3_destination import S3Destination
from prefect_seedream.flows.events import emit_images_failed, emit_images_stored
from prefect_seedream.flows.flow_support import (
    build_request,
    check_bucket,
    prepare_edit,
    worth_another_prediction,
)
from prefect_seedream.flows.image_report import publish_report
from prefect_seedream.flows.run_hooks import cancel_open_predictions
from prefect_seedream.tasks.connections import resolve_credentials, resolve_destination
from prefect_seedream.tasks.errors import PredictionFailed
from prefect_seedream.tasks.model_schemas import checked_request
from prefect_seedream.tasks.predictions import await_prediction, create_prediction
from prefect_seedream.tasks.s3_storage.keys import key_prefix_under
from prefect_seedream.tasks.seedream_input import SeedreamInput, output_dimensions
from prefect_seedream.tasks.seedream_settings import get_settings
from prefect_seedream.tasks.storage import StoredImage, store_outputs


def run_prediction(
    request: SeedreamInput,
    *,
    credentials: ReplicateCredentials | str | None,
    destination: S3Destination,
    key_prefix: str | None,
    timeout_seconds: float,
    expected_size: tuple[int, int] | None,
    title: str,
    sources: list[str] | None = None,
    request_id: str | None = None,
    model: str | None = None,
) -> list[StoredImage]:
    """Create, await and store one prediction; the shared body of both flows.

    `sources` names the request's images by what they are (see `prepare_edit`), so a retry
    that presigns them again re-attaches to the prediction already paid for.
    """
    settings = get_settings()
    started = time.monotonic()
    for attempt in range(settings.interrupted_retries + 1):
        prediction = create_prediction(
            request, credentials=credentials, sources=sources, ledger=destination,
            request_id=request_id, model=model,
            cancel_after=timeout_seconds + settings.cancel_after_margin_seconds,
            wait_seconds=min(settings.sync_wait_seconds, int(timeout_seconds)) or None,
        )
        try:
            finished = await_prediction(
                prediction, credentials=credentials, timeout_seconds=timeout_seconds
            )
            break
        except PredictionFailed as exc:
            if not worth_another_prediction(exc, attempt, settings.interrupted_retries):
                raise
    stored = store_outputs(
        finished, destination, key_prefix=key_prefix, expected_size=expected_size
    )
    publish_report(title, finished, stored, destination, seconds=time.monotonic() - started)
    emit_images_stored(finished, stored)  # seedream.images.stored, for downstream deployments
    return stored


@flow(
    name="generate-images",
    description="Generates images with Seedream 4 from a text prompt and stores them in S3.",
    on_cancellation=[cancel_open_predictions],
    on_crashed=[cancel_open_predictions, emit_images_failed],
    on_failure=[emit_images_failed],
)
def generate_images(
    prompt: str,
    *,
    size: str = "2K",
    aspect_ratio: str = "1:1",
    width: int | None = None,
    height: int | None = None,
    max_images: int = 1,
    enhance_prompt: bool | None = None,
    credentials: ReplicateCredentials | str | None = None,
    destination: S3Destination | S3BucketBlock | str | None = None,
    key_prefix: str | None = None,
    timeout_seconds: float = 600,
    request_id: str | None = None,
    model: str | None = None,
) -> list[StoredImage]:
    """Generate images from `prompt` and store them in S3.

    `max_images > 1` turns on sequential generation; Seedream may return fewer images.
    `credentials` and `destination` take a block, a saved block's name, or None (settings).
    `model` is `owner/name` or `owner/name:version` (default `SEEDREAM_MODEL`,
    `bytedance/seedream-4`); the input is checked against the schema that model publishes.
    `request_id` (an order number, an event's id) names the request across runs: every run
    that asks for the same input under the same id, even at the same moment, shares one
    prediction and its images; without it each flow run pays for its own.

    Example:
        ```python
        from prefect_seedream import generate_images

        images = generate_images("a lighthouse at dawn, oil painting", aspect_ratio="16:9")
        print([image.uri for image in images])
        ```
    """
    request = build_request(
        prompt, size=size, aspect_ratio=aspect_ratio, width=width, height=height,
        max_images=max_images, enhance_prompt=enhance_prompt,
    )
    # The model's published schema (or, unreachable, Seedream 4's bundled rules), first.
    request = checked_request(request, model or get_settings().model, credentials)
    resolve_credentials(credentials)  # fail now on missing credentials, not after paying
    target = resolve_destination(destination)
    prefix = key_prefix_under(target.prefix, key_prefix)  # nests under it, or is refused
    check_bucket(target)
    return run_prediction(
        request, credentials=credentials, destination=target, key_prefix=prefix,
        timeout_seconds=timeout_seconds, expected_size=output_dimensions(request),
        title=f"Generated: {prompt}", request_id=request_id, model=model,
    )


@flow(
    name="edit-image",
    description="Edits images with one Seedream 4 instruction and stores the results in S3.",
    on_cancellation=[cancel_open_predictions],
    on_crashed=[cancel_open_predictions, emit_images_failed],
    on_failure=[emit_images_failed],
)
def edit_image(
    instruction: str,
    images: list[str],
    *,
    size: str = "2K",
    aspect_ratio: str = "match_input_image",
    width: int | None = None,
    height: int | None = None,
    max_images: int = 1,
    enhance_prompt: bool | None = None,
    credentials: ReplicateCredentials | str | None = None,
    destination: S3Destination | S3BucketBlock | str | None = None,
    key_prefix: str | None = None,
    timeout_seconds: float = 600,
    request_id: str | None = None,
    model: str | None = None,
) -> list[StoredImage]:
    """Apply `instruction` to `images` (s3:// URIs or https URLs) and store the results in S3.

    S3 sources are sent to Replicate as short-lived presigned URLs, never as big data URIs;
    the prediction is remembered by each source's URI and ETag, so a retry (which presigns
    again) re-attaches to it instead of paying twice.

    Example:
        ```python
        from prefect_seedream import edit_image

        edited = edit_image("make the sky stormy", ["s3://my-bucket/photos/beach.jpg"])
        ```
    """
    target = resolve_destination(destination)
    prefix = key_prefix_under(target.prefix, key_prefix)  # nests under it, or is refused
    edit = prepare_edit(
        instruction, images, target, timeout_seconds=timeout_seconds, size=size,
        aspect_ratio=aspect_ratio, width=width, height=height, max_images=max_images,
        enhance_prompt=enhance_prompt,
    )
    checked_request(edit.request, model or get_settings().model, credentials)
    resolve_credentials(credentials)
    check_bucket(target)
    return run_prediction(
        edit.request, credentials=credentials, destination=target, key_prefix=prefix,
        timeout_seconds=timeout_seconds, expected_size=edit.expected_size,
        title=f"Edited: {instruction}", sources=edit.sources, request_id=request_id,
        model=model,
    )
