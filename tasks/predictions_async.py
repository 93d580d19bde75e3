"""Async twins of the prediction tasks, for async flows (Prefect's `a`-prefix convention).

They drive the same protocols as the sync tasks with the `replicate` client's async httpx client,
so awaiting them never blocks the event loop; the few blocking Prefect API calls (loading a
block, the prediction ledger) run in a worker thread. Cleanup after a cancellation or timeout is
shielded, so the prediction is cancelled even while the task itself is being cancelled.

Example:
    ```python
    import asyncio
    from prefect import flow
    from prefect_seedream import SeedreamInput
    from prefect_seedream.tasks.predictions_async import acreate_prediction, aawait_prediction

    @flow
    async def many(prompts: list[str]) -> list[str]:
        async def one(prompt: str) -> str:
            created = await acreate_prediction(SeedreamInput(prompt=prompt, aspect_ratio="1:1"))
            return (await aawait_prediction(created)).id

        return await asyncio.gather(*(one(p) for p in prompts))
    ```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
from anyio import to_thread
from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_seedream.tasks import prediction_ledger
from prefect_seedream.tasks.concurrency import aacquire_create_slot
from prefect_seedream.tasks.connections import replicate_api
from prefect_seedream.tasks.errors import CreateOutcomeUnknown
from prefect_seedream.tasks.loop_threads import in_thread
from prefect_seedream.tasks.prediction_support import ledger_for, plan_create, retry_policy
from prefect_seedream.tasks.replicate_client import protocol
from prefect_seedream.tasks.replicate_client.prediction import Prediction
from prefect_seedream.tasks.seedream_input import SeedreamInput
from prefect_seedream.tasks.wait_support import plan_wait

if TYPE_CHECKING:
    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
    from prefect_seedream.blocks.s3_destination import S3Destination


@task(
    name="Create Seedream prediction",
    description="Starts one Seedream 4 prediction on Replicate, paid for at most once (async).",
    cache_policy=NO_CACHE,
)
async def acreate_prediction(
    input: SeedreamInput | dict[str, Any],
    *,
    credentials: ReplicateCredentials | str | None = None,
    webhook: str | None = None,
    webhook_events_filter: list[str] | None = None,
    wait_seconds: int | None = None,
    cancel_after: float | None = None,
    idempotency_key: str | None = None,
    sources: list[str] | None = None,
    ledger: S3Destination | str | None = None,
    request_id: str | None = None,
    model: str | None = None,
) -> Prediction:
    """Async `create_prediction`: same arguments, same guarantees (the ledger's claim runs in a
    worker thread)."""
    plan = await in_thread(lambda: plan_create(
        input, credentials, webhook=webhook, webhook_events_filter=webhook_events_filter,
        wait_seconds=wait_seconds, cancel_after=cancel_after, idempotency_key=idempotency_key,
        sources=sources, ledger_at=ledger_for(ledger), request_id=request_id,
        model=model,
    ))
    while True:
        # The claim may wait seconds on another run's create: outside the loop's bounded
        # threads, which that run (on this loop, perhaps) needs to record it.
        if (earlier := await to_thread.run_sync(plan.obtain, abandon_on_cancel=True)):
            return earlier
        await in_thread(plan.reserve)  # the spend limit, before any request
        await aacquire_create_slot()  # shared budget, if SEEDREAM_RATE_LIMIT_NAME
        try:
            created = await plan.api.arun(plan.create(), on_note=plan.log.info)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                cleanup = await in_thread(plan.interrupted, exc)
                if cleanup is not None:
                    await plan.api.arun(cleanup, on_note=plan.log.warning)
            if isinstance(exc, CreateOutcomeUnknown):
                raise plan.unknown(exc) from exc
            raise
        with anyio.CancelScope(shield=True):  # an id that exists must reach the ledger
            recorded = await in_thread(plan.created, created)
        if recorded is not None:
            return recorded


@task(
    name="Get Seedream prediction",
    description="Reads a prediction's current state once, without waiting (async).",
    cache_policy=NO_CACHE,
)
async def aget_prediction(
    prediction_id: str, *, credentials: ReplicateCredentials | str | None = None
) -> Prediction:
    """Async `get_prediction`."""
    api = await in_thread(replicate_api, credentials)
    result: Prediction = await api.arun(protocol.get(prediction_id, policy=retry_policy()))
    return result


@task(
    name="Await Seedream prediction",
    description="Polls a prediction until it ends; cancels it if we stop waiting (async).",
    cache_policy=NO_CACHE,
)
async def aawait_prediction(
    prediction: str | Prediction,
    *,
    credentials: ReplicateCredentials | str | None = None,
    timeout_seconds: float | None = None,
) -> Prediction:
    """Async `await_prediction`. Cancelled or timed out, it still cancels the prediction."""
    plan = await in_thread(plan_wait, prediction, credentials, timeout_seconds)
    if plan.already is not None:
        plan.progress(plan.already)
        return await in_thread(plan.finished, plan.already)
    try:
        final: Prediction = await plan.api.arun(plan.wait, on_update=plan.progress,
                                                on_note=plan.progress.log.info)
    except BaseException as stopped:
        with anyio.CancelScope(shield=True):
            try:
                result = await plan.api.arun(plan.cancel())
                await in_thread(plan.cancelled, result, stopped)
            except Exception as exc:
                plan.cancel_failed(exc, stopped)
        raise
    return await in_thread(plan.finished, final)


@task(
    name="Cancel Seedream prediction",
    description="Cancels a prediction; a finished or unknown one is left as it is (async).",
    cache_policy=NO_CACHE,
)
async def acancel_prediction(
    prediction_id: str, *, credentials: ReplicateCredentials | str | None = None
) -> Prediction | None:
    """Async `cancel_prediction`, idempotent."""
    api = await in_thread(replicate_api, credentials)
    with anyio.CancelScope(shield=True):
        result: Prediction | None = await api.arun(
            protocol.cancel(prediction_id, policy=retry_policy())
        )
        if result is not None:
            await in_thread(prediction_ledger.settle, result.id, result.status)
    return result
