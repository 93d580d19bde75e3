"""When one machine is not enough: hand shards of a batch to a deployment, one child run each.

Prefect's work pools and workers do the distributing: each shard is a `generate-batch` child flow
run (`run_deployment` with an idempotency key, so a retry of the parent never starts a shard
twice), picked up by whichever process worker is free. Every child takes slots of the same
Prefect rate limit (and, if given, the same global concurrency limit), so N workers on N
machines share one Replicate budget. The parent writes each shard's manifest to S3, waits for
the children, reads the result manifests they wrote, and cancels them if it is cancelled.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prefect_seedream.blocks.s3_destination import join_key_parts
from prefect_seedream.flows.batch.items import ItemOutcome
from prefect_seedream.flows.batch.keys import read_jsonl
from prefect_seedream.flows.batch.manifest import BatchItem, to_jsonl
from prefect_seedream.flows.batch.progress import Progress

if TYPE_CHECKING:
    from prefect_seedream.blocks.s3_destination import S3Destination

POLL_SECONDS = 2.0


def split(items: list[Any], shards: int) -> list[list[Any]]:
    """`items` in at most `shards` contiguous, near-equal, non-empty parts.

    Example:
        ```python
        from prefect_seedream.flows.batch.shards import split

        assert split(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
        assert split([1], 3) == [[1]]
        ```
    """
    count = max(1, min(shards, len(items)))
    size, extra = divmod(len(items), count)
    parts, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        parts.append(items[start:end])
        start = end
    return [part for part in parts if part]


def _outcome(item: BatchItem, key: str, line: dict[str, Any] | None, why: str) -> ItemOutcome:
    from prefect_seedream.tasks.storage import StoredImage

    if line is None:
        return ItemOutcome(id=item.id, line=item.line, kind=item.kind, item_key=key,
                           status="failed", error_type="ShardFailed", error=why)
    images = []
    for image in line.get("images", []):
        # The results manifest carries uri, sha256 and size; the rest is implied by the key.
        images.append(StoredImage(
            uri=image["uri"], bucket=image["uri"][5:].split("/", 1)[0],
            key=image["uri"][5:].split("/", 1)[1], sha256=image.get("sha256", ""),
            size_bytes=image.get("size_bytes", 0), width=image.get("width", 0),
            height=image.get("height", 0), content_type=image.get("content_type", "image/jpeg"),
            prediction_id=line.get("prediction_id") or "", index=image.get("index", 0)))
    return ItemOutcome(
        id=item.id, line=item.line, kind=item.kind, item_key=key, status=line["status"],
        images=images, prediction_id=line.get("prediction_id"),
        error_type=line.get("error_type"), error=line.get("error"),
        seconds=float(line.get("seconds") or 0.0), cost_usd=float(line.get("cost_usd") or 0.0),
        model=line.get("model") if isinstance(line.get("model"), str) else None,
    )


def run_shards(
    items: list[tuple[BatchItem, str]], *, deployment: str, shards: int,
    destination: S3Destination, prefix: str, progress: Progress, parameters: dict[str, Any],
) -> list[ItemOutcome]:
    """Run `items` as `shards` child flow runs of `deployment`; return every item's outcome."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.runtime import flow_run
    from prefect.states import Cancelling

    if not items:
        return []
    parent = str(flow_run.id or "local")
    parts = split(items, shards)
    children: list[tuple[Any, str, list[tuple[BatchItem, str]]]] = []
    client = destination.get_client()
    try:
        for index, part in enumerate(parts):
            base = join_key_parts(prefix, "batch", "shards", parent, f"{index}")
            client.put_object(Bucket=destination.bucket, Key=f"{base}.jsonl",
                              Body=to_jsonl(item for item, _ in part).encode(),
                              ContentType="application/x-ndjson")
            results = f"{base}-results.jsonl"
            child = run_deployment(
                deployment, timeout=0, as_subflow=True,
                idempotency_key=f"{parent}-shard-{index}-of-{len(parts)}",
                flow_run_name=f"shard-{index + 1}-of-{len(parts)}",
                parameters={**parameters, "manifest": destination.uri(f"{base}.jsonl"),
                            "results_key": results, "shards": 1, "deployment": None},
            )
            children.append((child.id, destination.uri(results), part))  # type: ignore[union-attr]
        progress.log.info("Handed %d items to %s as %d child flow runs", len(items), deployment,
                          len(children))
        open_ids = {child_id for child_id, _, _ in children}
        states: dict[Any, Any] = {}
        while open_ids:
            time.sleep(POLL_SECONDS)
            with get_client(sync_client=True) as api:
                for child_id in list(open_ids):
                    state = api.read_flow_run(child_id).state
                    if state is not None and state.is_final():
                        states[child_id] = state
                        open_ids.discard(child_id)
    except BaseException:
        with get_client(sync_client=True) as api:
            for child_id, _, _ in children:
                try:
                    state = api.read_flow_run(child_id).state
                    if state is None or not state.is_final():
                        api.set_flow_run_state(child_id, Cancelling(), force=True)
                except Exception as exc:
                    progress.log.error("Could not cancel shard run %s: %s", child_id, exc)
        raise
    outcomes = []
    for child_id, results_uri, part in children:
        lines = {line["item_key"]: line for line in read_jsonl(destination, results_uri)}
        state = states.get(child_id)
        why = f"shard run {child_id} ended {state.name if state else 'unknown'} without a result"
        for item, key in part:
            outcome = _outcome(item, key, lines.get(key), why)
            outcomes.append(outcome)
            progress.item_done(outcome)
    return outcomes


__all__ = ["run_shards", "split"]
