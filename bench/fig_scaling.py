"""Figure 5: throughput (predictions/minute) at concurrency 1, 4, 16, 64, fixed model latency.

Sandbox latency 2 s, 1K single-image predictions. At each concurrency C, `min(64, max(4, 2C))`
predictions through the Prefect path (`generate_batch(max_in_flight=C)` if it exists, else an
async flow gathering `agenerate_images` under `Semaphore(C)`; API already up) and through the
naive script on C threads, interleaved. The ideal is C / 2 s. CPU seconds of every process (this
client, the Prefect server, the sandbox, moto) and the machine's busy share are recorded per run
to name the resource that stops the scaling.
"""

from __future__ import annotations

import queue
import time
import uuid
from typing import Any

from bench.common import (
    QUICK,
    CpuBusy,
    bench_env,
    cpu_delta,
    credentials,
    destination,
    naive_generate,
    process_cpu,
    replicate_client,
)
from bench.servers import MotoProcess, SandboxProcess

LEVELS = (1, 4, 16) if QUICK else (1, 4, 16, 64)
LATENCY = 2.0


def count_for(concurrency: int) -> int:
    """Two waves, at least 4 predictions; one wave of 64 at the top (time budget)."""
    return min(64, max(4, 2 * concurrency))


def run() -> dict[str, Any]:
    return measure([(c, count_for(c)) for c in LEVELS])


def measure(levels: list[tuple[int, int]], api_url: str | None = None) -> dict[str, Any]:
    """Each (concurrency, predictions) level through both paths, naive first; on the SQLite
    test harness, or on the Prefect server at `api_url` (figure 5b's Postgres run)."""
    bench_env()
    import contextlib
    import os
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.config import Config
    from prefect.testing.utilities import prefect_test_harness

    from bench import prefect_paths

    out: dict[str, Any] = {"latency_s": LATENCY, "levels": {}}
    with SandboxProcess(run_seconds=LATENCY) as sb, MotoProcess() as moto:
        bucket = "bench-fig5"
        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          config=Config(max_pool_connections=max(c for c, _ in levels)))
        s3.create_bucket(Bucket=bucket)
        # A `replicate.Client` for each of the script's threads, built before any timing: at
        # 256 threads one shared client failed requests with `ReadError: [Errno 9] Bad file
        # descriptor` (its httpx client's connections closed under other threads).
        clients: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(max(c for c, _ in levels)):
            clients.put(replicate_client(sb.base_url, sb.api_token))

        def naive_one(prompt: str) -> None:
            client = clients.get()  # never waits: as many clients as threads
            try:
                naive_generate(client, s3, bucket, f"naive/{uuid.uuid4().hex}", prompt)
            finally:
                clients.put(client)
        creds = credentials(sb.base_url, sb.api_token)
        dest = destination(moto.endpoint_url, bucket)
        if api_url:
            os.environ["PREFECT_API_URL"] = api_url
        with (contextlib.nullcontext() if api_url
              else prefect_test_harness(server_startup_timeout=120)):
            use_batch = prefect_paths.batch_available()
            try:
                if use_batch:
                    prefect_paths.run_batch(["warm 0", "warm 1"], creds, dest, 2, "fig5-warm")
            except Exception as exc:  # a half-built flow must not sink the suite
                out["batch_error"] = f"{type(exc).__name__}: {exc}"[:300]
                use_batch = False
            prefect_paths.run_agen([f"warm {i}" for i in range(2)], creds, dest, 2)
            out["prefect_path"] = ("generate_batch(max_in_flight=C)" if use_batch
                                   else "async flow: agenerate_images under Semaphore(C)")

            def prompts(tag: str, n: int) -> list[str]:
                return [f"fig5 {tag} {i} {uuid.uuid4().hex[:6]}" for i in range(n)]

            def naive(c: int, n: int) -> None:
                with ThreadPoolExecutor(max_workers=c) as pool:
                    list(pool.map(naive_one, prompts("naive", n)))

            def prefect(c: int, n: int) -> None:
                if use_batch:
                    prefect_paths.run_batch(prompts("batch", n), creds, dest, c,
                                            key_prefix=f"fig5-{c}-{uuid.uuid4().hex[:6]}")
                else:
                    prefect_paths.run_agen(prompts("agen", n), creds, dest, c)

            for c, n in levels:
                level: dict[str, Any] = {"n": n, "ideal_per_min": round(c / LATENCY * 60, 1)}
                for name, fn in (("naive", naive), ("prefect", prefect)):
                    before = process_cpu()
                    start = time.perf_counter()
                    try:
                        with CpuBusy() as busy:
                            fn(c, n)
                    except Exception as exc:  # one broken level must not sink the others
                        level[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                        continue
                    wall = time.perf_counter() - start
                    level[name] = {"wall_s": round(wall, 2),
                                   "per_min": round(n / wall * 60, 1),
                                   "machine_cpu_busy": busy.share,
                                   "cpu_s": cpu_delta(before, process_cpu())}
                if "error" in level["prefect"] or "error" in level["naive"]:
                    out.setdefault("errors", {})[str(c)] = {
                        side: level[side]["error"] for side in ("naive", "prefect")
                        if "error" in level[side]}
                    continue
                level["ratio"] = round(level["prefect"]["per_min"] / level["naive"]["per_min"], 3)
                out["levels"][str(c)] = level
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
