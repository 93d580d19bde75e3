"""A `generate_batch` of N items against the sandbox: RSS against items completed, wall time.

The sandbox (0.2 s model latency, prerendered outputs, rate limits off), moto's S3 server and
the Prefect API (`prefect server start` on SQLite) each run in their own process, as Replicate,
S3 and a Prefect server would, so the RSS measured is the batch's own process only: Prefect
client, thread pool, HTTP clients, per-item state. (Prefect's `prefect_test_harness` would
import the whole server app into this process, ~85 MB a user's flow run never has.)

RSS is sampled every 0.1 s for the peak, and at every ~0.5 % of items completed for the
(items_done, rss_mb) series; "flat" is judged by the growth from 10 % to 100 %. With
`--diagnose`, the objects alive by type (and with `--tracemalloc`, allocations by line) are
diffed between 10 % and 50 % of the batch, to find what grows per item.

Run: `python bench/bench_batch.py [--items 10000] [--in-flight 64] [--run-seconds 0.2]`.
Prints one JSON object last. Nothing here is asserted; read the numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    def __init__(self, every: float = 0.1) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.every, self.peak, self.samples = every, 0.0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_mb())
            self.samples += 1
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, rss_mb())


def _types() -> Counter[str]:
    return Counter(type(o).__qualname__ for o in gc.get_objects())


class Diagnosis:
    """Objects by type (and allocations by line) at 10 % and 50 %, and what grew between."""

    def __init__(self, traced: bool, frames: int = 1) -> None:
        self.traced, self.frames = traced, frames
        self.at: dict[int, tuple[Counter[str], Any, int]] = {}
        self.report: dict[str, Any] = {}

    def mark(self, percent: int, done: int) -> None:
        import tracemalloc

        from prefect.context import FlowRunContext

        gc.collect()
        context = FlowRunContext.get()
        self.report[f"run_results_at_{percent}pct"] = len(getattr(context, "run_results", ()))
        snap = tracemalloc.take_snapshot() if self.traced else None
        self.at[percent] = (_types(), snap, done)
        if percent == 10 and 0 in self.at:
            (t0, s0, _), (t10, s10, _) = self.at[0], self.at[10]
            self.report["objects_added_by_10pct"] = dict((t10 - t0).most_common(15))
            if s0 is not None and s10 is not None:
                stats = s10.compare_to(s0, "lineno")
                self.report["traced_mb_added_by_10pct"] = round(
                    sum(s.size_diff for s in stats) / 2**20, 1)
                self.report["kb_added_by_10pct_by_line"] = {
                    str(s.traceback[0]): round(s.size_diff / 1024) for s in stats[:20]}
                if self.frames > 1:
                    self.report["top_tracebacks_by_10pct"] = [
                        {"kb": round(s.size_diff / 1024), "at": [str(f) for f in s.traceback]}
                        for s in s10.compare_to(s0, "traceback")[:4]]
        if percent == 50 and 10 in self.at:
            (t10, s10, d10), (t50, s50, d50) = self.at[10], self.at[50]
            items = max(1, d50 - d10)
            grew = (t50 - t10).most_common(25)
            self.report["objects_per_item"] = {k: round(v / items, 2) for k, v in grew}
            if s10 is not None and s50 is not None:
                stats = s50.compare_to(s10, "lineno")[:25]
                self.report["bytes_per_item_by_line"] = {
                    str(s.traceback[0]): round(s.size_diff / items) for s in stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--run-seconds", type=float, default=0.2)
    parser.add_argument("--no-rerun", action="store_true", help="skip the resume check")
    parser.add_argument("--diagnose", action="store_true", help="objects by type, 10 vs 50 %%")
    parser.add_argument("--tracemalloc", type=int, nargs="?", const=1, default=0,
                        metavar="FRAMES", help="with --diagnose: by line (FRAMES deep)")
    args = parser.parse_args(argv)
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(args.tracemalloc)

    from bench.servers import MotoProcess, PrefectServerProcess, SandboxProcess

    with SandboxProcess(run_seconds=args.run_seconds) as sb, MotoProcess() as s3, \
            PrefectServerProcess() as server:
        os.environ["PREFECT_API_URL"] = server.api_url  # before Prefect reads its settings
        report = _run(args, sb, s3)
    print(json.dumps(report))
    return 0


def _run(args: argparse.Namespace, sb: Any, s3: Any) -> dict[str, Any]:
    # A JSONL file, as a catalogue would be: a list of 10,000 dicts as the flow's parameter is
    # refused by the Prefect server (422), and a file is what `load_manifest` streams.
    import tempfile

    import boto3
    from pydantic import SecretStr

    from prefect_seedream.blocks import ReplicateCredentials, S3Destination
    from prefect_seedream.flows.batch.flow import generate_batch
    from prefect_seedream.flows.batch.progress import add_listener
    from prefect_seedream.flows.batch.report import BatchItemsFailed

    rows = ({"id": f"sku-{i:05d}", "prompt": f"studio photo of product {i}", "size": "1K",
             "aspect_ratio": "1:1"} for i in range(args.items))
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as spool:
        spool.writelines(json.dumps(row) + "\n" for row in rows)
    manifest = spool.name
    series: list[tuple[int, float]] = []
    every = max(1, args.items // 200)
    diagnosis = Diagnosis(bool(args.tracemalloc), args.tracemalloc) if args.diagnose else None

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") != "item":
            return
        done, total = event["finished"], max(event["total"], 1)
        if done % every == 0 or done == total:
            series.append((done, round(rss_mb(), 1)))
        if diagnosis is not None:
            for percent in (10, 50):
                if done == total * percent // 100:
                    diagnosis.mark(percent, done)

    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    client.create_bucket(Bucket="bench-batch")
    credentials = ReplicateCredentials(api_token=SecretStr(sb.api_token), base_url=sb.base_url)
    destination = S3Destination(bucket="bench-batch", prefix="bench",
                                endpoint_url=s3.endpoint_url, region_name="us-east-1",
                                aws_access_key_id="bench", aws_secret_access_key=SecretStr("bench"))
    if diagnosis is not None:
        diagnosis.mark(0, 0)
    rss_before = round(rss_mb(), 1)
    remove = add_listener(on_event)
    sampler = RssSampler()
    sampler.start()
    started = time.monotonic()
    state = generate_batch(manifest, credentials=credentials, destination=destination,
                           max_in_flight=args.in_flight, return_state=True)
    wall = time.monotonic() - started
    sampler.stop()
    remove()
    rss_after = round(rss_mb(), 1)
    data = state.result(raise_on_failure=False)
    result = data.result if isinstance(data, BatchItemsFailed) else data

    rerun: dict[str, Any] = {}
    if not args.no_rerun:
        rerun_started = time.monotonic()
        created_before = sb.counters()["creates"]
        generate_batch(manifest, credentials=credentials, destination=destination,
                       max_in_flight=args.in_flight)
        rerun = {"rerun_creates": sb.counters()["creates"] - created_before,
                 "rerun_wall_seconds": round(time.monotonic() - rerun_started, 1)}

    predictions = sb.predictions()
    prompts = Counter(p["input"]["prompt"] for p in predictions)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="bench-batch",
                                                             Prefix="bench/batch/")
    stored_results = sum(1 for page in pages for o in page.get("Contents", [])
                         if o["Key"].endswith("/result.json"))
    report: dict[str, Any] = {
        "items": args.items, "max_in_flight": args.in_flight,
        "model_seconds": args.run_seconds, "state": state.type.value,
        "wall_seconds": round(wall, 1), "items_per_second": round(args.items / wall, 2),
        "ideal_wall_seconds": round(args.items / args.in_flight * args.run_seconds, 1),
        "peak_rss_mb": round(sampler.peak, 1), "rss_before_mb": rss_before,
        "rss_after_mb": rss_after, "rss_samples": sampler.samples,
        **flatness(series, args.items),
        "series": series,
        "outcomes": result.counts if result is not None else None,
        "items_accounted_for": len(result.items) if result is not None else 0,
        "result_json_in_s3": stored_results,
        "predictions_created": len(predictions), "distinct_prompts_created": len(prompts),
        "duplicate_predictions": sum(n - 1 for n in prompts.values() if n > 1),
        **rerun,
        "actual_cost_usd": result.actual_cost_usd if result is not None else None,
    }
    if diagnosis is not None:
        report["diagnosis"] = diagnosis.report
    return report


def flatness(series: list[tuple[int, float]], total: int) -> dict[str, Any]:
    """RSS at 10 % and 100 % of items, the growth between, and the least-squares slope."""
    if not series:
        return {}

    def at(percent: int) -> float:
        target = total * percent / 100
        return min(series, key=lambda point: abs(point[0] - target))[1]

    tail = [(n, mb) for n, mb in series if n >= total / 10]
    slope = 0.0
    if len(tail) > 1:
        mean_n = sum(n for n, _ in tail) / len(tail)
        mean_mb = sum(mb for _, mb in tail) / len(tail)
        var = sum((n - mean_n) ** 2 for n, _ in tail)
        slope = sum((n - mean_n) * (mb - mean_mb) for n, mb in tail) / var if var else 0.0
    r10, r100 = at(10), at(100)
    return {"rss_at_10pct_mb": r10, "rss_at_50pct_mb": at(50), "rss_at_100pct_mb": r100,
            "growth_10_to_100_pct": round(100 * (r100 - r10) / r10, 1) if r10 else None,
            "slope_mb_per_1000_items": round(slope * 1000, 2)}


if __name__ == "__main__":
    sys.exit(main())
