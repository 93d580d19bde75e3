"""Figure 1d: throughput at scale, `generate_batch` vs the naive script at the same concurrency.

Issue 14's second orchestration target: 1,000 predictions at 64 in flight and 2,000 at 256 in
flight (sandbox latency 2 s, prerendered 1K outputs, rate limits off), the Prefect path at
>= 0.9x the script's predictions per minute. Measured as figure 5 is (`fig_scaling.measure`:
naive then Prefect at each level, CPU seconds of every process and the machine's busy share
recorded), first on the SQLite test harness, then on a Postgres-backed `prefect server start`
(skipped, and said so, without PostgreSQL). `BENCH_QUICK=1` runs 200 and 400 predictions.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import QUICK
from bench.servers import PostgresProcess, PrefectServerProcess, postgres_bin

LEVELS = [(64, 200), (256, 400)] if QUICK else [(64, 1000), (256, 2000)]


def run() -> dict[str, Any]:
    from bench import fig_scaling

    out: dict[str, Any] = {"latency_s": fig_scaling.LATENCY,
                           "sqlite": fig_scaling.measure(LEVELS)}
    if postgres_bin() is None:
        out["postgres"] = {"skipped": "PostgreSQL is not installed here (apt-get install "
                                      "postgresql); reported on SQLite alone"}
        return out
    started = time.perf_counter()
    with PostgresProcess() as pg, PrefectServerProcess(pg.url) as server:
        up = round(time.perf_counter() - started, 2)
        out["postgres"] = fig_scaling.measure(LEVELS, api_url=server.api_url)
    out["postgres"]["server_start_s"] = up
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
