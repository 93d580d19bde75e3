"""Typed errors: one base class, one leaf per thing that happened.

Every error carries the prediction id when one exists, so a person (or a retry policy) can find
the prediction on Replicate. Messages say what to do next and never contain a token.
"""

from __future__ import annotations

from typing import Any


class SeedreamError(Exception):
    """Base class for every error raised by prefect-seedream."""

    #: Whether retrying the same request can help (used by `retry_condition_fn`).
    retryable: bool = False

    def __init__(self, message: str, *, prediction_id: str | None = None) -> None:
        self.prediction_id = prediction_id
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        if self.prediction_id:
            return f"{self.message} (prediction {self.prediction_id})"
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Prefect pickles exceptions into task states; keep the keyword argument.
        return (_rebuild, (type(self), self.message, self.prediction_id, self.__dict__))


def _rebuild(
    cls: type[SeedreamError], message: str, prediction_id: str | None, state: dict[str, object]
) -> SeedreamError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    err.message, err.prediction_id = message, prediction_id
    return err


class InvalidInput(SeedreamError):
    """The request was refused before anything was paid for (locally or by Replicate's 422)."""


class AuthenticationFailed(SeedreamError):
    """Replicate refused the token (401/403). Check the ReplicateCredentials block."""


class RateLimited(SeedreamError):
    """Replicate kept answering 429 after every retry the policy allowed."""

    retryable = True

    def __init__(
        self, message: str, *, retry_after: float | None = None, prediction_id: str | None = None
    ) -> None:
        super().__init__(message, prediction_id=prediction_id)
        self.retry_after = retry_after


class ReplicateUnavailable(SeedreamError):
    """Replicate answered 5xx or could not be reached, and nothing was created."""

    retryable = True


class CreateOutcomeUnknown(SeedreamError):
    """A create's response was lost and the prediction could not be found again.

    Not retried automatically: a retry could pay twice. Check Replicate's dashboard.
    """


class PredictionFailed(SeedreamError):
    """The model ran and failed; `error` is Replicate's message."""

    def __init__(self, message: str, *, error: str | None, prediction_id: str | None) -> None:
        super().__init__(message, prediction_id=prediction_id)
        self.error = error

    @property
    def interrupted(self) -> bool:
        """Replicate's transient 'Prediction interrupted; please retry (code: PA)'."""
        return bool(self.error) and "code: PA" in (self.error or "")

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.interrupted


class PredictionCanceled(SeedreamError):
    """The prediction was canceled while it ran (billed by Replicate)."""


class PredictionAborted(SeedreamError):
    """The prediction's deadline passed before it started (not billed)."""


class PredictionTimedOut(SeedreamError):
    """We stopped waiting; the prediction was cancelled so it does not keep billing."""


class OutputExpired(SeedreamError):
    """Replicate removed the outputs (about an hour after the prediction) before storing."""


class StorageFailed(SeedreamError):
    """An output could not be stored in S3 after retries; the prediction is not re-generated."""

    retryable = True

    def __init__(
        self, message: str, *, prediction_id: str | None, index: int | None = None
    ) -> None:
        super().__init__(message, prediction_id=prediction_id)
        self.index = index


class OutputInvalid(SeedreamError):
    """An output is not a decodable image, or was truncated on every download; its bytes are
    kept under `{prefix}/_quarantine/{prediction_id}/` (the message names the object)."""


class BudgetExceeded(SeedreamError):
    """A create would cross a spend limit (`SEEDREAM_SPEND_LIMIT_*`); nothing was sent.

    `limit` names the setting, `period` the day or month (`day-2026-12-02`), `spent` and
    `reserved` what that period already holds and `asked` this create's worst case, all in the
    limit's unit (dollars or images).
    """

    def __init__(self, message: str, *, limit: str = "", period: str = "",
                 spent: float = 0.0, reserved: float = 0.0, asked: float = 0.0,
                 prediction_id: str | None = None) -> None:
        super().__init__(message, prediction_id=prediction_id)
        self.limit, self.period = limit, period
        self.spent, self.reserved, self.asked = spent, reserved, asked


def is_worth_retrying(exc: BaseException) -> bool:
    """Whether retrying can help: rate limits, outages, storage hiccups and interrupted
    predictions yes; invalid input, a refused token or a content-policy failure never."""
    if isinstance(exc, SeedreamError):
        return bool(exc.retryable)
    import httpx

    return isinstance(exc, (httpx.TransportError, ConnectionError))


def retry_condition(task: object, task_run: object, state: Any) -> bool:
    """A ready `retry_condition_fn` for Prefect tasks that call Seedream.

    Example:
        ```python
        from prefect import task
        from prefect_seedream.tasks.errors import retry_condition

        @task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_condition)
        def make_hero_image(prompt: str) -> None: ...
        ```
    """
    try:
        state.result()
    except BaseException as exc:  # the state's exception, re-raised by result()
        return is_worth_retrying(exc)
    return False


__all__ = [
    "AuthenticationFailed",
    "BudgetExceeded",
    "CreateOutcomeUnknown",
    "InvalidInput",
    "OutputExpired",
    "OutputInvalid",
    "PredictionAborted",
    "PredictionCanceled",
    "PredictionFailed",
    "PredictionTimedOut",
    "RateLimited",
    "ReplicateUnavailable",
    "SeedreamError",
    "StorageFailed",
    "is_worth_retrying",
    "retry_condition",
]
