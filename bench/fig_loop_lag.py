"""(b) Event-loop blocking: max lag of a heartbeat while 20 `agenerate_images` run at once.

Inside one async flow (API up), a heartbeat coroutine sleeps 10 ms in a loop and records how
late it wakes. Busy: 20 `agenerate_images` gathered (1K, sandbox latency 2 s). Baseline: the same
heartbeat in the same kind of flow with nothing else running, for the same time (machine noise).
Interleaved idle, busy, idle, busy.

The Prefect API is `prefect server start` in its own process (SQLite), as a user's flow runs
against a server or Prefect Cloud. (Until 2026-12-04 this figure ran under
`prefect_test_harness`, which a user's flow never does.) `loop_cpu_s` is the CPU time of the
loop's own thread during the run (`time.thread_time`): what ran on the loop, as opposed to the
loop waiting for the GIL while worker threads ran.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

from prefect import flow

from bench.common import QUICK, bench_env, credentials, destination, median, percentile, s3_client
from bench.servers import MotoProcess, PrefectServerProcess, SandboxProcess
from prefect_seedream.tasks.seedream_settings import SeedreamSettings

TASKS = 20
ROUNDS = 1 if QUICK else 2
TICK = 0.010
SHIPPED_THREADS: int = SeedreamSettings.model_fields["async_worker_threads"].default


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
    start, cpu = time.perf_counter(), time.thread_time()
    if prompts:
        await asyncio.gather(*(agenerate_images(p, size="1K", credentials=credentials,
                                                destination=destination) for p in prompts))
    else:
        await asyncio.sleep(idle_seconds)
    seconds, loop_cpu = time.perf_counter() - start, time.thread_time() - cpu
    stop.set()
    await beat
    ms = [x * 1000 for x in lags]
    return {"seconds": round(seconds, 2), "loop_cpu_s": round(loop_cpu, 2), "beats": len(ms),
            "max_ms": round(max(ms), 1),
            "p99_ms": round(percentile(ms, 0.99), 1), "p50_ms": round(percentile(ms, 0.5), 2)}


def _busy(creds: Any, dest: Any, threads: int) -> dict[str, Any]:
    os.environ["SEEDREAM_ASYNC_WORKER_THREADS"] = str(threads)
    try:
        return asyncio.run(lag_flow(
            [f"lag {i} {uuid.uuid4().hex[:6]}" for i in range(TASKS)], creds, dest, 0))
    finally:
        del os.environ["SEEDREAM_ASYNC_WORKER_THREADS"]


def _measure(creds: Any, dest: Any) -> dict[str, Any]:
    """Interleaved: idle, busy (the shipped 4 worker threads per loop), busy with 40 (anyio's
    default, what the async twins used before `SEEDREAM_ASYNC_WORKER_THREADS`)."""
    runs: dict[str, list[dict[str, Any]]] = {"idle": [], "busy": [], "busy_40_threads": []}
    # Warm-up: the measured run itself once (20 gathered), so that the first round does not
    # also pay first-use costs (imports, worker threads, pools) a long-lived worker paid once.
    asyncio.run(lag_flow([f"warm {i} {uuid.uuid4().hex[:6]}" for i in range(TASKS)], creds,
                         dest, 0))
    busy_seconds = 5.0
    for _ in range(ROUNDS):
        runs["idle"].append(asyncio.run(lag_flow([], creds, dest, busy_seconds)))
        runs["busy"].append(_busy(creds, dest, SHIPPED_THREADS))
        runs["busy_40_threads"].append(_busy(creds, dest, 40))
        busy_seconds = runs["busy"][-1]["seconds"]
    out: dict[str, Any] = {"runs": runs, "threads": SHIPPED_THREADS}
    for kind in runs:
        out[f"{kind}_max_ms"] = round(max(r["max_ms"] for r in runs[kind]), 1)
        out[f"{kind}_p99_ms"] = round(median([r["p99_ms"] for r in runs[kind]]), 1)
        out[f"{kind}_seconds"] = round(median([r["seconds"] for r in runs[kind]]), 2)
        out[f"{kind}_loop_cpu_share"] = round(median(
            [r["loop_cpu_s"] / r["seconds"] for r in runs[kind]]), 2)
    out["ratio_max"] = round(out["busy_max_ms"] / max(out["idle_max_ms"], 0.1), 2)
    return out


def run() -> dict[str, Any]:
    bench_env()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    out: dict[str, Any] = {"tasks": TASKS, "tick_ms": TICK * 1000}
    with SandboxProcess(run_seconds=2.0) as sb, MotoProcess() as moto:
        s3_client(moto.endpoint_url).create_bucket(Bucket="bench-lag")
        creds = credentials(sb.base_url, sb.api_token)
        dest = destination(moto.endpoint_url, "bench-lag")
        with PrefectServerProcess() as server, \
                temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            out.update(_measure(creds, dest))
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
