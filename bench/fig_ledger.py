"""Figure d: what the prediction ledger costs per prediction, before and after "paid once by
construction".

Each variant makes exactly the ledger calls one prediction costs, with no Replicate call in
between, so the figure is the ledger alone:

- `before_flow`: the Prefect-Variables ledger the flows used before: create the pending entry,
  update it with the prediction id, update it at settle (3 writes to the Prefect API, here the
  SQLite-backed test server). It had no claim: two runs could both pay.
- `before_batch`: the batch's own S3 records before: PUT `_running/{run}/{key}.json`, DELETE it
  (2 S3 requests; no claim either).
- `after_flow`: the S3 ledger, a flow run's request: claim (`PutObject If-None-Match: *`), record
  the id (`If-Match`), end it (`If-Match`): 3 conditional writes.
- `after_batch`: a batch item in the S3 ledger: claim and record the id (2 conditional writes),
  plus the run's open pointer (PUT at the claim, DELETE at the end); its `result.json`, written
  anyway, means done: 4 requests.

- `after_flow_spend_day` / `after_flow_spend_day_month`: `after_flow` under a spend limit per day
  (and per month): each limited period's record is read and compare-and-swapped at the
  reservation and again at the settle (2 requests per period, twice), on one record that every
  prediction of the period shares, so at 16 threads the conditional writes collide and retry.

Latency: one prediction's ledger calls back to back, median of N, rounds interleaved (before,
after, before, ...). Throughput: the same at 16 threads at once (a batch's `max_in_flight`).
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import QUICK, bench_env, destination, median
from bench.servers import MotoProcess

N = 40 if QUICK else 200
THREADS = 16


def _before_flow(client: Any) -> Any:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    def one(i: int) -> None:
        name = f"seedream-{uuid.uuid4()}-{i:06d}"
        client.create_variable(VariableCreate(name=name, tags=["seedream"], value={
            "prediction_id": None, "status": "pending", "sent_at": "2026-12-02T00:00:00+00:00",
            "model": "bytedance/seedream-4", "input": {"prompt": "a lighthouse", "size": "2K"}}))
        client.update_variable(VariableUpdate(name=name, value={
            "prediction_id": f"p{i}", "status": "starting"}))
        client.update_variable(VariableUpdate(name=name, value={
            "prediction_id": f"p{i}", "status": "succeeded"}))
    return one


def _before_batch(target: Any) -> Any:
    import json

    s3 = target.get_client()

    def one(i: int) -> None:
        key = f"{target.prefix}/batch/_running/run/{uuid.uuid4().hex}.json"
        s3.put_object(Bucket=target.bucket, Key=key,
                      Body=json.dumps({"prediction_id": f"p{i}"}).encode())
        s3.delete_object(Bucket=target.bucket, Key=key)
    return one


def _after(target: Any, scope: str) -> Any:
    from prefect_seedream.tasks import prediction_ledger as ledger
    from prefect_seedream.tasks.replicate_client.prediction import PredictionStatus
    from prefect_seedream.tasks.replicate_client.protocol import utcnow
    from prefect_seedream.tasks.replicate_client.request_builders import RequestMatch

    at = ledger.Ledger(target, target.prefix)
    match = RequestMatch.of("bytedance/seedream-4", {"prompt": "a lighthouse", "size": "2K"})

    def one(i: int) -> None:
        claim = ledger.Claim(at, scope, uuid.uuid4().hex, run="bench-run")
        assert claim.send(sent_at=utcnow(), match=match.to_json(), window=90, replace=False)
        assert claim.created(f"p{i}", PredictionStatus.STARTING)
        claim.end(f"p{i}", PredictionStatus.SUCCEEDED)
    return one


def _after_with_spend(target: Any, kinds: tuple[str, ...]) -> Any:
    """`after_flow`, plus the spend limit's reserve before the create and settle at the end."""
    from prefect_seedream.tasks import prediction_ledger as ledger
    from prefect_seedream.tasks.spend_limit import Limits, SpendGuard

    at = ledger.Ledger(target, f"{target.prefix}/{'-'.join(kinds)}")
    limit = {kind: 10**9 if kind in kinds else None for kind in ("day", "month")}
    guard = SpendGuard(at, Limits(usd={"day": None, "month": None}, images=limit), 0.03)
    claimed = _after(target, ledger.run_scope("bench-run"))

    def one(i: int) -> None:
        held = guard.reserve(uuid.uuid4().hex, 1, claim=None, expires_in=600,
                             lookup=lambda _: None)
        claimed(i)
        held.settle(1)
    return one


def _latency_ms(one: Any, n: int) -> float:
    samples = []
    for i in range(n):
        started = time.perf_counter()
        one(i)
        samples.append((time.perf_counter() - started) * 1000)
    return median(samples)


def _throughput(one: Any, n: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - started)


def run() -> dict[str, Any]:
    bench_env()
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    from prefect_seedream.tasks import prediction_ledger as ledger

    with MotoProcess() as moto, prefect_test_harness(server_startup_timeout=120):
        target = destination(moto.endpoint_url, "bench-ledger")
        target.get_client().create_bucket(Bucket="bench-ledger")
        with get_client(sync_client=True) as client:
            variants = {
                "before_flow": _before_flow(client),
                "before_batch": _before_batch(target),
                "after_flow": _after(target, ledger.run_scope("bench-run")),
                "after_batch": _after(target, ledger.ITEMS),
                "after_flow_spend_day": _after_with_spend(target, ("day",)),
                "after_flow_spend_day_month": _after_with_spend(target, ("day", "month")),
            }
            for one in variants.values():  # warm up connections and the server
                _latency_ms(one, 5)
            latency: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(2):  # interleaved rounds
                for name, one in variants.items():
                    latency[name].append(_latency_ms(one, N // 2))
            throughput = {name: round(_throughput(one, N), 1) for name, one in variants.items()}
    return {
        "predictions": N, "threads": THREADS,
        "latency_ms": {name: round(median(v), 2) for name, v in latency.items()},
        "per_second_at_16": throughput,
        "requests_per_prediction": {"before_flow": 3, "before_batch": 2, "after_flow": 3,
                                    "after_batch": 4, "after_flow_spend_day": 7,
                                    "after_flow_spend_day_month": 11},
        "claims_two_runs_safely": {"before_flow": False, "before_batch": False,
                                   "after_flow": True, "after_batch": True,
                                   "after_flow_spend_day": True,
                                   "after_flow_spend_day_month": True},
    }


__all__ = ["run"]
