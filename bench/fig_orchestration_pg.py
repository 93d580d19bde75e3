"""Figure 1 again, on a Postgres-backed `prefect server start` (what Prefect recommends past
one machine) instead of the SQLite test harness: same predictions, same interleaved naive
baseline, in this figure's own process.

PostgreSQL comes from Debian's packages (`make bench` installs `postgresql` when it can); the
bench starts a throwaway cluster on a loopback port with its data in a temporary directory and
points `PREFECT_API_DATABASE_CONNECTION_URL` at it. Without PostgreSQL the figure says so and
BENCHMARKS.md reports SQLite alone: it is never faked.
"""

from __future__ import annotations

import time
from typing import Any

from bench.servers import PostgresProcess, PrefectServerProcess, postgres_bin


def run() -> dict[str, Any]:
    if postgres_bin() is None:
        return {"skipped": "PostgreSQL is not installed here (apt-get install postgresql); "
                           "figure 1 is reported on SQLite alone"}
    from bench import fig_orchestration

    started = time.perf_counter()
    with PostgresProcess() as pg, PrefectServerProcess(pg.url) as server:
        up = round(time.perf_counter() - started, 2)
        out = fig_orchestration.run(api_url=server.api_url)
    out["database"] = "postgresql (Debian package, throwaway cluster on loopback)"
    out.setdefault("prefect_startup", {})["server_start_s"] = up
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
