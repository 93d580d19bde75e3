"""`generate_batch`: thousands of prompts and edits in one flow run, resumable, within budget.

The shape of a run:

1. Read and check the whole manifest; every bad row is reported at once, before anything is paid.
2. Key each item (hash of its normalised input and its sources' bytes) and list what S3 already
   holds: done items are skipped, so a re-run creates only what is missing.
3. Apply the budget cap to the rest (worst case: `max_images` per item x price), log the estimate.
4. Run the items, one Prefect task run each, on a thread pool: at most `max_in_flight`
   predictions at a time, while the items whose predictions ended store their images; or hand
   shards of them to a deployment (`shards`, `deployment`), one child flow run each.
5. Write the results manifest (JSONL), the final table and the gallery (previews) artifacts;
   end Completed, or Failed with "N of M items failed" and the whole result attached.
"""

# No `from __future__ import annotations`: Prefect validates parameters against these
# annotations, and a runner that loads this file by path must find real types, not strings.

import queue
from typing import TYPE_CHECKING, Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_seedream.blocks.prefect_aws_adapter import S3BucketBlock
from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
from prefect_seedream.blocks.s3_destination import S3Destination, join_key_parts
from prefect_seedream.flows.batch.budget import plan_budget
from prefect_seedream.flows.batch.gallery import publish_gallery
from prefect_seedream.flows.batch.items import BatchControl, ItemOutcome, run_batch_item
from prefect_seedream.flows.batch.keys import (
    find_done,
    item_key,
    read_results,
    source_digests,
    write_jsonl,
)
from prefect_seedream.flows.batch.manifest import BatchItem, load_manifest
from prefect_seedream.flows.batch.models import (
    batch_prices,
    model_of,
    model_problems,
    worst_cost,
)
from prefect_seedream.flows.batch.progress import Progress, notify
from prefect_seedream.flows.batch.report import BatchItemsFailed, BatchResult, publish_table
from prefect_seedream.flows.flow_support import check_bucket
from prefect_seedream.flows.spend_report import publish_spend
from prefect_seedream.tasks.connections import _log, resolve_credentials, resolve_destination
from prefect_seedream.tasks.model_schemas import check_model_name
from prefect_seedream.tasks.prediction_ledger import flush_pointers
from prefect_seedream.tasks.s3_storage.keys import key_prefix_under
from prefect_seedream.tasks.seedream_settings import get_settings
from prefect_seedream.tasks.storage import StoredImage

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture


#: Item task runs alive per prediction slot: one predicting, one storing or next in line.
ITEMS_PER_SLOT = 2


#: What a batch result's image says instead of a preview it does not hold (the preview is in the
#: item's `result.json`; the gallery's items keep theirs).
PREVIEW_LEFT_OUT = ("preview left out of the batch result to keep its memory per item small "
                    "(only the gallery's items keep theirs); it is in the item's result.json")


def _compact(outcome: ItemOutcome, keep: frozenset[str] | None) -> ItemOutcome:
    """The outcome as the batch keeps it until its end: without previews, unless the item's
    key is in `keep` (the gallery's items) or `keep` is None (keep every preview).

    A preview is ~8 KB of base64 per image, several times the rest of an outcome: a 10,000-item
    batch holding them all would carry ~90 MB for a gallery that shows 48.
    """
    if keep is None or outcome.item_key in keep or not any(i.preview for i in outcome.images):
        return outcome
    return outcome.model_copy(update={"images": [
        image.model_copy(update={"preview": None, "preview_note": PREVIEW_LEFT_OUT})
        if image.preview else image for image in outcome.images]})


def _gallery_keys(keyed: list[tuple[BatchItem, str]]) -> frozenset[str]:
    """Keys of the items the gallery shows: the manifest's first (or latest) N by line."""
    settings = get_settings()
    ordered = sorted(keyed, key=lambda pair: pair[0].line)
    count = settings.gallery_items
    window = ordered[:count] if settings.gallery_show == "first" else ordered[-count:]
    return frozenset(key for _, key in window)


def _release(runner: ThreadPoolTaskRunner[Any], future: "PrefectFuture[Any]",
             result: Any) -> None:
    """Forget what Prefect keeps in this process for a finished item's task run.

    Prefect keeps, for every task run of the flow run until the run ends, a copy of its final
    state keyed by the id of each object the task returned (`FlowRunContext.run_results`, so
    a result passed to another task links the two) and the runner keeps its cancel event
    (`ThreadPoolTaskRunner._cancel_events`). An item's outcome is never passed to another task
    and a finished item has nothing to cancel: without this, each item would leave ~2 KB
    behind, 20 MB in a 10,000-item batch. Its state stays in the API, as before.
    """
    from prefect.context import FlowRunContext
    from prefect.utilities.collections import visit_collection

    events = getattr(runner, "_cancel_events", None)
    if isinstance(events, dict):
        events.pop(future.task_run_id, None)
    context = FlowRunContext.get()
    results = getattr(context, "run_results", None)
    if isinstance(results, dict) and result is not None:
        visit_collection(result, visit_fn=lambda obj: results.pop(id(obj), None), max_depth=1)


def _run_local(
    items: list[tuple[BatchItem, str]], control: BatchControl, *, max_in_flight: int,
    progress: Progress, keep_previews: frozenset[str] | None = None,
) -> list[ItemOutcome]:
    """Run items on a thread pool: never more than `max_in_flight` predictions at once (the
    control's slots), and as many item task runs again, each storing the images of a
    prediction that ended or started and waiting for the next free slot. A prediction that
    ends hands its slot straight to a waiting item, so storing and Prefect's own work for an
    item never hold a prediction back (figure 1 in BENCHMARKS.md).

    Any way out other than finishing (Ctrl-C, a runner's cancellation, a crash) stops
    submitting and cancels every prediction still running before it propagates.
    """
    outcomes: list[ItemOutcome] = []
    runner: ThreadPoolTaskRunner[Any]
    alive = ITEMS_PER_SLOT * max_in_flight
    with ThreadPoolTaskRunner(max_workers=alive) as runner:
        try:
            # The loop lives in its own frame: CPython 3.11 can raise a signal's exception at a
            # loop's backward jump outside the enclosing `try`, which would skip the cleanup.
            _drive(runner, items, control, alive, progress, outcomes, keep_previews)
        except BaseException:
            control.cancel_in_flight()
            raise
    return outcomes


def _drive(
    runner: ThreadPoolTaskRunner[Any], items: list[tuple[BatchItem, str]], control: BatchControl,
    alive: int, progress: Progress, outcomes: list[ItemOutcome],
    keep_previews: frozenset[str] | None = None,
) -> None:
    finished: queue.SimpleQueue[PrefectFuture[ItemOutcome]] = queue.SimpleQueue()
    pending = iter(items)
    in_flight: dict[Any, tuple[BatchItem, str]] = {}
    while True:
        while len(in_flight) < alive and not control.stop.is_set():
            nxt = next(pending, None)
            if nxt is None:
                break
            item, key = nxt
            future = runner.submit(run_batch_item, parameters={
                "item": item, "key": key, "label": item.id[:60], "control": control})
            future.add_done_callback(finished.put)
            in_flight[future.task_run_id] = nxt
        if not in_flight:
            return
        try:
            done = finished.get(timeout=1.0)
        except queue.Empty:
            continue
        item, key = in_flight.pop(done.task_run_id)
        outcome = _outcome_of(done, item, key)
        _release(runner, done, outcome)
        del done  # the future holds the task's final state with the full outcome
        outcome = _compact(outcome, keep_previews)
        outcomes.append(outcome)
        progress.item_done(outcome)


def _outcome_of(future: "PrefectFuture[ItemOutcome]", item: BatchItem, key: str) -> ItemOutcome:
    try:
        return future.result()
    except Exception as exc:  # the task body never raises; a crash of the engine might
        return ItemOutcome(id=item.id, line=item.line, kind=item.kind, item_key=key,
                           status="failed", error_type=type(exc).__name__, error=str(exc))


def _already_done(destination: S3Destination, prefix: str,
                  items: list[tuple[BatchItem, str]],
                  keep_previews: frozenset[str] | None = None) -> list[ItemOutcome]:
    stored = read_results(destination, prefix, [key for _, key in items])
    outcomes = []
    for item, key in items:
        data = stored[key]
        outcomes.append(_compact(ItemOutcome(
            id=item.id, line=item.line, kind=item.kind, item_key=key, status="already_done",
            images=[StoredImage(**image) for image in data.get("images", [])],
            prediction_id=data.get("prediction_id"),
        ), keep_previews))
    return outcomes


def _check_limit(name: str) -> None:
    """Refuse before paying if the global concurrency limit does not exist (it is strict)."""
    from prefect.client.orchestration import get_client

    from prefect_seedream.tasks.errors import InvalidInput

    try:
        with get_client(sync_client=True) as client:
            client.read_global_concurrency_limit_by_name(name)
    except Exception as exc:
        raise InvalidInput(
            f"global concurrency limit {name!r} does not exist ({type(exc).__name__}); create it "
            f"with `prefect gcl create {name} --limit N` or drop concurrency_limit_name"
        ) from exc


def _block_name(value: Any, what: str) -> str | None:
    """A block's saved name, for child flow runs that must load it in another process."""
    if value is None or isinstance(value, str):
        return value
    name = getattr(value, "_block_document_name", None)
    if not name:
        from prefect_seedream.tasks.errors import InvalidInput

        raise InvalidInput(f"sharding needs the {what} as a saved block's name (workers load it "
                           f"in their own process); save it with .save('NAME') and pass 'NAME'")
    return str(name)


def cancel_batch_predictions(flow: Any, flow_run: Any, state: Any) -> None:
    """Cancellation/crash hook: cancel the predictions the run owns and has not seen finish.

    Runs in the runner or worker process, so it rebuilds the destination from the run's
    parameters (a saved block's name, or the settings) and reads the run's open records in the
    batch's ledger. A prediction another run created, which this run only attached to, is left
    to that run.
    """
    from prefect_seedream.flows.run_hooks import cancel_run_predictions, run_ledger

    params = flow_run.parameters or {}
    try:
        at = run_ledger(flow_run, params.get("key_prefix"))
    except Exception as exc:
        _log().error("Could not find batch %s's ledger: %s", flow_run.id, exc)
        return
    cancel_run_predictions(at, flow_run, state)


@flow(
    name="generate-batch",
    description="Generates and edits many images from a manifest, resumable, within a budget.",
    on_cancellation=[cancel_batch_predictions],
    on_crashed=[cancel_batch_predictions],
)
def generate_batch(
    manifest: str | list[dict[str, Any]],
    *,
    credentials: ReplicateCredentials | str | None = None,
    destination: S3Destination | S3BucketBlock | str | None = None,
    key_prefix: str | None = None,
    max_in_flight: int = 16,
    price_per_image_usd: float | None = None,
    max_images_total: int | None = None,
    max_cost_usd: float | None = None,
    timeout_seconds: float = 600,
    item_retries: int = 1,
    concurrency_limit_name: str | None = None,
    shards: int = 1,
    deployment: str | None = None,
    results_key: str | None = None,
    model: str | None = None,
) -> BatchResult | State[Any]:
    """Generate or edit every item of `manifest` into S3; items already there are skipped.

    Args:
        manifest: A JSONL or CSV file or a list of dicts. A file is a local path, an `s3://`
            URI, or a key relative to the destination (`manifests/nightly.jsonl`: no scheme,
            no local file of that name), read from the destination's bucket under its prefix.
            A row has `prompt` (generate) or `instruction` + `images` (edit), the options of
            `generate_images`/`edit_image` (`size`, `aspect_ratio`, `width`, `height`,
            `max_images`, `enhance_prompt`) and optionally an `id` and a `model`
            (`owner/name[:version]`; the row runs on it instead of `model`). Every row is
            checked against its model's published schema before anything is submitted.
        credentials: A `ReplicateCredentials` block, its saved name, or None for the defaults.
        destination: An `S3Destination` block, its saved name, or None for the settings.
        key_prefix: Folders nested under the destination's prefix (the key rule of
            `tasks.s3_storage.keys`, refused before paying); items go to
            `{prefix}/{key_prefix}/batch/{key}/`.
        max_in_flight: Most predictions running at once in this flow run. An item holds its
            slot from its create to its prediction's end; storing its images does not hold
            one, so up to as many items again store while the next predictions run.
        price_per_image_usd: Price of one output image on every model, for the estimate and
            the cost; None: `SEEDREAM_PRICE_PER_IMAGE_USD`, else each model's own
            (`tasks.model_prices`). A model with no known price cannot run with `max_cost_usd`.
        max_images_total: Stop submitting before the worst case would pass this many images.
        max_cost_usd: Stop submitting before the worst case would pass this many dollars.
        timeout_seconds: How long to wait for each prediction before cancelling it.
        item_retries: Fresh predictions for an item whose prediction was interrupted.
        concurrency_limit_name: A Prefect global concurrency limit each running prediction
            occupies (strict), bounding predictions in flight across every run and worker.
        shards: With `deployment`, split the work into this many child flow runs.
        deployment: `flow-name/deployment-name` of a `generate-batch` deployment for shards.
        results_key: Key of the results manifest; default `{prefix}/batch/results/{run}.jsonl`.
        model: `owner/name[:version]` every row without a `model` of its own runs on; None:
            `SEEDREAM_MODEL`.

    Returns:
        A `BatchResult`. If any item failed the run ends `Failed` ("N of M items failed") with a
        `BatchItemsFailed` carrying the same result: use `return_state=True` and
        `state.result(raise_on_failure=False).result`, or catch it.

    Example:
        ```python
        from prefect_seedream import generate_batch

        result = generate_batch("catalogue.jsonl", max_cost_usd=25)
        print(result.summary(), result.results_uri)
        ```
    """
    from prefect.runtime import flow_run

    log = _log()
    target = resolve_destination(destination)
    prefix = key_prefix_under(target.prefix, key_prefix)  # nests under it, or is refused
    model = check_model_name(model or get_settings().model)
    resolve_credentials(credentials)  # fail now on missing credentials, not after paying
    items = load_manifest(manifest, target, also=lambda rows: model_problems(
        rows, model, credentials))  # every row against its model's schema, with the rest
    given_price = price_per_image_usd
    prices = batch_prices(items, model, given=given_price,
                          setting=get_settings().price_per_image_usd,
                          capped=max_cost_usd is not None, log=log)
    price_per_image_usd = prices[model]
    digests = source_digests(items, target)
    keyed = [(item, item_key(model_of(item, model), item, digests)) for item in items]
    check_bucket(target)
    if concurrency_limit_name:
        _check_limit(concurrency_limit_name)

    firsts: dict[str, BatchItem] = {}
    unique: list[tuple[BatchItem, str]] = []
    duplicates: list[tuple[BatchItem, str]] = []
    for item, key in keyed:
        if key in firsts:
            duplicates.append((item, key))
        else:
            firsts[key] = item
            unique.append((item, key))
    done_keys = find_done(target, prefix, {key for _, key in unique})
    todo = [(item, key) for item, key in unique if key not in done_keys]
    run, skipped = plan_budget(todo, price=lambda item: prices[model_of(item, model)],
                               max_images_total=max_images_total, max_cost_usd=max_cost_usd)
    worst_images = sum(item.max_images for item, _ in run)
    estimate = worst_cost((item for item, _ in run), model, prices)
    log.info(
        "Batch of %d items: %d already in S3, %d duplicate rows, %d to generate (up to %d "
        "images, estimate up to $%.2f at %s)%s", len(items), len(done_keys),
        len(duplicates), len(run), worst_images, estimate,
        ", ".join(f"${p:.3f}/image on {m}" for m, p in prices.items()),
        f"; {len(skipped)} skipped by the budget cap" if skipped else "",
    )
    notify({"event": "plan", "total": len(items), "already_done": len(done_keys),
            "to_run": len(run), "skipped_budget": len(skipped), "estimate_usd": estimate})

    keep_previews = _gallery_keys(keyed)  # the rest of the outcomes are kept without previews
    progress = Progress(len(run), log)
    progress.start()
    if shards > 1 or deployment:
        from prefect_seedream.flows.batch.shards import run_shards

        if not deployment:
            raise ValueError("shards > 1 needs deployment='generate-batch/DEPLOYMENT-NAME'")
        ran = run_shards(
            run, deployment=deployment, shards=max(shards, 1), destination=target,
            prefix=prefix, progress=progress, parameters={
                "credentials": _block_name(credentials, "credentials"),
                "destination": _block_name(destination, "destination"),
                "key_prefix": key_prefix, "max_in_flight": max_in_flight,
                "price_per_image_usd": given_price, "timeout_seconds": timeout_seconds,
                "item_retries": item_retries, "concurrency_limit_name": concurrency_limit_name,
                "model": model,
            })
    else:
        control = BatchControl(
            credentials=credentials, destination=target, prefix=prefix,
            price_per_image_usd=price_per_image_usd, timeout_seconds=timeout_seconds,
            item_retries=item_retries, concurrency_limit_name=concurrency_limit_name,
            model=model, prices=prices, max_in_flight=max(1, max_in_flight),
        )
        ran = _run_local(run, control, max_in_flight=max(1, max_in_flight), progress=progress,
                         keep_previews=keep_previews)

    progress.flush()  # the artifact shows the last item before the run ends
    flush_pointers()  # and the ledger no longer lists the run's ended items as open
    by_key: dict[str, ItemOutcome] = {o.item_key: o for o in ran}
    by_key.update((o.item_key, o) for o in _already_done(
        target, prefix, [(item, key) for item, key in unique if key in done_keys],
        keep_previews))
    for item, key in skipped:
        by_key[key] = ItemOutcome(id=item.id, line=item.line, kind=item.kind, item_key=key,
                                  status="skipped_budget", model=model_of(item, model))
    outcomes = [by_key[key] for _, key in unique]
    for item, key in duplicates:
        first = by_key[key]
        outcomes.append(first.model_copy(update={
            "id": item.id, "line": item.line, "cost_usd": 0.0, "seconds": 0.0,
            "status": "duplicate" if first.status in ("succeeded", "already_done")
            else first.status,
            "error": first.error or f"same input as item {first.id}"}))
    outcomes.sort(key=lambda o: o.line)

    run_id = str(flow_run.id or "local")
    key = results_key or join_key_parts(prefix, "batch", "results", f"{run_id}.jsonl")
    result = BatchResult(items=outcomes, price_per_image_usd=price_per_image_usd,
                         estimated_cost_usd=estimate)
    result.results_uri = write_jsonl(target, key, (o.line_json() for o in outcomes))
    publish_table(result)
    publish_spend(target)  # the seedream-spend artifact, when a spend limit is set
    try:
        publish_gallery(result.items)
    except Exception as exc:  # a gallery is a view; it never fails a batch that stored its images
        log.warning("No gallery artifact: %s: %s", type(exc).__name__, exc)
    log.info("Batch finished: %s. Results manifest: %s", result.summary(), result.results_uri)
    notify({"event": "done", "summary": result.summary()})
    failed = result.count("failed") + result.count("cancelled")
    if failed:
        message = f"{failed} of {len(outcomes)} items failed"
        return Failed(message=message, data=BatchItemsFailed(message, result=result))
    return result


__all__ = ["cancel_batch_predictions", "generate_batch"]
