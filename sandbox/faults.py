"""Faults on demand: throttling, server errors, lost responses, failed runs, outputs off the
size table, corrupt files, slow files.

`Faults` is the public switchboard (`prefect_seedream.sandbox.faults`); `Faults.update` applies
an admin body, all or nothing (the rules are in `fault_settings`); the `take_*` methods are what
the request handlers call to learn whether the current call must misbehave. All of it is
thread-safe.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prefect_seedream.sandbox.fault_settings import (
    ADMIN_ACTIONS,
    MAX_DRIFT,
    ROUTES,
    FaultSettingsError,
    cleared,
    plan_update,
)
from prefect_seedream.sandbox.prediction_state import INTERRUPTED
from prefect_seedream.sandbox.rendering import CORRUPTIONS

__all__ = ["ADMIN_ACTIONS", "ROUTES", "FaultSettingsError", "Faults"]

ExpireHook = Callable[[str | None, float | None], None]


def _check_route(route: str) -> None:
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}; use one of {', '.join(sorted(ROUTES))}")


def _check_status(status: int) -> None:
    if not 400 <= status <= 599:
        raise ValueError(f"status {status} is not an error status (400..599)")


def _check_drift(name: str, pixels: int) -> None:
    if isinstance(pixels, bool) or not isinstance(pixels, int) or abs(pixels) > MAX_DRIFT:
        raise ValueError(f"{name} must be a whole number of pixels within "
                         f"-{MAX_DRIFT}..{MAX_DRIFT}, not {pixels!r}")


class Faults:
    """Switches that make the next calls fail the way Replicate sometimes does.

    Args:
        expire: Called by `expire_outputs`; owned by the sandbox.
        seed: Seed of the random source behind `error_share`.
    """

    def __init__(self, expire: ExpireHook, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._expire = expire
        self._random = random.Random(seed)
        self._rate_limited = 0
        self._retry_after = 1
        self._fail_next: dict[str, list[tuple[int, int]]] = {}
        self._share = 0.0
        self._share_status = 500
        self._share_routes: frozenset[str] = ROUTES
        self._drops = 0
        self._interrupts: list[str] = []
        self._drifts: list[tuple[int, int]] = []
        self._corruptions: list[str] = []
        self._bytes_per_second: float | None = None

    def rate_limit_creates(self, n: int, retry_after: int = 1) -> None:
        """Answer the next `n` creates with 429 and `Retry-After: retry_after`.

        Args:
            n: How many creates to throttle.
            retry_after: Seconds announced in the `Retry-After` header and the detail.
        """
        with self._lock:
            self._rate_limited = max(0, int(n))
            self._retry_after = max(0, int(retry_after))

    def fail_next(self, route: str, n: int, status: int = 503) -> None:
        """Answer the next `n` calls of `route` with `status` (queued after earlier ones).

        Args:
            route: One of create, get, cancel, list, files, account, models.
            n: How many calls fail; 0 or less queues nothing.
            status: HTTP status to answer with.
        """
        _check_route(route)
        _check_status(status)
        if int(n) <= 0:
            return
        with self._lock:
            self._fail_next.setdefault(route, []).append((int(status), int(n)))

    def error_share(
        self, share: float, status: int = 500, routes: Iterable[str] | None = None
    ) -> None:
        """Answer a random `share` (0..1) of calls with `status`.

        Args:
            share: Probability that a call fails; 0 turns this off.
            status: HTTP status to answer with, typically 500 or 503.
            routes: Routes affected; None means all of them.
        """
        if not 0.0 <= share <= 1.0:
            raise ValueError("share must be within 0..1")
        _check_status(status)
        chosen = ROUTES if routes is None else frozenset(routes)
        for route in chosen:
            _check_route(route)
        with self._lock:
            self._share, self._share_status, self._share_routes = float(share), status, chosen

    def drop_create_responses(self, n: int) -> None:
        """Create the next `n` predictions but close the socket instead of answering."""
        with self._lock:
            self._drops = max(0, int(n))

    def interrupt_predictions(self, n: int, error: str | None = None) -> None:
        """Make the next `n` predictions created end `failed` with `error`.

        Args:
            n: How many predictions fail.
            error: The error message; None means the transient PA interruption.
        """
        with self._lock:
            self._interrupts.extend([error or INTERRUPTED] * max(0, int(n)))

    def size_drift(self, n: int, dx: int = 16, dy: int = 0) -> None:
        """Render the outputs of the next `n` predictions `dx` by `dy` pixels off the size table.

        As Seedream on Replicate has done (2576x1440 for 2K 16:9, where its table says
        2560x1440). The files stay valid JPEGs and the logs give the size rendered. Queued
        after earlier drifts; a prediction `interrupt_predictions` fails takes none.

        Args:
            n: How many predictions drift.
            dx: Pixels added to the width; negative narrows (a side stays >= 16 px).
            dy: Pixels added to the height; negative lowers.
        """
        _check_drift("dx", dx)
        _check_drift("dy", dy)
        with self._lock:
            self._drifts.extend([(dx, dy)] * max(0, int(n)))

    def corrupt_outputs(self, n: int, kind: str = "html") -> None:
        """Make the output files of the next `n` predictions not images.

        The file is spoiled before it is cached, so every download of it is (the same bytes
        while cached): retrying cannot fix it.
        Queued after earlier ones; a prediction `interrupt_predictions` fails takes none.

        Args:
            n: How many predictions get corrupt files.
            kind: "html": an HTML error page served as `image/jpeg`; "oversized": the JPEG
                padded with 80 MiB of zeros before its end marker; "truncated": the JPEG
                cut off before its end marker.
        """
        if kind not in CORRUPTIONS:
            raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(CORRUPTIONS)}")
        with self._lock:
            self._corruptions.extend([kind] * max(0, int(n)))

    def slow_downloads(self, bytes_per_second: float | None) -> None:
        """Throttle output downloads to `bytes_per_second`; None serves at full speed."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be > 0 or None")
        with self._lock:
            self._bytes_per_second = bytes_per_second

    def expire_outputs(
        self, prediction_id: str | None = None, after_seconds: float | None = None
    ) -> None:
        """Remove outputs early.

        Args:
            prediction_id: Only this prediction; None means every prediction.
            after_seconds: None removes the data now. With a prediction id, removes it
                that many seconds from now; without one, sets the retention of every
                prediction (seconds after completion).

        Raises:
            KeyError: The prediction does not exist.
        """
        self._expire(prediction_id, after_seconds)

    def clear(self) -> None:
        """Turn every fault off, as in a new sandbox (retention is config: `Sandbox.configure`)."""
        with self._lock:
            self._load(cleared())

    def update(
        self,
        body: Mapping[str, Any],
        prediction_exists: Callable[[str], bool] = lambda prediction_id: True,
    ) -> None:
        """Apply a `POST /_sandbox/faults` body, all or nothing.

        Each key names a fault method. Its value is either what `state()` shows for it, which
        sets the fault to exactly that (posting `state()` back changes nothing), or an object
        of the method's keyword arguments, which calls it. `fault_settings` has the rules.

        Args:
            body: `{fault name: value, ...}`, as parsed from JSON.
            prediction_exists: Tells whether `expire_outputs.prediction_id` names a
                prediction.

        Raises:
            FaultSettingsError: Naming every refused key; nothing was changed.
        """
        with self._lock:
            plan = plan_update(self._state(), body, prediction_exists)
            self._load(plan.state)
        for prediction_id, after_seconds in plan.expiries:
            self._expire(prediction_id, after_seconds)

    def state(self) -> dict[str, Any]:
        """The active faults as a JSON-ready dict; `update` takes it back unchanged."""
        with self._lock:
            return self._state()

    def _state(self) -> dict[str, Any]:
        return {
            "rate_limit_creates": {"n": self._rate_limited, "retry_after": self._retry_after},
            "fail_next": {r: [list(q) for q in qs] for r, qs in self._fail_next.items() if qs},
            "error_share": {"share": self._share, "status": self._share_status,
                            "routes": sorted(self._share_routes)},
            "drop_create_responses": self._drops,
            "interrupt_predictions": list(self._interrupts),
            "size_drift": [list(drift) for drift in self._drifts],
            "corrupt_outputs": list(self._corruptions),
            "slow_downloads": self._bytes_per_second,
        }

    def _load(self, state: Mapping[str, Any]) -> None:
        """Set every switch from a checked state shaped like `state()`."""
        self._rate_limited = state["rate_limit_creates"]["n"]
        self._retry_after = state["rate_limit_creates"]["retry_after"]
        self._fail_next = {route: [(status, n) for status, n in queue]
                           for route, queue in state["fail_next"].items()}
        self._share = state["error_share"]["share"]
        self._share_status = state["error_share"]["status"]
        self._share_routes = frozenset(state["error_share"]["routes"])
        self._drops = state["drop_create_responses"]
        self._interrupts = list(state["interrupt_predictions"])
        self._drifts = [(dx, dy) for dx, dy in state["size_drift"]]
        self._corruptions = list(state["corrupt_outputs"])
        self._bytes_per_second = state["slow_downloads"]

    # Called by the request handlers.

    def take_create_throttle(self) -> int | None:
        """Retry-After seconds if this create must answer 429, else None."""
        with self._lock:
            if self._rate_limited <= 0:
                return None
            self._rate_limited -= 1
            return self._retry_after

    def take_error(self, route: str) -> int | None:
        """The status this call of `route` must answer with, else None."""
        with self._lock:
            queue = self._fail_next.get(route)
            if queue:
                status, left = queue[0]
                if left <= 1:
                    queue.pop(0)
                else:
                    queue[0] = (status, left - 1)
                return status
            if route in self._share_routes and self._share > 0 and (
                self._random.random() < self._share
            ):
                return self._share_status
            return None

    def take_drop(self) -> bool:
        """True if this create's response must be lost."""
        with self._lock:
            if self._drops <= 0:
                return False
            self._drops -= 1
            return True

    def take_interrupt(self) -> str | None:
        """The error this new prediction must fail with, else None."""
        with self._lock:
            return self._interrupts.pop(0) if self._interrupts else None

    def take_size_drift(self) -> tuple[int, int] | None:
        """The (dx, dy) this new prediction's outputs must drift by, else None."""
        with self._lock:
            return self._drifts.pop(0) if self._drifts else None

    def take_corruption(self) -> str | None:
        """How this new prediction's output files must be corrupt (`CORRUPTIONS`), else None."""
        with self._lock:
            return self._corruptions.pop(0) if self._corruptions else None

    def download_rate(self) -> float | None:
        """Bytes per second for downloads, or None for full speed."""
        with self._lock:
            return self._bytes_per_second
