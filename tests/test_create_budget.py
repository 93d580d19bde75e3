"""The shared create budget (`SEEDREAM_RATE_LIMIT_NAME`, a Prefect global rate limit) on a real
Prefect server: the creates waiting in one process share their slot requests, and still never
get more creates through than the limit allows."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from prefect_seedream.tasks.concurrency import RateLimitUnavailable, acquire_create_slot

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _limit(limit: int, decay: float) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"creates-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
            name=name, limit=limit, slot_decay_per_second=decay))
    return name


def _increments(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the slots each request to the Prefect server asked for (the calls still go)."""
    from prefect.concurrency import sync

    asked: list[int] = []
    real = sync.rate_limit

    def counted(names: Any, occupy: int = 1, **kwargs: Any) -> None:
        asked.append(occupy)
        real(names, occupy=occupy, **kwargs)

    monkeypatch.setattr(sync, "rate_limit", counted)
    return asked


def test_creates_waiting_together_share_requests_and_never_pass_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """24 creates at once on a limit of 6 that frees 4 slots a second: the first 6 go at once,
    the rest no faster than the decay, and the server sees far fewer than 24 requests."""
    name = _limit(6, 4.0)
    asked = _increments(monkeypatch)
    granted: list[float] = []
    lock = threading.Lock()

    def create() -> None:
        acquire_create_slot(name)
        with lock:
            granted.append(time.monotonic())

    threads = [threading.Thread(target=create) for _ in range(24)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(granted) == 24
    assert sum(asked) == 24  # one slot per create: nothing taken twice, nothing left over
    assert len(asked) < 24
    assert max(asked) <= 4  # never more in one request than the limit frees in a second
    # Budget: by the k-th create at most 6 + 4/s x elapsed slots can have been taken.
    for k, at in enumerate(sorted(granted), start=1):
        assert k <= 6 + 4.0 * (at - start) + 1e-6, (k, at - start)


def test_a_missing_limit_is_refused_for_every_waiting_create() -> None:
    errors: list[BaseException] = []

    def create() -> None:
        try:
            acquire_create_slot(f"no-such-limit-{uuid.uuid4().hex[:6]}-shared")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(errors) == 5
    assert all(isinstance(e, RateLimitUnavailable) and "prefect gcl create" in str(e)
               for e in errors)



def _server_answers(monkeypatch: pytest.MonkeyPatch, statuses: list[int]) -> list[int]:
    """The Prefect server answers the next slot requests with `statuses` (after its client's
    own retries), then as it really does; returns the statuses the creates met."""
    import httpx
    from prefect.concurrency import sync
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

    met: list[int] = []
    real = sync.rate_limit

    def troubled(names: Any, occupy: int = 1, **kwargs: Any) -> None:
        if statuses:
            status = statuses.pop(0)
            met.append(status)
            request = httpx.Request("POST", "http://prefect/api/v2/concurrency_limits/increment")
            error = httpx.HTTPStatusError(f"{status}", request=request,
                                          response=httpx.Response(status, request=request))
            raise ConcurrencySlotAcquisitionError(f"Unable to acquire: {status}") from error
        real(names, occupy=occupy, **kwargs)

    monkeypatch.setattr(sync, "rate_limit", troubled)
    return met


def test_a_busy_prefect_server_delays_the_create_instead_of_failing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers on one SQLite Prefect server (figure 6) met a 503 on a slot request after
    the client's own retries, and the item failed: it is asked again, and the create goes."""
    name = _limit(5, 5.0)
    met = _server_answers(monkeypatch, [503, 503])

    acquire_create_slot(name)

    assert met == [503, 503]


def test_a_refused_slot_request_is_an_error_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4xx is not the server's trouble: it is not asked again."""
    name = _limit(5, 5.0)
    met = _server_answers(monkeypatch, [403, 403])

    with pytest.raises(RateLimitUnavailable, match="prefect gcl create"):
        acquire_create_slot(name)

    assert met == [403]  # asked once
