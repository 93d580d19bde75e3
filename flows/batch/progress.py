"""Progress while a batch runs: count finished items, and tell Prefect, the log and listeners.

Progress goes to a Prefect progress artifact (updated at most every ~2 % or 2 seconds, so a
1,000-item batch makes tens of API calls for it, not thousands), to the flow log at every 10 %,
and to in-process listeners such as the CLI's progress bar (events `plan`, `item`, `done`).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

Listener = Callable[[dict[str, Any]], None]
_listeners: list[Listener] = []
_listeners_lock = threading.Lock()


def add_listener(listener: Listener) -> Callable[[], None]:
    """Receive batch events in this process (`plan`, `item`, `done`); returns an unsubscribe.

    Used by the CLI's progress bar; a listener must be quick and must not raise.
    """
    with _listeners_lock:
        _listeners.append(listener)

    def remove() -> None:
        with _listeners_lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return remove


def notify(event: dict[str, Any]) -> None:
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        with contextlib.suppress(Exception):  # a broken progress bar never fails a batch
            listener(event)


class Progress:
    """Counts finished items; throttles the artifact, logs every 10 %, tells listeners."""

    def __init__(self, total: int, log: Any, *, key: str = "seedream-batch-progress") -> None:
        self.total, self.log, self.key = total, log, key
        self.finished = 0
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._artifact_id: Any = None
        self._last_push = 0.0
        self._pushed = 0
        self._next_log = 10
        self._failures_logged = 0
        self._pending: tuple[float, int, dict[str, int]] | None = None
        self._idle = threading.Event()  # set while no artifact update is on its way
        self._idle.set()

    def start(self) -> None:
        from prefect.artifacts import create_progress_artifact

        try:
            self._artifact_id = create_progress_artifact(
                0.0, key=self.key, description=f"Seedream batch: 0 of {self.total} items",
                _sync=True,  # type: ignore[call-arg]
            )
        except Exception as exc:  # outside a flow run, or the API is unreachable
            self.log.debug("no progress artifact: %s", type(exc).__name__)

    def item_done(self, outcome: Any) -> None:
        with self._lock:
            self.finished += 1
            self.counts[outcome.status] += 1
            finished, counts = self.finished, dict(self.counts)
            percent = 100.0 * finished / max(self.total, 1)
            push = (finished - self._pushed >= max(1, self.total // 50)
                    or time.monotonic() - self._last_push >= 2.0 or finished == self.total)
            if push:
                self._pushed, self._last_push = finished, time.monotonic()
            log_now = percent >= self._next_log
            if log_now:
                while self._next_log <= percent:
                    self._next_log += 10
            log_failure = outcome.status == "failed" and self._failures_logged < 20
            if log_failure:
                self._failures_logged += 1
        if log_failure:
            self.log.warning("Item %s (line %d) failed: %s: %s%s", outcome.id, outcome.line,
                             outcome.error_type, outcome.error,
                             "" if self._failures_logged < 20 else
                             " (further failures are only in the final table)")
        if log_now:
            self.log.info("Batch progress: %d of %d items (%.0f%%): %s", finished, self.total,
                          percent, ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        if push:
            self._push_later(percent, finished, counts)
        notify({"event": "item", "finished": finished, "total": self.total, "counts": counts,
                "item": outcome.id, "status": outcome.status})

    def _push_later(self, percent: float, finished: int, counts: dict[str, int]) -> None:
        """Update the artifact from a helper thread, never from the caller's: the batch's
        driver hands out the next item meanwhile. Updates that pile up while one is on its way
        collapse into the newest."""
        with self._lock:
            self._pending = (percent, finished, counts)
            if not self._idle.is_set():
                return
            self._idle.clear()
        # In a copy of this context: the run's Prefect client settings go with it.
        threading.Thread(target=contextvars.copy_context().run, args=(self._drain,),
                         name="batch-progress", daemon=True).start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                job, self._pending = self._pending, None
                if job is None:
                    self._idle.set()
                    return
            self._push(*job)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until the artifact shows the last update (the batch's end)."""
        self._idle.wait(timeout)

    def _push(self, percent: float, finished: int, counts: dict[str, int]) -> None:
        if self._artifact_id is None:
            return
        from prefect.artifacts import update_progress_artifact

        description = f"Seedream batch: {finished} of {self.total} items; " + ", ".join(
            f"{n} {s}" for s, n in sorted(counts.items()))
        try:
            update_progress_artifact(self._artifact_id, percent, description=description,
                                     _sync=True)  # type: ignore[call-arg]
        except Exception as exc:
            self.log.debug("progress artifact update failed: %s", type(exc).__name__)


__all__ = ["Progress", "add_listener", "notify"]
