"""Figure 6: one worker at Replicate's rate limit, sustained; then two workers sharing it.

How it is measured: the sandbox runs with a 20 s model latency, prerendered outputs and its
create limit shaped like Replicate's (600 creates/min sustained, a burst of 100, 429 beyond);
moto's S3 server and a `prefect server start` (SQLite, then Postgres when installed) run in their
own processes. A global rate limit `replicate-create` (limit 100, slot decay 10/s, the command
`tasks.concurrency.create_command()` prints) is created through the Prefect API, and every
worker runs with `SEEDREAM_RATE_LIMIT_NAME` set to it. A worker is a separate Python process
running `generate_batch` over more items than the limit lets through in the run's duration
(`max_in_flight` 220: 20 s x 10/s plus room), so it is always asking for creates.

Measured, from the sandbox's own records: creates per 30 s window (the `created_at` of every
prediction), over `DURATION` seconds from the first create; total 429s sent (`rate_limited`);
predictions succeeded. CPU seconds (user + system, with exited children) of each worker, the
Prefect server (with its database when Postgres), the sandbox and moto, per prediction created.
The baseline is the limit itself: achieved creates/min over 600. With two workers the total
must stay <= 600/min and the 429s near zero. `BENCH_QUICK=1`: 60 s runs, Postgres one worker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import QUICK, ROOT, bench_env, destination
from bench.report import git_commit
from bench.servers import (
    MotoProcess,
    PostgresProcess,
    PrefectServerProcess,
    SandboxProcess,
    postgres_bin,
)

LATENCY = 20.0
DURATION = 60 if QUICK else 300
IN_FLIGHT = 220
RATE = 600
BURST = 100
WINDOW = 30.0
LIMIT_NAME = "replicate-create"
#: `FIG6_ONLY=sqlite_1w,...`: only these runs (for diagnosis while developing).
ONLY = [n for n in os.environ.get("FIG6_ONLY", "").split(",") if n]


def _stat(pid: int) -> tuple[int, float]:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), sum(float(x) for x in fields[11:15]) / ticks


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and every live descendant (plus the children they reaped)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)], cpu[int(entry)] = _stat(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    wanted, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in wanted:
                wanted.add(child)
                frontier.append(child)
    return sum(cpu.get(pid, 0.0) for pid in wanted)


def _shape() -> tuple[int, float]:
    from prefect_seedream.tasks.concurrency import limit_shape

    return limit_shape(RATE)


def _create_limit(api_url: str) -> None:
    limit, decay = _shape()  # the shape the plugin documents and deploys
    body = json.dumps({"name": LIMIT_NAME, "limit": limit,
                       "slot_decay_per_second": decay}).encode()
    request = urllib.request.Request(f"{api_url}/v2/concurrency_limits/", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()


def _worker(args: argparse.Namespace) -> None:
    """One worker process: `generate_batch` over `args.items` items; writes its own figures."""
    bench_env()
    from bench.common import credentials
    from prefect_seedream.flows.batch.flow import generate_batch
    from prefect_seedream.flows.batch.report import BatchItemsFailed

    manifest = [{"id": f"{args.tag}-{i:05d}", "prompt": f"sustained {args.tag} product {i}",
                 "size": "1K", "aspect_ratio": "1:1"} for i in range(args.items)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    state: Any = generate_batch(manifest, credentials=credentials(args.sandbox, args.token),
                                destination=destination(args.moto, args.bucket, args.tag),
                                max_in_flight=args.in_flight, return_state=True)
    data = state.result(raise_on_failure=False)
    result = data.result if isinstance(data, BatchItemsFailed) else data
    Path(args.out).write_text(json.dumps({
        "state": state.type.value, "wall_s": round(time.perf_counter() - wall0, 1),
        "flow_cpu_s": round(time.process_time() - cpu0, 2),
        "process_cpu_s": round(time.process_time(), 2),
        "counts": result.counts if result is not None else None,
        "item_seconds_median": round(sorted(o.seconds for o in result.items)[
            len(result.items) // 2], 1) if result is not None and result.items else None}))


def _windows(created: list[float], duration: float) -> list[float]:
    """Creates per minute in each `WINDOW` of the first `duration` seconds from the first."""
    start = min(created)
    counts = [0] * int(duration // WINDOW)
    for t in created:
        slot = int((t - start) // WINDOW)
        if slot < len(counts):
            counts[slot] += 1
    return [round(c * 60 / WINDOW, 1) for c in counts]


def _one_run(workers: int, server: PrefectServerProcess, db_pid: int | None,
             sb: SandboxProcess, moto: MotoProcess, bucket: str, tag: str,
             gcl: bool = True) -> dict[str, Any]:
    sb.reset()
    items = int(RATE / 60 * DURATION * (1.0 if workers == 1 else 0.6)) + IN_FLIGHT
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": server.api_url,
           "PREFECT_LOGGING_LEVEL": "WARNING"} | ({"SEEDREAM_RATE_LIMIT_NAME": LIMIT_NAME}
                                                  if gcl else {})
    outs = [Path(tempfile.mkstemp(prefix="fig6-", suffix=".json")[1]) for _ in range(workers)]
    others = {"prefect_server": lambda: tree_cpu(server.pid) + (tree_cpu(db_pid) if db_pid
                                                                else 0.0),
              "sandbox": lambda: tree_cpu(sb.pid), "moto": lambda: tree_cpu(moto.pid)}
    before = {k: f() for k, f in others.items()}
    started = time.perf_counter()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bench.fig_sustained", "--worker", "--out", str(out),
         "--items", str(items), "--in-flight", str(IN_FLIGHT), "--tag", f"{tag}-w{n}",
         "--sandbox", sb.base_url, "--token", sb.api_token, "--moto", moto.endpoint_url,
         "--bucket", bucket], cwd=str(ROOT), env=env) for n, out in enumerate(outs)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - started
    used = {k: round(f() - before[k], 2) for k, f in others.items()}
    reports = [json.loads(o.read_text()) if o.stat().st_size else {"error": f"exit {c}"}
               for o, c in zip(outs, codes, strict=True)]
    for out in outs:
        out.unlink(missing_ok=True)
    counters = sb.counters()
    preds = sb.predictions()
    created = [datetime.fromisoformat(p["created_at"].replace("Z", "+00:00")).timestamp()
               for p in preds]
    windows = _windows(created, DURATION)
    in_window = sum(1 for t in created if t - min(created) < DURATION)
    achieved = in_window * 60 / DURATION
    n = max(1, len(preds))
    cpu = {f"worker_{i}": r.get("process_cpu_s") for i, r in enumerate(reports)} | used
    worker_cpu = sum(r.get("process_cpu_s") or 0.0 for r in reports)
    return {
        "workers": workers, "items_per_worker": items, "max_in_flight": IN_FLIGHT,
        "wall_s": round(wall, 1), "creates": len(preds), "achieved_per_min": round(achieved, 1),
        "ratio": round(achieved / RATE, 3), "per_window_per_min": windows,
        "max_window_per_min": max(windows) if windows else None,
        "rate_limited_429": counters.get("rate_limited"),
        "succeeded": sum(1 for p in preds if p.get("status") == "succeeded"),
        "cpu_s": cpu,
        "cpu_ms_per_prediction": {
            "worker": round(worker_cpu / n * 1000, 1),
            **{k: round(v / n * 1000, 1) for k, v in used.items()}},
        "worker_cpu_share": [round((r.get("flow_cpu_s") or 0) / max(r.get("wall_s") or 1, 1), 3)
                             for r in reports],
        "server_cpu_share": round(used["prefect_server"] / wall, 3),
        "worker_reports": reports,
    }


def _analysis(runs: dict[str, Any]) -> list[str]:
    notes: list[str] = []
    for name, r in runs.items():
        if not isinstance(r, dict) or "ratio" not in r:
            continue
        if r["ratio"] < 0.95 and not name.endswith("nogcl"):
            notes.append(
                f"{name}: {r['achieved_per_min']:g}/min of 600; worker CPU share "
                f"{r['worker_cpu_share']}, Prefect server CPU share {r['server_cpu_share']} "
                f"(1.0 = one core), 429s {r['rate_limited_429']}, windows "
                f"{r['per_window_per_min']}")
        if name.endswith("nogcl"):
            notes.append(f"{name}: {r['rate_limited_429']} 429s for {r['creates']} creates: "
                         "with no shared limit nothing spaces the creates but Replicate's "
                         "429s (each retried after its Retry-After)")
        elif (r.get("rate_limited_429") or 0) > 0.02 * max(1, r["creates"]):
            notes.append(
                f"{name}: {r['rate_limited_429']} 429s for {r['creates']} creates: more "
                f"creates got through at once than Replicate's bucket (here {BURST}) holds; "
                "the 429s are retried after Retry-After")
    one, free = runs.get("sqlite_1w"), runs.get("sqlite_1w_nogcl")
    if isinstance(one, dict) and isinstance(free, dict) and "ratio" in one and "ratio" in free:
        notes.append(
            f"Without the shared limit one worker made {free['achieved_per_min']:g}/min "
            f"({free['rate_limited_429']} 429s); with it {one['achieved_per_min']:g}/min. "
            "Prefect's rate_limit() takes slots one increment request at a time per process "
            "(ConcurrencySlotAcquisitionService is a serial queue), and under the batch's own "
            "task-run writes the SQLite server answers some increments 503 (database locked); "
            "the client then backs off 2, 4, 8 s, stalling every create of the process. The "
            "plugin now takes the slots of all the creates waiting in a process in one request "
            "(tasks/concurrency.py `_Slots`, at most the limit's decay per second), which took "
            "one worker from ~310/min to the figure above; what is left is the worker's own "
            "CPU per prediction (target 1).")
    notes.append(
        "Found and fixed on the way: the plugin's Replicate httpx client kept httpx's default "
        "pool of 100 connections; sync mode holds each create's connection for the whole "
        "prediction, so one worker could never have more than 100 in flight (301/min at 20 s "
        "before the fix, measured). Now 1,024 (tasks/replicate_client/api.py POOL_LIMITS); the "
        "no-limit run shows the worker past 100 in flight.")
    return notes


def run() -> dict[str, Any]:
    bench_env()
    out: dict[str, Any] = {"latency_s": LATENCY, "duration_s": DURATION, "rate_per_min": RATE,
                           "burst": BURST, "window_s": WINDOW, "gcl": {
                               "name": LIMIT_NAME, "limit": _shape()[0],
                               "slot_decay_per_second": _shape()[1]},
                           "runs": {}}
    import boto3

    with SandboxProcess(run_seconds=LATENCY) as sb, MotoProcess() as moto:
        sb.configure(rate_limits=True, create_rate_per_minute=RATE, create_burst=BURST)
        bucket = "bench-fig6"
        boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing"
                     ).create_bucket(Bucket=bucket)
        with PrefectServerProcess() as server:
            _create_limit(server.api_url)
            # The no-GCL run is the diagnosis: what one worker does without the shared limit.
            for name, w, gcl in (("sqlite_1w", 1, True), ("sqlite_1w_nogcl", 1, False),
                                 ("sqlite_2w", 2, True)):
                if ONLY and name not in ONLY:
                    continue
                out["runs"][name] = _one_run(w, server, None, sb, moto, bucket,
                                             name.replace("_", "-"), gcl=gcl)
                print(json.dumps({name: out["runs"][name]}), flush=True)
        if ONLY and not any(n.startswith("postgres") for n in ONLY):
            out["postgres"] = "not run (FIG6_ONLY)"
        elif postgres_bin() is None:
            out["postgres"] = "skipped: PostgreSQL is not installed (apt-get install postgresql)"
        else:
            with PostgresProcess() as pg, PrefectServerProcess(pg.url) as server:
                _create_limit(server.api_url)
                for w in (1,) if QUICK else (1, 2):
                    out["runs"][f"postgres_{w}w"] = _one_run(w, server, pg.pid, sb, moto,
                                                             bucket, f"pg-{w}w")
                    print(json.dumps({f"postgres_{w}w": out["runs"][f"postgres_{w}w"]}),
                          flush=True)
            if QUICK:
                out["postgres"] = "one worker only under BENCH_QUICK"
    commit = git_commit()
    for run_out in out["runs"].values():
        run_out.setdefault("measured_at_commit", commit)
    if ONLY and os.environ.get("FIG6_KEEP"):
        _keep_earlier_runs(out)
    out["analysis"] = _analysis(out["runs"])
    return out


def _keep_earlier_runs(out: dict[str, Any]) -> None:
    """`FIG6_ONLY=... FIG6_KEEP=1`: re-run only those runs, keep the others from
    bench/results.json (each run says the commit it was measured at)."""
    earlier = json.loads((ROOT / "bench" / "results.json").read_text()).get(
        "figures", {}).get("fig_sustained", {})
    for name, run_out in earlier.get("runs", {}).items():
        if name not in out["runs"]:
            run_out.setdefault("measured_at_commit", earlier.get("measured_at_commit", "?"))
            out["runs"][name] = run_out
    if "postgres" in earlier and out.get("postgres") == "not run (FIG6_ONLY)":
        out.pop("postgres")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true")
    for name in ("out", "tag", "sandbox", "token", "moto", "bucket"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--items", type=int, default=0)
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
    else:
        print(json.dumps(run(), indent=2))


if __name__ == "__main__":
    main()
