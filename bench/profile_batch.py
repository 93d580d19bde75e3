"""Where a `generate_batch` run's time goes: a timeline of one figure-1 batch, by phase.

    python -m bench.profile_batch [N] [CONCURRENCY]     # default 40 x 2 s at 10 in flight

Runs the shipped flow once (after a warm-up) against the bench's sandbox and S3 server on a
Prefect test server, timing (never changing) the functions each item calls, and prints: the
flow's time before the first item starts and after the last ends, each phase's total and mean
per item, and the gap between a prediction slot freeing and the next item taking it.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

from bench.common import bench_env, credentials, destination
from bench.servers import MotoProcess, SandboxProcess

_spans: dict[str, list[float]] = defaultdict(list)
_events: list[tuple[str, float]] = []
_lock = threading.Lock()


def _wrap(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            with _lock:
                _spans[label].append(time.perf_counter() - start)

    setattr(owner, name, timed)


def _instrument() -> None:
    from prefect_seedream.flows.batch import flow as batch_flow
    from prefect_seedream.flows.batch import items
    from prefect_seedream.tasks import prediction_ledger, prediction_support

    for name in ("read", "write", "mark_open", "close"):
        _wrap(prediction_ledger.Ledger, name, f"ledger.{name}")
    _wrap(prediction_support.CreatePlan, "obtain", "create: claim (obtain)")
    _wrap(prediction_support.CreatePlan, "created", "create: record id (created)")
    _wrap(items, "_create", "item: create (claim + create + record)")
    _wrap(items, "_await", "item: await")
    _wrap(items, "write_result", "item: result.json")
    _wrap(items.store_outputs, "fn", "item: store_outputs")
    _wrap(items, "_predict", "item: predict (create + await)")
    from prefect_seedream.tasks import storage
    from prefect_seedream.tasks.s3_storage import previews

    _wrap(storage, "_attempt", "store: one output (download + checks + PUT + preview)")
    _wrap(storage, "upload_then_publish", "store: download + PUT")
    _wrap(storage, "_with_preview", "store: preview (thumbnail PUT)")
    _wrap(previews.Thumbnailer, "preview_base64", "store: preview (encode)")
    _wrap(previews.Thumbnailer, "feed", "store: preview (decode, per chunk)")
    _wrap(storage, "new_http_client", "store: new http client")
    original = items.run_batch_item.fn

    @functools.wraps(original)  # Prefect binds the task's parameters by this signature
    def body(*args: Any, **kwargs: Any) -> Any:
        with _lock:
            _events.append(("start", time.perf_counter()))
        try:
            return original(*args, **kwargs)
        finally:
            with _lock:
                _events.append(("end", time.perf_counter()))

    items.run_batch_item.fn = body

    def slot_of(control: Any) -> Any:  # when each prediction slot is taken and given back
        taken = original_slot(control)

        class Timed:
            def __enter__(self) -> None:
                taken.__enter__()
                with _lock:
                    _events.append(("slot", time.perf_counter()))

            def __exit__(self, *exc: Any) -> Any:
                with _lock:
                    _events.append(("free", time.perf_counter()))
                return taken.__exit__(*exc)

        return Timed()

    original_slot = items.BatchControl.prediction_slot
    items.BatchControl.prediction_slot = slot_of
    for name in ("find_done", "load_manifest", "source_digests", "check_bucket", "write_jsonl",
                 "publish_table", "publish_spend", "publish_gallery", "_already_done",
                 "model_problems", "batch_prices"):
        if hasattr(batch_flow, name):
            _wrap(batch_flow, name, f"flow: {name}")
    _wrap(batch_flow, "_run_local", "flow: _run_local (all items)")
    _wrap(batch_flow, "flush_pointers", "flow: flush_pointers")
    _wrap(batch_flow.Progress, "flush", "flow: progress.flush")
    _wrap(batch_flow.generate_batch, "fn", "flow: body")
    _wrap(batch_flow.Progress, "item_done", "flow: progress.item_done")
    _wrap(batch_flow.Progress, "start", "flow: progress.start")


def run(n: int = 40, concurrency: int = 10, latency: float = 2.0) -> dict[str, Any]:
    bench_env()
    from prefect.testing.utilities import prefect_test_harness

    from bench import prefect_paths

    with SandboxProcess(run_seconds=latency) as sb, MotoProcess() as moto, \
            prefect_test_harness(server_startup_timeout=120):
        import boto3

        boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1").create_bucket(
            Bucket="profile")
        creds, dest = credentials(sb.base_url, sb.api_token), destination(moto.endpoint_url,
                                                                         "profile")

        def once(tag: str, count: int) -> float:
            prompts = [f"profile {tag} #{i} {uuid.uuid4().hex[:6]}" for i in range(count)]
            start = time.perf_counter()
            prefect_paths.run_batch(prompts, creds, dest, concurrency, key_prefix=tag)
            return time.perf_counter() - start

        once("warm", 2)
        _instrument()
        t0 = time.perf_counter()
        wall = once("timed", n)
    starts = sorted(t for kind, t in _events if kind == "start")
    ends = sorted(t for kind, t in _events if kind == "end")
    # Each prediction slot taken after the first `concurrency` follows one freed earlier.
    taken = sorted(t for kind, t in _events if kind == "slot")
    freed = sorted(t for kind, t in _events if kind == "free")
    gaps = [s - e for s, e in zip(taken[concurrency:], freed, strict=False)]
    return {
        "n": n, "concurrency": concurrency, "latency_s": latency, "wall_s": round(wall, 2),
        "ideal_s": -(-n // concurrency) * latency,
        "before_first_item_s": round(starts[0] - t0, 3),
        "after_last_item_s": round(t0 + wall - ends[-1], 3),
        "slot_gap_s": {"mean": round(sum(gaps) / max(1, len(gaps)), 3),
                       "max": round(max(gaps, default=0.0), 3)},
        "phases": {label: {"calls": len(v), "total_s": round(sum(v), 3),
                           "mean_ms": round(1000 * sum(v) / len(v), 1)}
                   for label, v in sorted(_spans.items())},
    }


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(run(*args), indent=1))
