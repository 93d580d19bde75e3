"""Async twins of the image flows, for async pipelines.

`await asyncio.gather(*(agenerate_images(p) for p in prompts))` inside your async flow runs the
predictions concurrently on one event loop: Replicate calls use the async HTTP client, and S3 work
and the few blocking Prefect calls run in worker threads.

They are async *tasks*, not subflows: Prefect 3.9 starts gathered async subflows one after another
with a second or more of bookkeeping each (measured here: 20 gathered subflows of 2 s took 34 s,
20 gathered tasks 2.7 s), which would defeat the point. Predictions they create are recorded under
your flow run; add `on_cancellation=[cancel_open_predictions]` and
`on_crashed=[cancel_open_predictions]` (from `prefect_seedream.flows.run_hooks`) to your flow so a
cancelled or crashed run cancels them too. In-process cancellation and timeouts are handled without
hooks.
"""

from __future__ import annotations

import functools
import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_seedream.blocks.prefect_aws_adapter import S3BucketBlock
from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
from prefect_seedream.blocks.s3_destination import S3Destination
from prefect_seedream.flows.events import emit_images_stored
from prefect_seedream.flows.flow_support import (
    build_request,
    check_bucket,
    prepare_edit,
    worth_another_prediction,
)
from prefect_seedream.flows.image_report import publish_report
from prefect_seedream.tasks.connections import resolve_credentials, resolve_destination
from prefect_seedream.tasks.errors import PredictionFailed
from prefect_seedream.tasks.loop_threads import in_thread
from prefect_seedream.tasks.model_schemas import checked_request
from prefect_seedream.tasks.predictions_async import aawait_prediction, acreate_prediction
from prefect_seedream.tasks.s3_storage.keys import key_prefix_under
from prefect_seedream.tasks.seedream_input import SeedreamInput, output_dimensions
from prefect_seedream.tasks.seedream_settings import get_settings
from prefect_seedream.tasks.storage import StoredImage
from prefect_seedream.tasks.storage_async import astore_outputs


async def arun_prediction(
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
    """Create, await and store one prediction without blocking the loop."""
    settings = get_settings()
    started = time.monotonic()
    for attempt in range(settings.interrupted_retries + 1):
        prediction = await acreate_prediction(
            request, credentials=credentials, sources=sources, ledger=destination,
            request_id=request_id, model=model,
            cancel_after=timeout_seconds + settings.cancel_after_margin_seconds,
            wait_seconds=min(settings.sync_wait_seconds, int(timeout_seconds)) or None,
        )
        try:
            finished = await aawait_prediction(
                prediction, credentials=credentials, timeout_seconds=timeout_seconds
            )
            break
        except PredictionFailed as exc:
            if not worth_another_prediction(exc, attempt, settings.interrupted_retries):
                raise
    stored = await astore_outputs(
        finished, destination, key_prefix=key_prefix, expected_size=expected_size
    )
    await in_thread(functools.partial(
        publish_report, title, finished, stored, destination, seconds=time.monotonic() - started
    ))
    emit_images_stored(finished, stored)  # seedream.images.stored (sync: only queues the event)
    return stored


async def _target(
    credentials: ReplicateCredentials | str | None,
    destination: S3Destination | S3BucketBlock | str | None,
) -> S3Destination:
    await in_thread(resolve_credentials, credentials)
    target = await in_thread(resolve_destination, destination)
    await in_thread(check_bucket, target)
    return target


@task(
    name="Generate images",
    description="Generates images with Seedream 4 from a prompt and stores them in S3 (async).",
    cache_policy=NO_CACHE,
)
async def agenerate_images(
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
    """Async `generate_images`: same arguments, same guarantees.

    Example:
        ```python
        import asyncio
        from prefect import flow
        from prefect_seedream import agenerate_images

        @flow
        async def week_of_posts(prompts: list[str]) -> int:
            batches = await asyncio.gather(*(agenerate_images(p, size="1K") for p in prompts))
            return sum(len(images) for images in batches)
        ```
    """
    request = build_request(
        prompt, size=size, aspect_ratio=aspect_ratio, width=width, height=height,
        max_images=max_images, enhance_prompt=enhance_prompt,
    )
    request = await in_thread(  # the model's published schema, before anything else
        checked_request, request, model or get_settings().model, credentials)
    target = await _target(credentials, destination)
    prefix = key_prefix_under(target.prefix, key_prefix)  # nests under it, or is refused
    return await arun_prediction(
        request, credentials=credentials, destination=target, key_prefix=prefix,
        timeout_seconds=timeout_seconds, expected_size=output_dimensions(request),
        title=f"Generated: {prompt}", request_id=request_id, model=model,
    )


@task(
    name="Edit image",
    description="Edits images with one Seedream 4 instruction and stores them in S3 (async).",
    cache_policy=NO_CACHE,
)
async def aedit_image(
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
    """Async `edit_image`: same arguments, same guarantees."""
    target = await in_thread(resolve_destination, destination)
    prefix = key_prefix_under(target.prefix, key_prefix)  # nests under it, or is refused
    edit = await in_thread(functools.partial(
        prepare_edit, instruction, images, target, timeout_seconds=timeout_seconds, size=size,
        aspect_ratio=aspect_ratio, width=width, height=height, max_images=max_images,
        enhance_prompt=enhance_prompt,
    ))
    await in_thread(checked_request, edit.request, model or get_settings().model, credentials)
    target = await _target(credentials, target)
    return await arun_prediction(
        edit.request, credentials=credentials, destination=target, key_prefix=prefix,
        timeout_seconds=timeout_seconds, expected_size=edit.expected_size,
        title=f"Edited: {instruction}", sources=edit.sources, request_id=request_id,
        model=model,
    )
