"""Async twin of `store_outputs` for async flows.

S3 and the file downloads run in a worker thread, never on the event loop, one of the loop's
bounded share (`prefect_seedream.tasks.loop_threads`). If the awaiting task is
cancelled, the thread still finishes the objects in flight: each one is either completely written
under its final key or not there at all (outputs go through a temporary key first), so a
cancellation never leaves a half-written image.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_seedream.blocks.s3_destination import S3Destination
from prefect_seedream.tasks.loop_threads import in_thread
from prefect_seedream.tasks.replicate_client.prediction import Prediction
from prefect_seedream.tasks.storage import DEFAULT_RETRY_DELAYS, StoredImage, store_outputs


@task(
    name="Store outputs",
    description="Stream a prediction's output images into S3, verified (async).",
    cache_policy=NO_CACHE,
    retries=0,
)
async def astore_outputs(
    prediction: Prediction,
    destination: S3Destination,
    *,
    key_prefix: str | None = None,
    expected_size: tuple[int, int] | None = None,
    retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
    max_concurrency: int = 4,
) -> list[StoredImage]:
    """Async `store_outputs`: same arguments, same checks, same keys."""
    job = functools.partial(
        store_outputs.fn, prediction, destination, key_prefix=key_prefix,
        expected_size=expected_size, retry_delays=retry_delays, max_concurrency=max_concurrency,
    )
    return await in_thread(job)
