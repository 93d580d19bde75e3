"""Prefect tasks that create, read, await and cancel Seedream 4 predictions.

Every task takes `credentials` as a `ReplicateCredentials` block, a saved block's name, or None
(settings, then the environment). None of them is cached: a status read must be fresh, and a
create is made idempotent by the prediction ledger, not by Prefect's input cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError

from tasks import prediction_ledger as ledger
from tasks import replicate_protocol as protocol
from tasks.connections import _log, replicate_api
from tasks.errors import (
    InvalidInput,
    PredictionAborted,
    PredictionCanceled,
    PredictionFailed,
)
from tasks.prediction_model import Prediction, PredictionStatus
from tasks.seedream_input import SeedreamInput, describe_errors
from tasks.seedream_settings import get_settings

if TYPE_CHECKING:
    from blocks.replicate_credentials import ReplicateCredentials

# Observed run time of recent predictions, so polling can stay sparse until they are due.
_recent_seconds: dict[str, float] = {}


def validate_input(input: SeedreamInput | dict[str, Any]) -> SeedreamInput:
    """`input` as a `SeedreamInput`, or `InvalidInput` naming every bad field."""
    if isinstance(input, SeedreamInput):
        return input
    try:
        return SeedreamInput.model_validate(input)
    except ValidationError as exc:
        raise InvalidInput(f"invalid Seedream input: {describe_errors(exc)}") from exc


def _policy() -> protocol.RetryPolicy:
    settings = get_settings()
    return protocol.RetryPolicy(
        max_create_attempts=settings.create_attempts,
        max_rate_limit_wait=settings.max_rate_limit_wait_seconds,
    )


def _size_key(prediction: Prediction) -> str:
    return str(prediction.input.get("size", "?"))


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
) -> Prediction:
    """Create a prediction and return it (id, status, urls, ...).

    Input is validated before anything is sent. Inside a flow run the prediction id is written to
    the prediction ledger as soon as it is known, and a retry of this task or of the flow run
    re-attaches to it instead of paying again. 429s are retried as Replicate asks; a create whose
    answer was lost is found again in the list of recent predictions.

    Args:
        input: A `SeedreamInput` or a dict of its fields.
        credentials: A `ReplicateCredentials` block, its saved name, or None for the defaults.
        webhook: An HTTPS URL Replicate calls as the prediction progresses.
        webhook_events_filter: Which events call the webhook (`start`, `output`, `logs`, `completed`).
        wait_seconds: Hold the create open up to this long (1-60 s, `Prefer: wait`).
        cancel_after: Server-side deadline in seconds (`Cancel-After`); None uses the settings'
            timeout plus margin, 0 sends none.
        idempotency_key: Distinguishes deliberate repeats of the same input within a flow run.

    Example:
        ```python
        from prefect import flow
        from tasks import SeedreamInput, create_prediction, await_prediction

        @flow
        def one_image() -> str:
            prediction = create_prediction(SeedreamInput(prompt="a lighthouse", aspect_ratio="1:1"))
            return await_prediction(prediction.id).output_urls[0]
        ```
    """
    request = validate_input(input)
    settings = get_settings()
    api = replicate_api(credentials)
    body = request.to_request()
    log = _log()

    flow_run_id = ledger.current_flow_run_id()
    entry = None
    if flow_run_id:
        entry = ledger.entry_name(flow_run_id, ledger.request_key(settings.model, body, idempotency_key))
        saved = ledger.recall(entry)
        if saved:
            prediction = api.run(protocol.get(saved["prediction_id"], policy=_policy()))
            log.info("Re-attached to prediction %s (%s); not creating another", prediction.id,
                     prediction.status.value)
            return prediction  # type: ignore[no-any-return]

    if cancel_after is None:
        cancel_after = settings.timeout_seconds + settings.cancel_after_margin_seconds
    prediction = api.run(
        protocol.create(
            settings.model, body, now=protocol.utcnow, policy=_policy(),
            webhook=webhook, webhook_events_filter=webhook_events_filter,
            wait_seconds=wait_seconds, cancel_after_seconds=cancel_after or None,
        ),
        on_note=log.info,
    )
    if entry:
        ledger.remember(entry, prediction.id, prediction.status)
    log.info("Created prediction %s (%s)", prediction.id, prediction.status.value)
    return prediction  # type: ignore[no-any-return]


@task(
    name="Get Seedream prediction",
    description="Reads a prediction's current state once, without waiting.",
    cache_policy=NO_CACHE,
)
def get_prediction(
    prediction_id: str, *, credentials: ReplicateCredentials | str | None = None
) -> Prediction:
    """One fresh read of a prediction (`aborted`, `deadline` and `data_removed` included)."""
    return replicate_api(credentials).run(protocol.get(prediction_id, policy=_policy()))  # type: ignore[no-any-return]


class _Progress:
    """Logs status changes and new log lines once each."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.status: PredictionStatus | None = None
        self.logs_seen = 0

    def __call__(self, prediction: Prediction) -> None:
        if prediction.status != self.status:
            self.log.info("Prediction %s is %s", prediction.id, prediction.status.value)
            self.status = prediction.status
        logs = prediction.logs or ""
        for line in logs[self.logs_seen:].splitlines():
            if line.strip():
                self.log.info("[%s] %s", prediction.id, line.strip())
        self.logs_seen = len(logs)


def raise_for_outcome(prediction: Prediction) -> Prediction:
    """Return a succeeded prediction; raise the typed error for any other terminal state."""
    status = prediction.status
    if status is PredictionStatus.SUCCEEDED:
        return prediction
    if status is PredictionStatus.FAILED:
        raise PredictionFailed(
            f"Seedream failed: {prediction.error or 'no error message'}",
            error=prediction.error, prediction_id=prediction.id,
        )
    if status is PredictionStatus.CANCELED:
        raise PredictionCanceled("the prediction was canceled while running (billed)",
                                 prediction_id=prediction.id)
    if status is PredictionStatus.ABORTED:
        raise PredictionAborted(
            "the prediction's deadline passed before it started (not billed); "
            "raise cancel_after or timeout_seconds if Replicate is queueing",
            prediction_id=prediction.id,
        )
    return prediction


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
    prediction_id = prediction if isinstance(prediction, str) else prediction.id
    settings = get_settings()
    timeout = timeout_seconds if timeout_seconds is not None else settings.timeout_seconds
    api = replicate_api(credentials)
    policy = _policy()
    progress = _Progress(_log())
    expected = None if isinstance(prediction, str) else _recent_seconds.get(_size_key(prediction))
    schedule = protocol.PollSchedule(
        initial=settings.poll_initial_seconds, max_interval=settings.poll_max_seconds,
        expected_seconds=expected,
    )
    try:
        final: Prediction = api.run(
            protocol.wait(prediction_id, timeout_seconds=timeout, now=protocol.utcnow,
                          policy=policy, schedule=schedule),
            on_update=progress, on_note=progress.log.info,
        )
    except BaseException:
        _cancel_quietly(api, prediction_id, policy, progress.log)
        raise
    ledger.settle(prediction_id, final.status)
    took = final.metrics.get("total_time") or final.metrics.get("predict_time")
    if final.status is PredictionStatus.SUCCEEDED and isinstance(took, (int, float)):
        _recent_seconds[_size_key(final)] = float(took)
    return raise_for_outcome(final)


def _cancel_quietly(api: Any, prediction_id: str, policy: protocol.RetryPolicy, log: Any) -> None:
    try:
        result = api.run(protocol.cancel(prediction_id, policy=policy))
    except Exception as exc:
        log.error("Could not cancel prediction %s: %s; its Cancel-After deadline still applies",
                  prediction_id, exc)
        return
    status = result.status.value if result is not None else "unknown"
    log.warning("Cancelled prediction %s (now %s) because we stopped waiting", prediction_id, status)
    ledger.settle(prediction_id, result.status if result is not None else PredictionStatus.CANCELED)


@task(
    name="Cancel Seedream prediction",
    description="Cancels a prediction; a finished or unknown prediction is left as it is.",
    cache_policy=NO_CACHE,
)
def cancel_prediction(
    prediction_id: str, *, credentials: ReplicateCredentials | str | None = None
) -> Prediction | None:
    """Cancel a prediction, idempotently. Returns its state afterwards (None if unknown)."""
    result: Prediction | None = replicate_api(credentials).run(
        protocol.cancel(prediction_id, policy=_policy())
    )
    if result is not None:
        ledger.settle(prediction_id, result.status)
    return result
