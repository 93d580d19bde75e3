"""Share Replicate's create budget between every worker: a Prefect global rate limit.

Replicate allows 600 prediction creates a minute per account by default. Many flow runs on many
workers each retrying 429s on their own still stampede it; a Prefect global concurrency limit with
a slot decay is one budget for all of them. It is used only when `SEEDREAM_RATE_LIMIT_NAME` is set,
and then strictly: a limit that does not exist is an error, never a silent unthrottled create.

Create it once per Prefect server (or let `prefect deploy` do it, see prefect.yaml):

    prefect gcl create replicate-create --limit 100 --slot-decay-per-second 10

The decay is the sustained rate (10 slots a second: 600 a minute); the limit is the burst the
budget lets through at once, 10 s of creates, the size of the bucket the sandbox models for
Replicate ("short bursts allowed"). A limit of 600 would let 600 creates out at once, and all
but Replicate's burst would come back 429 (figure 6 in BENCHMARKS.md: 1,202 429s in a minute).

Example:
    ```python
    from prefect_seedream.tasks.concurrency import acquire_create_slot

    acquire_create_slot()  # blocks until the shared budget allows one more create
    ```
"""

from __future__ import annotations

import itertools
import threading
import time

from prefect_seedream.tasks.errors import SeedreamError
from prefect_seedream.tasks.replicate_client.protocol import RetryPolicy
from prefect_seedream.tasks.seedream_settings import get_settings

#: Replicate's default create budget and the matching decay (slots freed per second).
DEFAULT_LIMIT_NAME = "replicate-create"
DEFAULT_CREATES_PER_MINUTE = 600


class RateLimitUnavailable(SeedreamError):
    """The configured global rate limit is missing (or unusable); nothing was created."""


#: Seconds of creates the budget lets through at once (its limit, over its decay per second).
BURST_SECONDS = 10


def limit_shape(creates_per_minute: int = DEFAULT_CREATES_PER_MINUTE) -> tuple[int, float]:
    """The global rate limit's `limit` (the burst) and `slot_decay_per_second` (the rate)."""
    decay = creates_per_minute / 60
    return max(1, round(decay * BURST_SECONDS)), decay


def create_command(name: str = DEFAULT_LIMIT_NAME,
                   creates_per_minute: int = DEFAULT_CREATES_PER_MINUTE) -> str:
    """The one-line Prefect CLI command that creates the limit.

    Example:
        ```python
        from prefect_seedream.tasks.concurrency import create_command

        assert create_command() == (
            "prefect gcl create replicate-create --limit 100 --slot-decay-per-second 10"
        )
        ```
    """
    limit, decay = limit_shape(creates_per_minute)
    return f"prefect gcl create {name} --limit {limit} --slot-decay-per-second {decay:g}"


def configured_limit() -> str | None:
    """The limit's name from `SEEDREAM_RATE_LIMIT_NAME`, or None when rate limiting is off."""
    name = (get_settings().rate_limit_name or "").strip()
    return name or None


def _unavailable(name: str, exc: Exception) -> RateLimitUnavailable:
    return RateLimitUnavailable(
        f"could not take a slot of the global rate limit {name!r} ({exc}); create it with "
        f"`{create_command(name)}` or unset SEEDREAM_RATE_LIMIT_NAME. Nothing was sent to Replicate"
    )


#: Most slots one request takes for the creates waiting in a process (and never more than
#: the limit frees in a second, so no create waits longer than that for its neighbours').
MAX_SLOTS_PER_REQUEST = 10
#: Slots taken for creates that then stopped waiting are given out only this long after.
_SLOT_FRESH_SECONDS = 1.0


class _Slots:
    """The create slots of one limit in this process, taken from the Prefect server for every
    create waiting at that moment in one request, and handed out one per create.

    Prefect's `rate_limit` sends one increment request per call, one at a time per process;
    a worker with a few hundred predictions in flight then waits on those requests (and on a
    busy SQLite server's 503 back-offs) rather than on the budget: one worker reached ~300 of
    600 creates/min (BENCHMARKS.md figure 6). Here one thread at a time asks for as many slots
    as there are creates waiting (up to `MAX_SLOTS_PER_REQUEST`, and up to what the limit frees
    per second); the budget is exactly as strict, since every slot taken is one create sent.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._waiting = 0
        self._ready: list[float] = []  # when each slot taken and not yet handed out was taken
        self._asking = False
        self._per_request: int | None = None

    def _most_per_request(self) -> int:
        if self._per_request is None:
            from prefect.client.orchestration import get_client

            try:
                with get_client(sync_client=True) as client:
                    limit = client.read_global_concurrency_limit_by_name(self.name)
                decay = float(limit.slot_decay_per_second or 0)
                self._per_request = max(1, min(MAX_SLOTS_PER_REQUEST, int(decay), limit.limit))
            except Exception:  # the acquisition below reports a missing limit properly
                self._per_request = 1
        return self._per_request

    def take(self) -> None:
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    now = time.monotonic()
                    self._ready = [t for t in self._ready if now - t < _SLOT_FRESH_SECONDS]
                    if self._ready:
                        self._ready.pop()
                        return
                    if not self._asking:
                        self._asking = True
                        break
                    self._cond.wait(timeout=1.0)
            finally:
                self._waiting -= 1
        try:
            wanted = min(self._waiting + 1, self._most_per_request())
            _rate_limit(self.name, wanted)
        except BaseException:
            with self._cond:
                self._asking = False
                self._cond.notify()
            raise
        with self._cond:
            taken = time.monotonic()
            self._ready += [taken] * (wanted - 1)  # one is this create's own
            self._asking = False
            self._cond.notify(wanted)


#: How long a create keeps asking a Prefect server that answers 5xx (or not at all) for its
#: slot before it gives up; nothing has been sent to Replicate while it asks.
SERVER_TROUBLE_SECONDS = 120.0


def _transient(exc: Exception) -> bool:
    """Whether a failed acquisition is the Prefect server's trouble (5xx, 429, no answer), to
    be asked again, rather than a limit that is missing or refused (4xx): an error at once."""
    import httpx

    cause = exc.__cause__
    if isinstance(cause, httpx.HTTPStatusError):
        return cause.response.status_code >= 500 or cause.response.status_code == 429
    return isinstance(cause, (httpx.TransportError, OSError, TimeoutError))


def _pause_or_raise(name: str, exc: Exception, attempt: int, deadline: float) -> float:
    """The pause before asking again after a failed acquisition, or `RateLimitUnavailable`."""
    pause = RetryPolicy().backoff(attempt)
    if not _transient(exc) or time.monotonic() + pause > deadline:
        raise _unavailable(name, exc) from exc
    return pause


def _rate_limit(name: str, occupy: int) -> None:
    """Take `occupy` slots. A busy Prefect server answering 503 after its client's own
    retries (two workers on a SQLite server in figure 6 met one) is asked again with backoff
    for up to `SERVER_TROUBLE_SECONDS`, so one item does not fail for it."""
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import rate_limit

    deadline = time.monotonic() + SERVER_TROUBLE_SECONDS
    for attempt in itertools.count(1):
        try:
            rate_limit(name, occupy=occupy, strict=True)
            return
        except ConcurrencySlotAcquisitionError as exc:
            time.sleep(_pause_or_raise(name, exc, attempt, deadline))


_slots: dict[str, _Slots] = {}
_slots_lock = threading.Lock()


def acquire_create_slot(name: str | None = None) -> None:
    """Block until the shared create budget has room; no-op when no limit is configured.

    The creates waiting in this process at once share one request for their slots (`_Slots`).

    Raises:
        RateLimitUnavailable: The limit does not exist or has no slot decay.
    """
    name = name or configured_limit()
    if not name:
        return
    with _slots_lock:
        slots = _slots.setdefault(name, _Slots(name))
    slots.take()


async def aacquire_create_slot(name: str | None = None) -> None:
    """Async `acquire_create_slot`."""
    name = name or configured_limit()
    if not name:
        return
    import anyio
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, rate_limit

    deadline = time.monotonic() + SERVER_TROUBLE_SECONDS
    for attempt in itertools.count(1):
        try:
            await rate_limit(name, occupy=1, strict=True)
            return
        except ConcurrencySlotAcquisitionError as exc:
            await anyio.sleep(_pause_or_raise(name, exc, attempt, deadline))


__all__ = [
    "DEFAULT_CREATES_PER_MINUTE",
    "DEFAULT_LIMIT_NAME",
    "RateLimitUnavailable",
    "aacquire_create_slot",
    "acquire_create_slot",
    "configured_limit",
    "create_command",
    "limit_shape",
]
