"""Benchmark the Seedream sandbox: GET latency with 200+ predictions in flight, and rendering.

Run: `python bench/bench_sandbox.py [--predictions 250] [--gets 2000] [--threads 8]`.
Prints a markdown table and a JSON line. Nothing here is asserted; read the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect_seedream.sandbox import Sandbox, SandboxConfig

MODEL = "bytedance/seedream-4"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 0.50), 3),
            "p99_ms": round(percentile(ms, 0.99), 3), "mean_ms": round(statistics.mean(ms), 3),
            "max_ms": round(max(ms), 3)}


def timed_gets(base_url: str, token: str, ids: list[str], count: int) -> list[float]:
    samples: list[float] = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as c:
        for n in range(count):
            start = time.perf_counter()
            response = c.get(f"/v1/predictions/{ids[n % len(ids)]}")
            samples.append(time.perf_counter() - start)
            response.raise_for_status()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--predictions", type=int, default=250)
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)

    config = SandboxConfig(run_seconds=120.0, rate_limits=False)
    results: dict[str, object] = {}
    with Sandbox(config=config) as sb, httpx.Client(
        base_url=sb.base_url, headers={"Authorization": f"Bearer {sb.api_token}"}, timeout=30
    ) as client:
        creates: list[float] = []
        ids: list[str] = []
        for n in range(args.predictions):
            start = time.perf_counter()
            response = client.post(f"/v1/models/{MODEL}/predictions",
                                   json={"input": {"prompt": f"bench {n}", "aspect_ratio": "1:1"}})
            creates.append(time.perf_counter() - start)
            ids.append(response.json()["id"])
        in_flight = sum(p["status"] in ("starting", "processing") for p in sb.predictions())
        results["in_flight"] = in_flight
        results["create"] = summarize(creates)
        results["get_sequential"] = summarize(timed_gets(sb.base_url, sb.api_token, ids, args.gets))

        per_thread = max(1, args.gets // args.threads)
        buckets: list[list[float]] = [[] for _ in range(args.threads)]
        threads = [threading.Thread(target=lambda i=i: buckets[i].extend(
            timed_gets(sb.base_url, sb.api_token, ids, per_thread))) for i in range(args.threads)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        concurrent = summarize([s for b in buckets for s in b])
        concurrent["requests_per_second"] = round(per_thread * args.threads / elapsed, 1)
        results[f"get_{args.threads}_threads"] = concurrent

        sb.configure(run_seconds=0.0)
        for size, ratio in (("2K", "4:3"), ("4K", "1:1")):
            done = client.post(f"/v1/models/{MODEL}/predictions", headers={"Prefer": "wait"},
                               json={"input": {"prompt": f"render {size}", "size": size,
                                               "aspect_ratio": ratio}}).json()
            url = done["output"][0]
            start = time.perf_counter()
            first = client.get(url).content
            cold = time.perf_counter() - start
            start = time.perf_counter()
            client.get(url)
            warm = time.perf_counter() - start
            results[f"download_{size}"] = {"bytes": len(first), "first_ms": round(cold * 1000, 1),
                                           "cached_ms": round(warm * 1000, 1)}
        for prediction_id in ids:
            client.post(f"/v1/predictions/{prediction_id}/cancel")

    print("| metric | value |\n| --- | --- |")
    for key, value in results.items():
        print(f"| {key} | {json.dumps(value)} |")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
