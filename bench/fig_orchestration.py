"""Figure 1: orchestration overhead, and Prefect's own start-up (reported separately).

40 single-image 1K predictions (issue #14's figure), sandbox model latency 2 s, concurrency 10.
Baseline: 10 threads running the naive script (`replicate.run`, read the bytes, `put_object`).
Prefect side with the API already up (`prefect_test_harness()` entered before timing):
`generate_batch(max_in_flight=10)` when it exists, else an async flow gathering
`agenerate_images` under `Semaphore(10)`. Variants run interleaved, after one warm-up each.
The sandbox's counters give each variant's Replicate API requests per prediction (creates, gets,
lists, cancels), and the ledger's S3 calls are timed to attribute the overhead.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import (
    QUICK,
    bench_env,
    credentials,
    destination,
    interleave,
    median,
    naive_generate,
    replicate_client,
)
from bench.servers import MotoProcess, SandboxProcess

N = 10 if QUICK else 40
CONCURRENCY = 10
LATENCY = 2.0
ROUNDS = 1 if QUICK else 3
# Per-variant experiments (e.g. sync-mode creates) are in figure 2; here only the shipped path.


def naive_batch(client: Any, s3: Any, bucket: str, prompts: list[str], limit: int) -> int:
    with ThreadPoolExecutor(max_workers=limit) as pool:
        sizes = list(pool.map(
            lambda ip: naive_generate(client, s3, bucket, f"naive/{uuid.uuid4().hex}", ip[1]),
            enumerate(prompts)))
    return len(sizes)


def _small(fn: Any) -> Any:
    """Warm-up: the variant's code path once, on 2 predictions, with the same concurrency."""
    global N
    saved, N = N, 2
    try:
        return fn(-1)
    finally:
        N = saved


def _time_ledger() -> dict[str, Any]:
    """Time (not change) the prediction ledger's S3 calls, to attribute the overhead."""
    from prefect_seedream.tasks.prediction_ledger import Ledger

    record: dict[str, Any] = {"calls": {}}

    def wrap(name: str) -> None:
        original = getattr(Ledger, name)

        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                record["calls"].setdefault(name, []).append(time.perf_counter() - start)

        setattr(Ledger, name, timed)

    for name in ("read", "write", "mark_open", "close"):
        wrap(name)
    return record


_API_CALLS = ("creates", "gets", "lists", "cancels")


def run(api_url: str | None = None) -> dict[str, Any]:
    """The figure on Prefect's test harness (SQLite, the embedded default), or with `api_url`
    on a running `prefect server` (figure 1 on Postgres: `bench/fig_orchestration_pg.py`)."""
    bench_env()
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url  # before Prefect reads its settings
    t0 = time.perf_counter()
    import prefect  # noqa: F401
    from prefect.testing.utilities import prefect_test_harness

    from bench import prefect_paths

    import_seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"n": N, "concurrency": CONCURRENCY, "latency_s": LATENCY,
                           "rounds": ROUNDS, "size": "1K"}
    with SandboxProcess(run_seconds=LATENCY) as sb, MotoProcess() as moto:
        bucket = "bench-fig1"
        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          config=Config(max_pool_connections=CONCURRENCY))
        s3.create_bucket(Bucket=bucket)
        client = replicate_client(sb.base_url, sb.api_token)
        creds = credentials(sb.base_url, sb.api_token)
        dest = destination(moto.endpoint_url, bucket)

        t1 = time.perf_counter()
        with (contextlib.nullcontext() if api_url
              else prefect_test_harness(server_startup_timeout=120)):
            out["prefect_startup"] = {"import_prefect_s": round(import_seconds, 2),
                                      "server_start_s": round(time.perf_counter() - t1, 2)}

            def prompts(tag: str, n: int) -> list[str]:
                return [f"fig1 {tag} round {n} #{i} {uuid.uuid4().hex[:6]}" for i in range(N)]

            variants: dict[str, Any] = {
                "naive": lambda n: naive_batch(client, s3, bucket, prompts("naive", n),
                                               CONCURRENCY),
            }
            if prefect_paths.batch_available():
                out["prefect_path"] = "generate_batch(max_in_flight=10)"
                variants["prefect"] = lambda n: prefect_paths.run_batch(
                    prompts("batch", n), creds, dest, CONCURRENCY, key_prefix=f"fig1-batch-{n}")
                variants["no_heartbeat"] = lambda n: prefect_paths.run_batch_without_heartbeat(
                    prompts("nohb", n), creds, dest, CONCURRENCY, key_prefix=f"fig1-nohb-{n}")
            else:
                out["prefect_path"] = "async flow: agenerate_images under Semaphore(10)"
                variants["prefect"] = lambda n: prefect_paths.run_agen(
                    prompts("agen", n), creds, dest, CONCURRENCY)
            # Prefect's own fixed cost per flow run (create, states, result, and the engine's
            # heartbeat thread, whose join waits out its current 1 s sleep): an empty flow.
            variants["empty_flow"] = lambda n: prefect_paths.run_empty()
            ledger_time = _time_ledger()

            # Warm-up (first flow run in a process is cold); timed apart as start-up.
            warm: dict[str, Any] = {}
            for name, fn in list(variants.items()):
                start = time.perf_counter()
                try:
                    _small(fn)
                    warm[name] = round(time.perf_counter() - start, 2)
                except Exception as exc:  # a half-built flow must not sink the suite
                    warm[name] = f"error: {type(exc).__name__}: {exc}"[:300]
                    traceback.print_exc()
                    del variants[name]
            out["warmup_s"] = warm
            ledger_time["calls"] = {}

            requests: dict[str, list[float]] = {}

            def timed(name: str, fn: Any) -> Any:
                def go(n: int) -> float | str:
                    before = sb.counters()
                    start = time.perf_counter()
                    try:
                        fn(n)
                    except Exception as exc:
                        traceback.print_exc()
                        return f"error: {type(exc).__name__}: {exc}"[:300]
                    seconds = time.perf_counter() - start
                    after = sb.counters()
                    calls = sum(after[c] - before[c] for c in _API_CALLS)
                    if name not in ("empty_flow", "no_heartbeat"):
                        requests.setdefault(name, []).append(round(calls / N, 3))
                    return seconds
                return go

            raw = interleave({k: timed(k, v) for k, v in variants.items()}, ROUNDS)
    out["requests_per_prediction"] = {k: median(v) for k, v in requests.items()}
    calls = ledger_time.get("calls", {})
    out["ledger"] = {
        "note": "wall seconds inside prefect_seedream.tasks.prediction_ledger during the timed "
                "Prefect runs",
        **{name: {"calls": len(v), "total_s": round(sum(v), 2),
                  "mean_s": round(sum(v) / len(v), 3), "max_s": round(max(v), 2)}
           for name, v in calls.items() if v},
    }
    walls = {k: [round(x, 2) for x in v if isinstance(x, float)] for k, v in raw.items()}
    errors = {k: [x for x in v if isinstance(x, str)] for k, v in raw.items()}
    out["wall_s"] = walls
    out["errors"] = {k: v for k, v in errors.items() if v}
    base = median(walls["naive"])
    out["naive_s"] = round(base, 2)
    out["ideal_s"] = round(-(-N // CONCURRENCY) * LATENCY, 2)
    out["ratios"] = {k: round(median(v) / base, 3) for k, v in walls.items()
                     if v and k != "empty_flow"}
    if walls.get("empty_flow"):
        out["empty_flow_s"] = round(median(walls["empty_flow"]), 3)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
