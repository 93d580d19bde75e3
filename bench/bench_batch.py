"""A 1,000-item `generate_batch` against the sandbox: wall time, peak RSS over time, accounting.

The sandbox (0.2 s model latency, rate limits off) and moto's S3 server run in their own
processes (`bench/servers.py`), as Replicate and S3 would, so the RSS measured is the batch's
own process: Prefect client, thread pool, HTTP clients, results. The Prefect API is a
`prefect_test_harness` (its server is a subprocess too, not counted).

Run: `python bench/bench_batch.py [--items 1000] [--in-flight 16] [--run-seconds 0.2]`.
Prints one JSON object last. Nothing here is asserted; read the numbers.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--run-seconds", type=float, default=0.2)
    args = parser.parse_args(argv)

    from prefect.testing.utilities import prefect_test_harness
    from pydantic import SecretStr

    from bench.servers import MotoProcess, SandboxProcess
    from prefect_seedream.blocks import ReplicateCredentials, S3Destination
    from prefect_seedream.flows.batch.flow import generate_batch
    from prefect_seedream.flows.batch.progress import add_listener
    from prefect_seedream.flows.batch.report import BatchItemsFailed

    manifest = [{"id": f"sku-{i:04d}", "prompt": f"studio photo of product {i}", "size": "1K",
                 "aspect_ratio": "1:1"} for i in range(args.items)]
    rss_at: dict[str, float] = {}
    marks = {25: "25%", 50: "50%", 75: "75%", 100: "100%"}

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") != "item":
            return
        percent = 100 * event["finished"] // max(event["total"], 1)
        for mark, name in marks.items():
            if percent >= mark and name not in rss_at:
                rss_at[name] = round(rss_mb(), 1)

    with SandboxProcess(run_seconds=args.run_seconds) as sb, MotoProcess() as s3, \
            prefect_test_harness(server_startup_timeout=90):
        import boto3

        client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
        client.create_bucket(Bucket="bench-batch")
        credentials = ReplicateCredentials(api_token=SecretStr(sb.api_token),
                                           base_url=sb.base_url)
        destination = S3Destination(bucket="bench-batch", prefix="bench",
                                    endpoint_url=s3.endpoint_url, region_name="us-east-1",
                                    aws_access_key_id="bench",
                                    aws_secret_access_key=SecretStr("bench"))
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
        data = state.result(raise_on_failure=False)
        result = data.result if isinstance(data, BatchItemsFailed) else data

        rerun_started = time.monotonic()
        created_before = sb.counters()["creates"]
        generate_batch(manifest, credentials=credentials, destination=destination,
                       max_in_flight=args.in_flight)
        rerun_wall = time.monotonic() - rerun_started
        rerun_creates = sb.counters()["creates"] - created_before

        predictions = sb.predictions()
        prompts = Counter(p["input"]["prompt"] for p in predictions)
        pages = client.get_paginator("list_objects_v2").paginate(Bucket="bench-batch",
                                                                 Prefix="bench/batch/")
        stored_results = sum(1 for page in pages for o in page.get("Contents", [])
                             if o["Key"].endswith("/result.json"))
        report = {
            "items": args.items, "max_in_flight": args.in_flight,
            "model_seconds": args.run_seconds, "state": state.type.value,
            "wall_seconds": round(wall, 1), "items_per_second": round(args.items / wall, 2),
            "ideal_wall_seconds": round(args.items / args.in_flight * args.run_seconds, 1),
            "peak_rss_mb": round(sampler.peak, 1), "rss_before_mb": rss_before,
            "rss_at_progress_mb": rss_at, "rss_samples": sampler.samples,
            "outcomes": result.counts if result is not None else None,
            "items_accounted_for": len(result.items) if result is not None else 0,
            "result_json_in_s3": stored_results,
            "predictions_created": created_before, "distinct_prompts_created": len(prompts),
            "duplicate_predictions": sum(n - 1 for n in prompts.values() if n > 1),
            "rerun_creates": rerun_creates, "rerun_wall_seconds": round(rerun_wall, 1),
            "actual_cost_usd": result.actual_cost_usd if result is not None else None,
        }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
