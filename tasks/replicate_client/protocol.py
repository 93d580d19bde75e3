"""How to create, await and cancel a prediction safely, written once for sync and async.

Each operation is a generator that yields what it needs done (`ApiRequest`, `Sleep`, `Update`)
and receives the answer (`ApiResponse`, or a transport exception thrown into it). The sync and
async drivers in `prefect_seedream.tasks.replicate_client.api` run the same generators, so retry
classification, backoff, reconciliation and polling exist in exactly one place and are unit-testable
without I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect_seedream.tasks.errors import (
    CreateOutcomeUnknown,
    PredictionTimedOut,
    RateLimited,
    ReplicateUnavailable,
    SeedreamError,
)
from prefect_seedream.tasks.replicate_client.prediction import Prediction
from prefect_seedream.tasks.replicate_client.request_builders import (
    TRANSIENT_STATUSES,
    ApiRequest,
    ApiResponse,
    RequestMatch,
    build_cancel,
    build_create,
    build_get,
    build_list,
    created_at,
    error_for,
    parse_page,
    parse_prediction,
    retry_after_seconds,
)


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Update:
    """A fresh snapshot of the prediction, for logging and persistence."""

    prediction: Prediction


@dataclass(frozen=True)
class Note:
    """Something worth a log line (a retry, a reconciliation)."""

    message: str


Op = ApiRequest | Sleep | Update | Note
Protocol = Generator[Op, Any, Any]


class SendFailed(Exception):
    """Thrown into a protocol when the request never got an answer.

    `maybe_sent` is False only when the connection was refused or never opened, i.e. the
    request provably did not reach Replicate.
    """

    def __init__(self, description: str, *, maybe_sent: bool) -> None:
        super().__init__(description)
        self.maybe_sent = maybe_sent


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for retries on create, poll and cancel."""

    max_create_attempts: int = 6
    max_rate_limit_wait: float = 60.0
    base_backoff: float = 0.5
    max_backoff: float = 10.0
    reconcile_attempts: int = 3
    reconcile_delay: float = 1.0
    clock_skew: float = 30.0
    not_found_grace: float = 30.0
    max_poll_errors: int = 20

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter for attempt 1, 2, ..."""
        raw = min(self.max_backoff, self.base_backoff * 2.0 ** max(0, attempt - 1))
        return raw * random.uniform(0.8, 1.2)


@dataclass
class PollSchedule:
    """Poll fast at first, then slower: 0.5 s, 0.75 s, ... up to `max_interval`.

    When the expected run time is known (from earlier predictions), polling stays sparse until
    shortly before it and dense around it, so completion is noticed within ~`near_interval`.
    """

    initial: float = 0.5
    factor: float = 1.5
    max_interval: float = 5.0
    near_interval: float = 0.75
    expected_seconds: float | None = None
    _current: float = field(default=0.0, init=False)

    def next_delay(self, elapsed: float) -> float:
        self._current = self.initial if not self._current else min(
            self.max_interval, self._current * self.factor
        )
        delay = self._current
        if self.expected_seconds:
            until = self.expected_seconds - elapsed
            if until > delay + self.near_interval:
                return max(delay, until - self.near_interval)
            if until > -2 * self.max_interval:
                return min(delay, self.near_interval)
        return delay


def create(
    model: str,
    input: dict[str, Any],
    *,
    now: Callable[[], datetime],
    policy: RetryPolicy,
    exclude_ids: frozenset[str] = frozenset(),
    webhook: str | None = None,
    webhook_events_filter: list[str] | None = None,
    wait_seconds: int | None = None,
    cancel_after_seconds: float | None = None,
) -> Protocol:
    """Create one prediction, paid for at most once.

    429 is retried after the wait Replicate asks for (capped). A connection that never opened is
    retried. Any other unanswered or 5xx create may have made a prediction, so it is looked up in
    the list of recent predictions (same model and input) and re-attached before trying again;
    after a retry, a late-appearing twin from the lost attempt is cancelled. Unknown means stop:
    when that list cannot be read, nothing is sent again (`CreateOutcomeUnknown`).
    """
    request = build_create(
        model, input, webhook=webhook, webhook_events_filter=webhook_events_filter,
        wait_seconds=wait_seconds, cancel_after_seconds=cancel_after_seconds,
    )
    match = RequestMatch.of(model, input)
    window_start: datetime | None = None
    attempt = 0
    while True:
        attempt += 1
        sent_at = now()
        try:
            response: ApiResponse = yield request
        except SendFailed as exc:
            if exc.maybe_sent:
                window_start = window_start or sent_at
                yield Note(f"create got no answer ({exc}); looking for what it may have made")
                found = yield from _find_lost(match, window_start, policy, exclude_ids)
                if found is not None:
                    yield Note(f"re-attached to prediction {found.id} made by the lost create")
                    return found
            if attempt >= policy.max_create_attempts:
                if window_start is not None:
                    raise CreateOutcomeUnknown(
                        f"create got no answer {attempt} times ({exc}) and no prediction was "
                        "found; check Replicate's dashboard before retrying"
                    ) from exc
                raise ReplicateUnavailable(f"could not reach Replicate: {exc}") from exc
            yield Sleep(policy.backoff(attempt))
            continue

        if response.ok:
            prediction = parse_prediction(response)
            if window_start is not None:
                yield from _cancel_twins(match, window_start, prediction.id, policy, exclude_ids)
            return prediction
        if response.status == 429:
            wait = retry_after_seconds(response)
            wait = policy.backoff(attempt) if wait is None else wait
            if attempt >= policy.max_create_attempts or wait > policy.max_rate_limit_wait:
                raise RateLimited(
                    f"Replicate kept rate-limiting creates after {attempt} attempts: "
                    f"{response.detail}; lower concurrency or raise the account's limit",
                    retry_after=wait,
                )
            yield Note(f"rate limited on create; retrying in {wait:.1f}s (attempt {attempt})")
            yield Sleep(wait)
            continue
        if response.status in TRANSIENT_STATUSES:
            window_start = window_start or sent_at
            found = yield from _find_lost(match, window_start, policy, exclude_ids)
            if found is not None:
                yield Note(f"create answered {response.status} but made {found.id}; re-attached")
                return found
            if attempt >= policy.max_create_attempts:
                raise error_for(response)
            yield Note(f"create answered {response.status}; nothing was made, retrying")
            yield Sleep(policy.backoff(attempt))
            continue
        raise error_for(response)


def _recent_matches(
    match: RequestMatch, since: datetime, policy: RetryPolicy, exclude_ids: frozenset[str],
) -> Protocol:
    """Predictions created since `since` (minus clock skew) with this model and input; None
    when the list could not be read (which is not the same as an empty list)."""
    created_after = since - timedelta(seconds=policy.clock_skew)
    request = build_list(created_after=created_after)
    matches: list[Prediction] = []
    for _ in range(20):  # at most 20 pages of 100
        try:
            response: ApiResponse = yield request
        except SendFailed:
            return None
        if not response.ok:
            return None
        items, cursor = parse_page(response)
        matches += [
            p for p in items
            if p.id not in exclude_ids and match.matches(p)
            and created_at(p) >= created_after
        ]
        if not cursor or (items and created_at(items[-1]) < created_after):
            break
        request = build_list(cursor=cursor)
    return sorted(matches, key=created_at)


def _find_lost(
    match: RequestMatch, since: datetime, policy: RetryPolicy, exclude_ids: frozenset[str],
) -> Protocol:
    """The oldest prediction a lost create made, or None once the list was read and showed none.

    Raises:
        CreateOutcomeUnknown: the list could not be read on any attempt: whether the create made
            a prediction is unknown, so nothing may be sent again.
    """
    readable = False
    for attempt in range(policy.reconcile_attempts):
        matches = yield from _recent_matches(match, since, policy, exclude_ids)
        if matches:
            return matches[0]
        readable = readable or matches is not None
        if attempt + 1 < policy.reconcile_attempts:
            pause = policy.reconcile_delay if matches is not None else policy.backoff(attempt + 1)
            yield Sleep(pause)
    if not readable:
        raise CreateOutcomeUnknown(
            f"a create for {match.model} got no clear answer and Replicate's list of recent "
            f"predictions could not be read ({policy.reconcile_attempts} tries), so whether it "
            "made a prediction is unknown; nothing was sent again. Retrying or re-running "
            "looks for it first; or check Replicate's dashboard."
        )
    return None


def find(match: RequestMatch, *, since: datetime, policy: RetryPolicy) -> Protocol:
    """The prediction a create sent at `since` made, if any (oldest match), else None."""
    found: Prediction | None = yield from _find_lost(match, since, policy, frozenset())
    return found


def abandon(match: RequestMatch, *, since: datetime, policy: RetryPolicy) -> Protocol:
    """Cancel whatever an interrupted create sent at `since` made; returns the ids cancelled."""
    matches = yield from _recent_matches(match, since, policy, frozenset())
    cancelled = []
    for made in matches or []:
        if not made.status.is_terminal:
            yield Note(f"cancelling {made.id}, made by a create that was interrupted")
            yield from cancel(made.id, policy=policy)
            cancelled.append(made.id)
    return cancelled


def _cancel_twins(
    match: RequestMatch, since: datetime, keep_id: str, policy: RetryPolicy,
    exclude_ids: frozenset[str],
) -> Protocol:
    """After a retried create, cancel any prediction the lost attempt made after all."""
    matches = yield from _recent_matches(match, since, policy, exclude_ids | {keep_id})
    for twin in matches or []:
        if not twin.status.is_terminal:
            yield Note(f"cancelling {twin.id}, made by a create whose answer was lost")
            yield from cancel(twin.id, policy=policy)


def _one_call(request: ApiRequest, prediction_id: str, policy: RetryPolicy,
              *, missing_ok: bool) -> Protocol:
    """One request about a prediction; transient failures are retried twice more."""
    for attempt in range(1, 4):
        try:
            response: ApiResponse = yield request
        except SendFailed as exc:
            if attempt == 3:
                raise ReplicateUnavailable(
                    f"could not reach Replicate: {exc}", prediction_id=prediction_id
                ) from exc
            yield Sleep(policy.backoff(attempt))
            continue
        if response.ok:
            return parse_prediction(response)
        if response.status == 404 and missing_ok:
            return None
        if response.status not in TRANSIENT_STATUSES | {429} or attempt == 3:
            raise error_for(response, prediction_id=prediction_id)
        yield Sleep(retry_after_seconds(response) or policy.backoff(attempt))
    raise AssertionError("unreachable")


def get(prediction_id: str, *, policy: RetryPolicy) -> Protocol:
    """One read of a prediction; transient errors are retried a few times."""
    found: Prediction = yield from _one_call(build_get(prediction_id), prediction_id, policy,
                                             missing_ok=False)
    return found


def wait(
    prediction_id: str,
    *,
    timeout_seconds: float,
    now: Callable[[], datetime],
    policy: RetryPolicy,
    schedule: PollSchedule,
    already_elapsed: float = 0.0,
) -> Protocol:
    """Poll until the prediction is terminal; raise `PredictionTimedOut` at the deadline.

    `already_elapsed` is how long the prediction has existed before this wait began (e.g. a
    sync-mode create), so the schedule's expected run time lines up with the prediction's.

    A 404 in the first seconds, a 5xx, a 429 or a dropped connection does not fail the wait.
    The caller cancels the prediction when this raises or is cancelled, and adds to the error
    what became of it (this cannot know whether the cancel will work).
    """
    started = now()
    deadline = started + timedelta(seconds=timeout_seconds)
    errors = 0
    last: Prediction | None = None
    while True:
        delay: float | None = None
        try:
            response: ApiResponse = yield build_get(prediction_id)
        except SendFailed as exc:
            errors += 1
            if errors > policy.max_poll_errors:
                raise ReplicateUnavailable(f"lost contact with Replicate: {exc}",
                                           prediction_id=prediction_id) from exc
            delay = policy.backoff(errors)
        else:
            elapsed = (now() - started).total_seconds()
            if response.ok:
                errors = 0
                last = parse_prediction(response)
                yield Update(last)
                if last.status.is_terminal:
                    return last
            elif response.status == 404 and last is None and elapsed < policy.not_found_grace:
                delay = 1.0
            elif response.status in TRANSIENT_STATUSES | {429}:
                errors += 1
                if errors > policy.max_poll_errors:
                    raise error_for(response, prediction_id=prediction_id)
                yield Note(f"poll answered {response.status}; still waiting")
                delay = retry_after_seconds(response) or policy.backoff(errors)
            else:
                raise error_for(response, prediction_id=prediction_id)
        remaining = (deadline - now()).total_seconds()
        if remaining <= 0:
            status = last.status.value if last else "unknown"
            raise PredictionTimedOut(
                f"gave up after {timeout_seconds:g}s with the prediction still {status}; "
                "raise timeout_seconds for long runs",
                prediction_id=prediction_id,
            )
        if delay is None:
            delay = schedule.next_delay((now() - started).total_seconds() + already_elapsed)
        yield Sleep(min(delay, remaining))


def cancel(prediction_id: str, *, policy: RetryPolicy) -> Protocol:
    """Cancel idempotently: a terminal or unknown prediction is left as it is."""
    result: Prediction | None = yield from _one_call(build_cancel(prediction_id), prediction_id,
                                                     policy, missing_ok=True)
    return result


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


__all__ = [
    "Note", "PollSchedule", "RetryPolicy", "SeedreamError", "SendFailed", "Sleep", "Update",
    "abandon", "cancel", "create", "find", "get", "utcnow", "wait",
]
