"""What a batch tells people: per-item outcomes, the result, progress and the final table.

Progress goes to a Prefect progress artifact (updated at most every ~2 % or 2 seconds, so a
1,000-item batch makes tens of API calls for it, not thousands), to the flow log at every 10 %,
and to in-process listeners such as the CLI's progress bar.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tasks.errors import SeedreamError
from tasks.storage import StoredImage

Status = Literal["succeeded", "already_done", "duplicate", "failed", "skipped_budget",
                 "cancelled"]
#: Statuses that count as "this item's images are in S3".
DONE: frozenset[str] = frozenset({"succeeded", "already_done", "duplicate"})


class ItemOutcome(BaseModel):
    """What happened to one manifest item."""

    model_config = ConfigDict(frozen=True)

    id: str
    line: int
    kind: str
    item_key: str
    status: Status
    images: list[StoredImage] = []
    prediction_id: str | None = None
    error_type: str | None = None
    error: str | None = None
    seconds: float = 0.0
    cost_usd: float = 0.0  # paid in this run: price x images stored

    @property
    def uris(self) -> list[str]:
        return [image.uri for image in self.images]

    def line_json(self) -> dict[str, Any]:
        """The item as one line of the results manifest."""
        return {
            "id": self.id, "line": self.line, "kind": self.kind, "item_key": self.item_key,
            "status": self.status, "prediction_id": self.prediction_id,
            "images": [{"uri": i.uri, "sha256": i.sha256, "width": i.width, "height": i.height,
                        "index": i.index, "size_bytes": i.size_bytes,
                        "content_type": i.content_type} for i in self.images],
            "error_type": self.error_type, "error": self.error,
            "seconds": round(self.seconds, 3), "cost_usd": round(self.cost_usd, 4),
        }


class BatchResult(BaseModel):
    """Everything a batch did, item by item, with the counts and the money."""

    items: list[ItemOutcome]
    price_per_image_usd: float
    estimated_cost_usd: float
    results_uri: str | None = None

    def count(self, status: str) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(item.status for item in self.items))

    @property
    def failed(self) -> list[ItemOutcome]:
        return [item for item in self.items if item.status == "failed"]

    @property
    def images(self) -> list[StoredImage]:
        return [image for item in self.items for image in item.images]

    @property
    def actual_cost_usd(self) -> float:
        return round(sum(item.cost_usd for item in self.items), 4)

    def summary(self) -> str:
        parts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items()))
        return (f"{len(self.items)} items: {parts}; cost ${self.actual_cost_usd:.2f} "
                f"(estimate ${self.estimated_cost_usd:.2f})")


class BatchItemsFailed(SeedreamError):
    """Some items of a batch failed; `result` holds every outcome, the successes included.

    It is the data of the batch's `Failed` state: `state.result(raise_on_failure=False)` gives
    this error, and calling the flow directly raises it.
    """

    def __init__(self, message: str, *, result: BatchResult | None = None) -> None:
        super().__init__(message)
        self.result = result


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
            self._push(percent, finished, counts)
        notify({"event": "item", "finished": finished, "total": self.total, "counts": counts,
                "item": outcome.id, "status": outcome.status})

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


def _cell(text: str, limit: int = 300) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table_rows(result: BatchResult) -> list[dict[str, Any]]:
    """The final table: item, status, S3 URIs, seconds, cost (and the error, if any)."""
    return [
        {"item": item.id, "line": item.line, "status": item.status,
         "images": " ".join(item.uris), "seconds": round(item.seconds, 1),
         "cost_usd": round(item.cost_usd, 4),
         "error": _cell(f"{item.error_type}: {item.error}") if item.error else ""}
        for item in result.items
    ]


def publish_table(result: BatchResult, *, key: str = "seedream-batch") -> None:
    """Create the final table artifact in the current flow run."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        table=table_rows(result), key=key,
        description=_cell(f"Seedream batch: {result.summary()}"
                          + (f"; results manifest {result.results_uri}"
                             if result.results_uri else ""), 900),
        _sync=True,  # type: ignore[call-arg]
    )


class ProgressBar:
    """A one-line text progress bar for a terminal (the CLI's `seedream batch`), on `stream`."""

    def __init__(self, stream: Any, width: int = 30) -> None:
        self.stream, self.width = stream, width
        self._last = 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "plan":
            self.stream.write(
                f"{event['total']} items: {event['already_done']} already in S3, "
                f"{event['to_run']} to generate, {event['skipped_budget']} over budget; "
                f"estimate up to ${event['estimate_usd']:.2f}\n")
        elif kind == "item":
            finished, total = event["finished"], max(event["total"], 1)
            if finished < total and time.monotonic() - self._last < 0.2:
                return
            self._last = time.monotonic()
            filled = self.width * finished // total
            failed = event["counts"].get("failed", 0)
            self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] "
                              f"{finished}/{total}" + (f" ({failed} failed)" if failed else ""))
            if finished == total:
                self.stream.write("\n")
        self.stream.flush()


__all__ = [
    "DONE",
    "BatchItemsFailed",
    "BatchResult",
    "ItemOutcome",
    "Progress",
    "ProgressBar",
    "add_listener",
    "notify",
    "publish_table",
    "table_rows",
]
