"""(b) Event-loop blocking: max lag of a heartbeat while 20 `agenerate_images` run at once.

Inside one async flow (API up), a heartbeat coroutine sleeps 10 ms in a loop and records how
late it wakes. Busy: 20 `agenerate_images` gathered (1K, sandbox latency 2 s). Baseline: the same
heartbeat in the same kind of flow with nothing else running, for the same time (machine noise).
Interleaved idle, busy, idle, busy.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from prefect import flow

from bench.common import QUICK, bench_env, credentials, destination, median, percentile, s3_client
from bench.servers import MotoProcess, SandboxProcess

TASKS = 20
ROUNDS = 1 if QUICK else 2
TICK = 0.010


async def _heartbeat(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append(time.perf_counter() - start - TICK)


@flow(name="bench-loop-lag")
async def lag_flow(prompts: list[str], credentials: Any, destination: Any,
                   idle_seconds: float) -> dict[str, Any]:
    from prefect_seedream.flows.image_flows_async import agenerate_images

    lags: list[float] = []
    stop = asyncio.Event()
    beat = asyncio.create_task(_heartbeat(stop, lags))
    start = time.perf_counter()
    if prompts:
        await asyncio.gather(*(agenerate_images(p, size="1K", credentials=credentials,
                                                destination=destination) for p in prompts))
    else:
        await asyncio.sleep(idle_seconds)
    seconds = time.perf_counter() - start
    stop.set()
    await beat
    ms = [x * 1000 for x in lags]
    return {"seconds": round(seconds, 2), "beats": len(ms), "max_ms": round(max(ms), 1),
            "p99_ms": round(percentile(ms, 0.99), 1), "p50_ms": round(percentile(ms, 0.5), 2)}


def run() -> dict[str, Any]:
    bench_env()
    from prefect.testing.utilities import prefect_test_harness

    out: dict[str, Any] = {"tasks": TASKS, "tick_ms": TICK * 1000, "runs": {"idle": [], "busy": []}}
    with SandboxProcess(run_seconds=2.0) as sb, MotoProcess() as moto:
        s3_client(moto.endpoint_url).create_bucket(Bucket="bench-lag")
        creds = credentials(sb.base_url, sb.api_token)
        dest = destination(moto.endpoint_url, "bench-lag")
        with prefect_test_harness(server_startup_timeout=120):
            asyncio.run(lag_flow([f"warm {uuid.uuid4().hex}"], creds, dest, 0))
            busy_seconds = 5.0
            for _ in range(ROUNDS):
                idle = asyncio.run(lag_flow([], creds, dest, busy_seconds))
                busy = asyncio.run(lag_flow(
                    [f"lag {i} {uuid.uuid4().hex[:6]}" for i in range(TASKS)], creds, dest, 0))
                busy_seconds = busy["seconds"]
                out["runs"]["idle"].append(idle)
                out["runs"]["busy"].append(busy)
    for kind in ("idle", "busy"):
        out[f"{kind}_max_ms"] = round(max(r["max_ms"] for r in out["runs"][kind]), 1)
        out[f"{kind}_p99_ms"] = round(median([r["p99_ms"] for r in out["runs"][kind]]), 1)
    out["ratio_max"] = round(out["busy_max_ms"] / max(out["idle_max_ms"], 0.1), 2)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
