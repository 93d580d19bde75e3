"""The worker threads the async tasks and flows of one event loop use, and how many at once.

S3 transfers, ledger writes and input checks are blocking work, so the async twins run them in
worker threads, never on the loop. Each of those threads holds the GIL while it runs Python
(botocore's signing, hashing, Pydantic, Prefect's own bookkeeping): with 20 generations gathered
on one loop, anyio's default of 40 threads let so many run at once that the loop waited up to
150-350 ms for the GIL between two steps (BENCHMARKS.md figure (b)). Every event loop gets its
own `anyio.CapacityLimiter` of `SEEDREAM_ASYNC_WORKER_THREADS` (4) for this work; on the
same machine that cut the loop's p99 wait from ~100 ms to ~20 ms (its longest: 30-130 ms
against 140-230 ms) and the generations took no longer, since the work is bound by the
cores, not by the number of threads.

A wait on another run (a ledger claim held elsewhere) is not put in these threads: it sleeps
for seconds, and four of them would hold back the very work they wait for.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar

import anyio
from anyio import to_thread

from prefect_seedream.tasks.seedream_settings import get_settings

T = TypeVar("T")

_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary())


def loop_limiter() -> anyio.CapacityLimiter:
    """The running loop's limiter for blocking work (created at its first use)."""
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(get_settings().async_worker_threads)
    return limiter


async def in_thread(fn: Callable[..., T], *args: object, abandon_on_cancel: bool = False) -> T:
    """Run `fn(*args)` in a worker thread of the running loop's bounded share.

    Example:
        ```python
        import asyncio

        from prefect_seedream.tasks.loop_threads import in_thread

        print(asyncio.run(in_thread(sum, [1, 2, 3])))
        ```
    """
    return await to_thread.run_sync(fn, *args, abandon_on_cancel=abandon_on_cancel,
                                    limiter=loop_limiter())
