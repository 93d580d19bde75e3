"""Prefect tasks that create, read, await and cancel Seedream 4 predictions (sync).

Every task takes `credentials` as a `ReplicateCredentials` block, a saved block's name, or None
(settings, then the environment). None of them is cached: a status read must be fresh, and a
create is made idempotent by the prediction ledger, not by Prefect's input cache. The async
twins (`acreate_prediction`, ...) live in `prefect_seedream.tasks.predictions_async` and make the
same requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_seedream.tasks.concurrency import acquire_create_slot
from prefect_seedream.tasks.connections import replicate_api
from prefect_seedream.tasks.prediction_support import (
    ledger_for,
    plan_create,
    retry_policy,
    run_create,
)
from prefect_seedream.tasks.replicate_client import protocol
from prefect_seedream.tasks.replicate_client.prediction import Prediction
from prefect_seedream.tasks.seedream_input import SeedreamInput
from prefect_seedream.tasks.wait_support import plan_wait, prediction_ended

if TYPE_CHECKING:
    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
    from prefect_seedream.blocks.s3_destination import S3Destination


@task(
    name="Create Seedream prediction",
    description="Starts one Seedream 4 prediction on Replicate, paid for at most once.",
    cache_policy=NO_CACHE,
)
def create_prediction(
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
    """Create a prediction and return it (id, status, urls, ...).

    Input is validated before anything is sent. Inside a flow run the request is claimed in the
    prediction ledger (`prefect_seedream.tasks.prediction_ledger`, in S3) under its identity
    (model, input and `sources`) before it is sent, and the prediction id is recorded as soon
    as it is known: a retry of this task or of the flow run, in this process or another,
    re-attaches to it instead of paying again. 429s are retried as Replicate asks; a create
    whose answer was lost is found again in the list of recent predictions; when that list
    cannot be read, nothing is sent again (`CreateOutcomeUnknown`, naming the request key).

    Args:
        input: A `SeedreamInput` or a dict of its fields.
        credentials: A `ReplicateCredentials` block, its saved name, or None for the defaults.
        webhook: An HTTPS URL Replicate calls as the prediction progresses.
        webhook_events_filter: Which events call the webhook (`start`, `output`, `logs`,
            `completed`).
        wait_seconds: Hold the create open up to this long (1-60 s, `Prefer: wait`).
        cancel_after: Server-side deadline in seconds (`Cancel-After`); None uses the settings'
            timeout plus margin, 0 sends none.
        idempotency_key: Tells deliberate repeats of the same input within a flow run apart.
        ledger: Where the ledger lives: an `S3Destination` (its prefix's `_ledger/`), a saved
            block's name, or None for the settings' destination. With none configured, no
            record is kept and a retry of this task may pay again.
        request_id: Names the request across runs (an order number, an event's id): every
            run, worker or retry that asks for the same input under the same id shares one
            prediction, even at the same moment. None: the request belongs to this flow run.
        model: `owner/name` or `owner/name:version` (pinned); None: `SEEDREAM_MODEL`
            (`bytedance/seedream-4`). The input is checked against the schema it publishes.
        sources: What each `image_input` entry is, in order, when the URL sent changes from one
            attempt to the next (a presigned URL): e.g. `source_identity("s3://b/k.jpg", etag)`.
            The ledger then names the request by these, so a retry that presigns again still
            re-attaches. None: the input itself names the request.

    Example:
        ```python
        from prefect import flow
        from prefect_seedream import SeedreamInput, create_prediction, await_prediction

        @flow
        def one_image() -> str:
            prediction = create_prediction(SeedreamInput(prompt="a lighthouse", aspect_ratio="1:1"))
            return await_prediction(prediction.id).output_urls[0]
        ```
    """
    plan = plan_create(
        input, credentials, webhook=webhook, webhook_events_filter=webhook_events_filter,
        wait_seconds=wait_seconds, cancel_after=cancel_after, idempotency_key=idempotency_key,
        sources=sources, ledger_at=ledger_for(ledger), request_id=request_id,
        model=model,
    )
    return run_create(plan, acquire_create_slot)


@task(
    name="Get Seedream prediction",
    description="Reads a prediction's current state once, without waiting.",
    cache_policy=NO_CACHE,
)
def get_prediction(
    prediction_id: str, *, credentials: ReplicateCredentials | str | None = None
) -> Prediction:
    """One fresh read of a prediction (`aborted`, `deadline` and `data_removed` included)."""
    api = replicate_api(credentials)
    result: Prediction = api.run(protocol.get(prediction_id, policy=retry_policy()))
    return result


@task(
    name="Await Seedream prediction",
    description="Polls a prediction with backoff until it ends; cancels it if we stop waiting.",
    cache_policy=NO_CACHE,
)
def await_prediction(
    prediction: str | Prediction,
    *,
    credentials: ReplicateCredentials | str | None = None,
    timeout_seconds: float | None = None,
) -> Prediction:
    """Wait for a prediction to succeed and return it.

    Polls fast at first, then slower; logs status changes and new log lines. A transient 5xx,
    429, dropped connection or early 404 does not fail the wait. Raises `PredictionFailed`,
    `PredictionCanceled`, `PredictionAborted`, or `PredictionTimedOut` after cancelling the
    prediction; any other way out (task timeout, Ctrl-C, cancellation) also cancels it.
    """
    plan = plan_wait(prediction, credentials, timeout_seconds)
    return plan.finished(plan.run_blocking())


@task(
    name="Cancel Seedream prediction",
    description="Cancels a prediction; a finished or unknown prediction is left as it is.",
    cache_policy=NO_CACHE,
)
def cancel_prediction(
    prediction_id: str, *, credentials: ReplicateCredentials | str | None = None
) -> Prediction | None:
    """Cancel a prediction, idempotently. Returns its state afterwards (None if unknown)."""
    api = replicate_api(credentials)
    result: Prediction | None = api.run(protocol.cancel(prediction_id, policy=retry_policy()))
    if result is not None:
        prediction_ended(prediction_id, result, result.status)
    return result
