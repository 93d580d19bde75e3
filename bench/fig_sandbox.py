"""(a) Sandbox GET latency with 250 predictions in flight, vs 1 in flight (same run, interleaved).

Uses `bench/bench_sandbox.py`'s helpers; the sandbox runs in this process (as in tests).
"""

from __future__ import annotations

import threading
from typing import Any

import httpx

from bench.bench_sandbox import MODEL, summarize, timed_gets
from bench.common import QUICK, bench_env

IN_FLIGHT = 250
GETS_PER_BLOCK = 100 if QUICK else 250
ROUNDS = 2 if QUICK else 4
THREADS = 8


def _fill(sb: Any, count: int) -> list[str]:
    ids = []
    with httpx.Client(base_url=sb.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {sb.api_token}"}) as client:
        for n in range(count):
            response = client.post(f"/v1/models/{MODEL}/predictions",
                                   json={"input": {"prompt": f"bench {n}", "aspect_ratio": "1:1"}})
            ids.append(response.json()["id"])
    return ids


def _threaded(sb: Any, ids: list[str]) -> list[float]:
    buckets: list[list[float]] = [[] for _ in range(THREADS)]
    per = max(1, GETS_PER_BLOCK // THREADS)
    threads = [threading.Thread(target=lambda i=i: buckets[i].extend(
        timed_gets(sb.base_url, sb.api_token, ids, per))) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [s for b in buckets for s in b]


def run() -> dict[str, Any]:
    bench_env()
    from prefect_seedream.sandbox import Sandbox, SandboxConfig

    config = SandboxConfig(run_seconds=600.0, rate_limits=False)
    with Sandbox(config=config) as loaded, Sandbox(config=config) as idle:
        loaded_ids, idle_ids = _fill(loaded, IN_FLIGHT), _fill(idle, 1)
        in_flight = sum(p["status"] in ("starting", "processing") for p in loaded.predictions())
        samples: dict[str, list[float]] = {k: [] for k in
                                           ("loaded_seq", "idle_seq", "loaded_8t", "idle_8t")}
        for _ in range(ROUNDS):
            samples["loaded_seq"] += timed_gets(loaded.base_url, loaded.api_token, loaded_ids,
                                                GETS_PER_BLOCK)
            samples["idle_seq"] += timed_gets(idle.base_url, idle.api_token, idle_ids,
                                              GETS_PER_BLOCK)
            samples["loaded_8t"] += _threaded(loaded, loaded_ids)
            samples["idle_8t"] += _threaded(idle, idle_ids)
    out: dict[str, Any] = {"in_flight": in_flight, "threads": THREADS}
    out.update({k: summarize(v) for k, v in samples.items()})
    out["ratio_p50_seq"] = round(out["loaded_seq"]["p50_ms"] / out["idle_seq"]["p50_ms"], 3)
    out["ratio_p99_seq"] = round(out["loaded_seq"]["p99_ms"] / out["idle_seq"]["p99_ms"], 3)
    out["ratio_p99_8t"] = round(out["loaded_8t"]["p99_ms"] / out["idle_8t"]["p99_ms"], 3)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
