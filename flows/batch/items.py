"""One batch item, one Prefect task run: create, await and store, and never fail a sibling.

The task body calls the plain functions of the prediction tasks (`create_prediction.fn`, ...),
so 1,000 items make 1,000 task runs, not 4,000. A 429 that outlasts the create's own retries
does not fail the item: the whole batch pauses for the announced wait and the item is
re-queued. A transient model failure (Replicate's "interrupted") gets `item_retries` fresh
predictions. Any other error becomes the item's outcome; it never cancels a sibling.

`BatchControl` is what the items of one run share: the stop switch, the 429 pause, the
prediction slots (`max_in_flight`) and the ids of predictions in flight, so the run can cancel
all of them at once when it is stopped. A slot is held from the create to the prediction's end,
not while its images are stored: the next item's prediction starts as soon as one ends, and
storing overlaps it, as it would in a script that only bounds its predictions.
`ItemOutcome` is what became of an item, whichever way it ran (here, in a shard, or earlier).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from prefect_seedream.flows.batch.keys import item_prefix, write_result
from prefect_seedream.flows.batch.manifest import BatchItem
from prefect_seedream.flows.source_images import first_image_size, presign_sources
from prefect_seedream.tasks.concurrency import acquire_create_slot
from prefect_seedream.tasks.connections import _log, replicate_api
from prefect_seedream.tasks.errors import (
    BudgetExceeded,
    PredictionCanceled,
    PredictionFailed,
    RateLimited,
)
from prefect_seedream.tasks.prediction_ledger import Ledger, current_flow_run_id
from prefect_seedream.tasks.prediction_support import plan_create, run_create
from prefect_seedream.tasks.replicate_client.prediction import PredictionStatus
from prefect_seedream.tasks.replicate_client.protocol import RetryPolicy, cancel
from prefect_seedream.tasks.seedream_input import output_dimensions
from prefect_seedream.tasks.seedream_settings import get_settings
from prefect_seedream.tasks.storage import StoredImage, store_outputs
from prefect_seedream.tasks.wait_support import plan_wait

if TYPE_CHECKING:
    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
    from prefect_seedream.blocks.s3_destination import S3Destination
    from prefect_seedream.tasks.replicate_client.prediction import Prediction

#: Longest a batch keeps re-queuing one item on 429s before giving up on it.
RATE_LIMIT_PATIENCE_SECONDS = 900.0

Status = Literal["succeeded", "already_done", "duplicate", "attached", "failed",
                 "skipped_budget", "cancelled"]
#: Statuses that count as "this item's images are in S3". `attached`: another run (running at
#: the same time, or one that crashed) created the prediction; this run waited for it and
#: stored its images, and paid nothing.
DONE: frozenset[str] = frozenset({"succeeded", "already_done", "duplicate", "attached"})


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
    model: str | None = None  # what it ran on (None: not run in this flow run)

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
            "model": self.model,
        }


class BatchStopped(Exception):
    """The batch is stopping; the item was not (or no longer) running."""


class BatchControl:
    """State shared by the items of one batch run (one process).

    A plain class on purpose: Prefect copies dataclasses and collections it finds in task
    parameters, and every item must see the same stop switch and in-flight registry.
    """

    def __init__(
        self, *, credentials: ReplicateCredentials | str | None, destination: S3Destination,
        prefix: str, price_per_image_usd: float, timeout_seconds: float, item_retries: int = 1,
        concurrency_limit_name: str | None = None, model: str | None = None,
        prices: Mapping[str, float] | None = None, max_in_flight: int | None = None,
    ) -> None:
        self.model = model
        # Predictions of this run at Replicate at once (None: as many as items run at once).
        self._slots = threading.Semaphore(max_in_flight) if max_in_flight else None
        self.prices = dict(prices or {})  # per model; price_per_image_usd for any other
        self.credentials, self.destination, self.prefix = credentials, destination, prefix
        self.price_per_image_usd, self.timeout_seconds = price_per_image_usd, timeout_seconds
        self.item_retries, self.concurrency_limit_name = item_retries, concurrency_limit_name
        self.run_id = str(current_flow_run_id() or "local")
        self.ledger = Ledger(destination, prefix)
        self.stop = threading.Event()
        self.budget_refusal: str | None = None  # the spend limit refused a create: submit no more
        self._pause_until = 0.0
        self._in_flight: dict[str, str] = {}  # item key -> prediction id this run owns
        self._lock = threading.Lock()

    def price_of(self, item: Any) -> float:
        """The price per image of the model `item` runs on."""
        return self.prices.get(item.model or self.model or "", self.price_per_image_usd)

    def pause(self, seconds: float) -> None:
        """Hold every create of this batch for `seconds` (after a 429 got through)."""
        with self._lock:
            self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    def wait_turn(self) -> None:
        """Block while the batch is paused; raise `BatchStopped` if it is stopping."""
        while True:
            if self.stop.is_set():
                raise BatchStopped
            with self._lock:
                left = self._pause_until - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(left, 0.5))

    @contextlib.contextmanager
    def prediction_slot(self) -> Iterator[None]:
        """One of the run's `max_in_flight` prediction slots, from the create to the
        prediction's end; raises `BatchStopped` if the batch stops while waiting for one."""
        if self._slots is None:
            yield
            return
        while not self._slots.acquire(timeout=0.5):
            if self.stop.is_set():
                raise BatchStopped
        try:
            yield
        finally:
            self._slots.release()

    def track(self, key: str, prediction_id: str | None) -> None:
        with self._lock:
            if prediction_id is None:
                self._in_flight.pop(key, None)
            else:
                self._in_flight[key] = prediction_id

    def cancel_one(self, prediction_id: str) -> None:
        try:
            replicate_api(self.credentials).run(cancel(prediction_id, policy=RetryPolicy()))
        except Exception as exc:
            _log().error("Could not cancel prediction %s: %s", prediction_id, exc)

    def cancel_in_flight(self) -> list[str]:
        """Stop submitting and cancel every prediction still running; returns their ids.

        An item whose create is still in the air sees the stop switch when it returns and
        cancels its own prediction (it registers before it checks, so none slips through).
        """
        from prefect_seedream.flows.run_hooks import cancel_open_records

        self.stop.set()
        with self._lock:
            ids = list(self._in_flight.values())
        for prediction_id in ids:
            self.cancel_one(prediction_id)
        # Creates still in the air (sync mode holds one open until the prediction ends): their
        # predictions are found by request through the ledger records claimed before sending.
        ids += cancel_open_records(self.ledger, self.run_id, "stopped", self.credentials,
                                   unanswered_only=True)
        _log().warning("Batch stopped: cancelled %d prediction(s) still running", len(ids))
        return ids


@contextlib.contextmanager
def _slot(name: str | None) -> Iterator[None]:
    """One slot of the Prefect global concurrency limit `name` for the prediction's lifetime."""
    if not name:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(name, occupy=1, strict=True):
        yield


def _create_once(request: Any, control: BatchControl, key: str, model: str | None
                 ) -> tuple[Prediction, bool, bool]:
    """`create_prediction`'s body, with the item's ledger record shared by every run of the
    batch (`{prefix}/_ledger/items/{item_key}.json`): of two runs that want the item at once,
    one creates and the other attaches. The item key is the request's identity with its
    sources named by content, so the URLs this attempt presigned play no part in finding what
    an earlier attempt or run paid for. Returns the prediction, whether this run owns it and
    whether this very call created it (then none of its outputs can be stored yet).
    """
    settings = get_settings()
    # Sync mode (`Prefer: wait`), as the image flows: a prediction that ends inside the window
    # costs this one request, no polls. The claim is recorded before the create is sent, so a
    # crash while it waits is found by its request as before.
    wait = min(settings.sync_wait_seconds, int(control.timeout_seconds)) or None
    plan = plan_create(request, control.credentials, webhook=None, webhook_events_filter=None,
                       wait_seconds=wait,
                       cancel_after=control.timeout_seconds + settings.cancel_after_margin_seconds,
                       idempotency_key=None, ledger_at=control.ledger, item_key=key,
                       model=model)
    prediction = run_create(plan, acquire_create_slot)
    ours = plan.claim is None or plan.claim.record.get("run") == control.run_id
    if ours:
        control.track(key, prediction.id)
    return prediction, ours, plan.made == prediction.id


def _await(prediction: Prediction, control: BatchControl) -> Prediction:
    """`await_prediction`'s body: poll with backoff; any way out cancels the prediction."""
    plan = plan_wait(prediction, control.credentials, control.timeout_seconds)
    return plan.finished(plan.run_blocking())


def _create(item: BatchItem, key: str, request: Any, control: BatchControl
            ) -> tuple[Prediction, bool, bool]:
    """Create, re-queuing on 429s that outlast the create's own retries."""
    deadline = time.monotonic() + RATE_LIMIT_PATIENCE_SECONDS
    delay = 1.0
    while True:
        control.wait_turn()
        try:
            return _create_once(request, control, key, item.model or control.model)
        except RateLimited as exc:
            if time.monotonic() > deadline:
                raise
            wait = max(exc.retry_after or 0.0, delay) * (1 + random.random() * 0.25)
            delay = min(delay * 2, 60.0)
            _log().warning("Item %s: still rate limited; batch pauses %.1f s and re-queues it",
                           item.id, wait)
            control.pause(wait)


def _request(item: BatchItem, control: BatchControl) -> tuple[Any, tuple[int, int] | None]:
    if item.kind == "generate":
        request = item.request()
        return request, output_dimensions(request)
    urls = presign_sources(list(item.images), control.destination,
                           expires_in=int(control.timeout_seconds) + 900).urls
    request = item.request(urls)
    try:
        return request, output_dimensions(request, first_image_size(urls[0]))
    except ValueError:
        return request, None


def _predict(item: BatchItem, key: str, control: BatchControl
             ) -> tuple[Prediction, Any, bool, bool]:
    """A succeeded prediction for the item, retrying transient model failures; with the size
    to expect, whether this run paid for it and whether this attempt's create made it."""
    attempt = 0
    while True:
        request, expected = _request(item, control)
        with control.prediction_slot(), _slot(control.concurrency_limit_name):
            prediction, ours, fresh = _create(item, key, request, control)
            try:
                if (control.stop.is_set()
                        and prediction.status is not PredictionStatus.SUCCEEDED):
                    # Stopped while this create was in the air: cancel what still runs. One
                    # that succeeded in the sync window is paid for: it is stored below.
                    if ours and not prediction.status.is_terminal:
                        control.cancel_one(prediction.id)
                    raise BatchStopped
                return _await(prediction, control), expected, ours, fresh
            except PredictionFailed as exc:
                if not exc.retryable or attempt >= control.item_retries:
                    raise
                attempt += 1
                _log().warning("Item %s: prediction %s was interrupted; retrying (%d of %d)",
                               item.id, prediction.id, attempt, control.item_retries)
            finally:
                control.track(key, None)


@task(
    name="Generate batch item",
    description="Creates, awaits and stores one batch item; its outcome, never an exception.",
    cache_policy=NO_CACHE,
    task_run_name="item-{label}",
)
def run_batch_item(item: BatchItem, key: str, label: str, control: BatchControl) -> ItemOutcome:
    """Generate one item into `{prefix}/batch/{key}/` and mark it done with `result.json`."""
    started = time.monotonic()
    base: dict[str, Any] = {"id": item.id, "line": item.line, "kind": item.kind,
                            "item_key": key, "model": item.model or control.model}
    prediction_id = None
    if control.budget_refusal is not None:  # an earlier item hit the spend limit
        return ItemOutcome(**base, status="skipped_budget", error_type="BudgetExceeded",
                           error=control.budget_refusal)
    try:
        finished, expected, ours, fresh = _predict(item, key, control)
        prediction_id = finished.id
        stored = store_outputs.fn(finished, control.destination,
                                  key_prefix=item_prefix(control.prefix, key),
                                  expected_size=expected, fresh=fresh)
        outcome = ItemOutcome(
            **base, status="succeeded" if ours else "attached", images=stored,
            prediction_id=finished.id, seconds=time.monotonic() - started,
            cost_usd=round(control.price_of(item) * len(stored), 6) if ours else 0.0,
        )
        write_result(control.destination, control.prefix, key, {
            **outcome.line_json(), "images": [image.model_dump() for image in stored],
            "input": item.request().to_request() if item.kind == "generate" else None,
            "sources": list(item.images),
        })
        return outcome
    except BudgetExceeded as exc:  # refused before any request: skipped, like the batch's cap
        control.budget_refusal = control.budget_refusal or str(exc)
        status = "skipped_budget"
        error: BaseException = exc
    except (BatchStopped, PredictionCanceled) as exc:
        status = "cancelled"
        error = exc
    except Exception as exc:
        status = "failed"
        error = exc
    if status == "failed" and control.stop.is_set():
        status = "cancelled"
    return ItemOutcome(
        **base, status=status,  # type: ignore[arg-type]
        prediction_id=getattr(error, "prediction_id", None) or prediction_id,
        error_type=type(error).__name__, error=str(error) or "stopped before it ran",
        seconds=time.monotonic() - started,
    )


__all__ = ["DONE", "BatchControl", "BatchStopped", "ItemOutcome", "run_batch_item"]
