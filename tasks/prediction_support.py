"""What the sync and async prediction tasks share: input checks, the create plan, the wait plan,
progress logging and outcome mapping. No I/O of its own beyond resolving credentials."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from prefect_seedream.tasks import prediction_ledger as ledger
from prefect_seedream.tasks.connections import _log, replicate_api
from prefect_seedream.tasks.errors import (
    InvalidInput,
    PredictionAborted,
    PredictionCanceled,
    PredictionFailed,
    SeedreamError,
)
from prefect_seedream.tasks.replicate_client import protocol
from prefect_seedream.tasks.replicate_client.api import ReplicateApi
from prefect_seedream.tasks.replicate_client.prediction import Prediction, PredictionStatus
from prefect_seedream.tasks.replicate_client.request_builders import created_at
from prefect_seedream.tasks.seedream_input import SeedreamInput, describe_errors
from prefect_seedream.tasks.seedream_settings import get_settings

if TYPE_CHECKING:
    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials

# Observed run time of recent predictions per size, so polling stays sparse until they are due.
_recent_seconds: dict[str, float] = {}


def validate_input(input: SeedreamInput | dict[str, Any]) -> SeedreamInput:
    """`input` as a `SeedreamInput`, or `InvalidInput` naming every bad field."""
    if isinstance(input, SeedreamInput):
        return input
    try:
        return SeedreamInput.model_validate(input)
    except ValidationError as exc:
        raise InvalidInput(f"invalid Seedream input: {describe_errors(exc)}") from exc


def retry_policy() -> protocol.RetryPolicy:
    settings = get_settings()
    return protocol.RetryPolicy(
        max_create_attempts=settings.create_attempts,
        max_rate_limit_wait=settings.max_rate_limit_wait_seconds,
    )


@dataclass
class CreatePlan:
    """Everything a create needs, decided before any request is sent."""

    api: ReplicateApi
    model: str
    body: dict[str, Any]
    entry: str | None  # prediction-ledger entry, inside a flow run
    options: dict[str, Any]
    log: Any
    sent_at: datetime | None = None

    def reattach(self, saved: dict[str, Any]) -> protocol.Protocol:
        """Read the saved prediction, or find the one a pending sync-mode create made."""
        if saved.get("prediction_id"):
            return protocol.get(str(saved["prediction_id"]), policy=retry_policy())
        since = datetime.fromisoformat(str(saved.get("sent_at")))
        return protocol.find(self.model, self.body, since=since, policy=retry_policy())

    def pending(self) -> None:
        """Before a sync-mode create, whose id comes only with its answer: note it's on its way."""
        self.sent_at = protocol.utcnow()
        if self.entry and self.options.get("wait_seconds"):
            ledger.remember_pending(self.entry, self.sent_at, self.model, self.body)

    def interrupted(self, exc: BaseException) -> protocol.Protocol | None:
        """After a create was interrupted from outside (cancel, timeout, Ctrl-C): a protocol that
        cancels whatever it made. None for the create's own errors, which made nothing."""
        if isinstance(exc, SeedreamError) or self.sent_at is None:
            return None
        return protocol.abandon(self.model, self.body, since=self.sent_at, policy=retry_policy())

    def create(self) -> protocol.Protocol:
        return protocol.create(self.model, self.body, now=protocol.utcnow, policy=retry_policy(),
                               **self.options)

    def reattached(self, prediction: Prediction | None) -> Prediction | None:
        """The saved prediction if it is worth re-attaching to, else None (create anew).

        Running or succeeded: re-attach, never pay twice. Failed, canceled or aborted: that
        attempt is over, and the retry that brought us here wants a new one.
        """
        if prediction is None:
            return None
        if prediction.status.is_terminal and prediction.status is not PredictionStatus.SUCCEEDED:
            self.log.info("Prediction %s from an earlier attempt ended %s; creating a new one",
                          prediction.id, prediction.status.value)
            return None
        self.log.info("Re-attached to prediction %s (%s); not creating another",
                      prediction.id, prediction.status.value)
        return prediction

    def created(self, prediction: Prediction) -> Prediction:
        if self.entry:
            ledger.remember(self.entry, prediction.id, prediction.status)
        self.log.info("Created prediction %s (%s)", prediction.id, prediction.status.value)
        return prediction


def plan_create(
    input: SeedreamInput | dict[str, Any],
    credentials: ReplicateCredentials | str | None,
    *,
    webhook: str | None,
    webhook_events_filter: list[str] | None,
    wait_seconds: int | None,
    cancel_after: float | None,
    idempotency_key: str | None,
    sources: Sequence[str] | None = None,
) -> CreatePlan:
    """Validate, resolve credentials and name the ledger entry; raises before any request.

    The entry is named by the request's identity (`ledger.request_key`): `sources`, when given,
    name the images in place of the URLs sent, which may differ on every attempt. The body
    sent, and so the reconciliation of a lost create, is this attempt's own.
    """
    request = validate_input(input)
    settings = get_settings()
    body = request.to_request()
    try:
        key = ledger.request_key(settings.model, body, idempotency_key, sources)
    except ValueError as exc:
        raise InvalidInput(f"invalid sources: {exc}") from exc
    api = replicate_api(credentials)
    flow_run_id = ledger.current_flow_run_id()
    entry = ledger.entry_name(flow_run_id, key) if flow_run_id else None
    if cancel_after is None:
        cancel_after = settings.timeout_seconds + settings.cancel_after_margin_seconds
    options = {
        "webhook": webhook, "webhook_events_filter": webhook_events_filter,
        "wait_seconds": wait_seconds, "cancel_after_seconds": cancel_after or None,
    }
    return CreatePlan(api, settings.model, body, entry, options, _log())


class Progress:
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


@dataclass
class WaitPlan:
    """A wait: the API, the polling protocol and what to do on the way out."""

    api: ReplicateApi
    prediction_id: str
    progress: Progress
    wait: protocol.Protocol
    already: Prediction | None = None  # handed over already finished: nothing to poll

    def cancel(self) -> protocol.Protocol:
        return protocol.cancel(self.prediction_id, policy=retry_policy())

    def run_blocking(self) -> Prediction:
        """Poll until terminal (blocking I/O); any way out before that cancels the prediction."""
        if self.already is not None:
            self.progress(self.already)
            return self.already
        try:
            final: Prediction = self.api.run(self.wait, on_update=self.progress,
                                             on_note=self.progress.log.info)
        except BaseException as stopped:
            try:
                self.cancelled(self.api.run(self.cancel()), stopped)
            except Exception as exc:
                self.cancel_failed(exc, stopped)
            raise
        return final

    def cancelled(self, result: Prediction | None, stopped: BaseException | None = None) -> None:
        status = result.status if result is not None else PredictionStatus.CANCELED
        self.progress.log.warning(
            "Cancelled prediction %s (now %s) because we stopped waiting",
            self.prediction_id, status.value,
        )
        ledger.settle(self.prediction_id, status)
        stopped_now = status in (PredictionStatus.CANCELED, PredictionStatus.ABORTED)
        _tell(stopped, "it was cancelled so it stops billing" if stopped_now
              else f"it had already ended: {status.value}")

    def cancel_failed(self, exc: BaseException, stopped: BaseException | None = None) -> None:
        self.progress.log.error(
            "Could not cancel prediction %s: %s; its Cancel-After deadline still applies",
            self.prediction_id, exc,
        )
        _tell(stopped, f"cancel failed: {exc}; its server-side Cancel-After deadline still "
                       "ends it")

    def finished(self, final: Prediction) -> Prediction:
        ledger.settle(self.prediction_id, final.status)
        took = final.metrics.get("total_time") or final.metrics.get("predict_time")
        if final.status is PredictionStatus.SUCCEEDED and isinstance(took, (int, float)):
            _recent_seconds[str(final.input.get("size"))] = float(took)
        return raise_for_outcome(final)


def _tell(stopped: BaseException | None, what: str) -> None:
    """Say in the error that ended a wait what became of the prediction, once that is known:
    "gave up after 10s ... (it was cancelled so it stops billing); raise ..."."""
    if isinstance(stopped, SeedreamError):
        head, sep, rest = stopped.message.partition("; ")
        stopped.message = f"{head} ({what}){sep}{rest}"
        stopped.args = (stopped.message,)


def plan_wait(
    prediction: str | Prediction,
    credentials: ReplicateCredentials | str | None,
    timeout_seconds: float | None,
) -> WaitPlan:
    prediction_id = prediction if isinstance(prediction, str) else prediction.id
    settings = get_settings()
    timeout = timeout_seconds if timeout_seconds is not None else settings.timeout_seconds
    expected, elapsed, already = None, 0.0, None
    if not isinstance(prediction, str):
        expected = _recent_seconds.get(str(prediction.input.get("size")))
        elapsed = max(0.0, (protocol.utcnow() - created_at(prediction)).total_seconds())
        already = prediction if prediction.status.is_terminal else None
    schedule = protocol.PollSchedule(
        initial=settings.poll_initial_seconds, max_interval=settings.poll_max_seconds,
        expected_seconds=expected,
    )
    wait = protocol.wait(prediction_id, timeout_seconds=timeout, now=protocol.utcnow,
                         policy=retry_policy(), schedule=schedule, already_elapsed=elapsed)
    return WaitPlan(replicate_api(credentials), prediction_id, Progress(_log()), wait, already)


def raise_for_outcome(prediction: Prediction) -> Prediction:
    """Return a succeeded prediction; raise the typed error for any other terminal state."""
    status = prediction.status
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
