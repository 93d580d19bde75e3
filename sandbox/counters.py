"""Thread-safe request and event counters, global and per prediction."""

from __future__ import annotations

import threading
from typing import Any

GLOBAL_KEYS = (
    "creates", "gets", "cancels", "lists", "downloads", "download_bytes", "accounts",
    "models",
    "webhook_deliveries", "webhook_failures", "webhook_given_up", "rate_limited",
    "faults_injected", "dropped_responses", "unauthorized",
)
PER_PREDICTION_KEYS = (
    "gets", "cancels", "downloads", "download_bytes", "webhook_deliveries", "webhook_failures",
)


class Counters:
    """Counts what the sandbox served, for tests and benchmarks to read.

    `creates`, `gets`, `cancels`, `lists`, `downloads` and `accounts` count answered calls
    (2xx, or a create whose response was dropped on purpose); `rate_limited` counts every
    429 sent; `faults_injected` counts every injected fault of any kind; `requests` counts
    every authenticated call per route, whatever its answer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._global: dict[str, int] = {}
        self._requests: dict[str, int] = {}
        self._per: dict[str, dict[str, int]] = {}
        self.epoch = 0
        self.reset()

    def reset(self) -> None:
        """Set every counter back to zero and forget every prediction. What was started before
        (a download still being sent) and is counted with its `epoch` after is not counted."""
        with self._lock:
            self.epoch += 1
            self._global = dict.fromkeys(GLOBAL_KEYS, 0)
            self._requests = {}
            self._per = {}

    def add(self, key: str, amount: int = 1, prediction_id: str | None = None,
            epoch: int | None = None) -> None:
        """Add `amount` to a global counter and, with `prediction_id`, to that prediction's.

        Args:
            key: Counter name.
            amount: How much to add.
            prediction_id: The prediction the event belongs to, if any.
            epoch: The `epoch` the event started in; dropped if the counters were reset since.
        """
        with self._lock:
            if epoch is not None and epoch != self.epoch:
                return
            self._global[key] = self._global.get(key, 0) + amount
            if prediction_id is not None and key in PER_PREDICTION_KEYS:
                per = self._per.setdefault(prediction_id, dict.fromkeys(PER_PREDICTION_KEYS, 0))
                per[key] += amount

    def track(self, prediction_id: str) -> None:
        """Start a zeroed per-prediction entry (called when a prediction is created)."""
        with self._lock:
            self._per.setdefault(prediction_id, dict.fromkeys(PER_PREDICTION_KEYS, 0))

    def request(self, route: str) -> None:
        """Count one authenticated call of `route`, whatever its answer."""
        with self._lock:
            self._requests[route] = self._requests.get(route, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of every counter, safe to keep and compare."""
        with self._lock:
            result: dict[str, Any] = dict(self._global)
            result["requests"] = dict(self._requests)
            result["per_prediction"] = {pid: dict(c) for pid, c in self._per.items()}
            return result
