"""What a batch tells people at the end: the result, the final table, the terminal's progress bar.

`BatchResult` holds every item's outcome with the counts and the money; `BatchItemsFailed`
carries it when some items failed. The final table goes to a Prefect table artifact;
`ProgressBar` draws the events of `progress` on a terminal (the CLI's `seedream batch`).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from pydantic import BaseModel

from prefect_seedream.flows.batch.items import ItemOutcome
from prefect_seedream.tasks.errors import SeedreamError
from prefect_seedream.tasks.storage import StoredImage


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


__all__ = ["BatchItemsFailed", "BatchResult", "ProgressBar", "publish_table", "table_rows"]
