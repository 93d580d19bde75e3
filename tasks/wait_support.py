"""What the sync and async wait tasks share: the wait plan (poll, cancel on the way out, settle
the ledger and the spend limit), progress logging and the mapping of outcomes to typed errors.
Blocking I/O only: the async tasks run these in a worker thread."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prefect_seedream.tasks import prediction_ledger as ledger
from prefect_seedream.tasks import spend_limit
from prefect_seedream.tasks.connections import _log, replicate_api
from prefect_seedream.tasks.errors import (
    PredictionAborted,
    PredictionCanceled,
    PredictionFailed,
    SeedreamError,
)
from prefect_seedream.tasks.prediction_support import retry_policy
from prefect_seedream.tasks.replicate_client import protocol
from prefect_seedream.tasks.replicate_client.api import ReplicateApi
from prefect_seedream.tasks.replicate_client.prediction import Prediction, PredictionStatus
from prefect_seedream.tasks.replicate_client.request_builders import created_at
from prefect_seedream.tasks.seedream_settings import get_settings

if TYPE_CHECKING:
    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials

# Observed run time of recent predictions per size, so polling stays sparse until they are due.
_recent_seconds: dict[str, float] = {}


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



def prediction_ended(prediction_id: str, result: Prediction | None,
                     status: PredictionStatus) -> None:
    """What every path that sees a prediction end does (waited for, cancelled by us, cancelled
    by `cancel_prediction`): close its ledger record and settle its spend reservation."""
    ledger.settle(prediction_id, status)
    spend_limit.settle_prediction(prediction_id, result, status)

@dataclass
class WaitPlan:
    """A wait: the API, the polling protocol and what to do on the way out."""

    api: ReplicateApi
    prediction_id: str
    progress: Progress
    wait: protocol.Protocol
    already: Prediction | None = None  # handed over already finished: nothing to poll
    deadline: str | None = None  # the prediction's server-side Cancel-After deadline, if known

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
        prediction_ended(self.prediction_id, result, status)
        stopped_now = status in (PredictionStatus.CANCELED, PredictionStatus.ABORTED)
        _tell(stopped, "it was cancelled so it stops billing" if stopped_now
              else f"it had already ended: {status.value}")

    def cancel_failed(self, exc: BaseException, stopped: BaseException | None = None) -> None:
        self.progress.log.error(
            "Could not cancel prediction %s: %s; its Cancel-After deadline still applies",
            self.prediction_id, exc,
        )
        _tell(stopped, f"cancel failed: {exc}; {_deadline_note(self.deadline)}")

    def finished(self, final: Prediction) -> Prediction:
        prediction_ended(self.prediction_id, final, final.status)
        took = final.metrics.get("total_time") or final.metrics.get("predict_time")
        if final.status is PredictionStatus.SUCCEEDED and isinstance(took, (int, float)):
            _recent_seconds[str(final.input.get("size"))] = float(took)
        return raise_for_outcome(final)


def _deadline_note(deadline: str | None) -> str:
    """When the server-side deadline ends a prediction we could not cancel, as HH:MM:SS UTC."""
    try:
        at = datetime.fromisoformat(str(deadline).replace("Z", "+00:00"))
    except ValueError:
        return "its server-side Cancel-After deadline still ends it"
    return f"the server-side Cancel-After deadline ends it at {at:%H:%M:%S} UTC"


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
    deadline = None if isinstance(prediction, str) else prediction.deadline
    return WaitPlan(replicate_api(credentials), prediction_id, Progress(_log()), wait, already,
                    deadline)


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
