"""The prediction ledger's promises over real parts: one claim wins across processes, two batch
runs of one manifest pay for each item once, and an unknown create outcome names its request and
is settled by the next attempt instead of paid again."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from batch_processes import run_batches_at_once
from prefect import flow

from prefect_seedream import CreateOutcomeUnknown, SeedreamInput, create_prediction
from prefect_seedream.tasks import prediction_ledger as ledger
from prefect_seedream.tasks.replicate_client.protocol import utcnow

pytestmark = pytest.mark.usefixtures("prefect_harness")

PRICE = 0.03


def test_of_many_claims_at_once_exactly_one_wins(destination: Any, s3_client: Any) -> None:
    """S3's conditional write is the claim: eight writers, one winner, one record."""
    at = ledger.Ledger(destination, destination.prefix)
    start = threading.Barrier(8)
    won: list[bool] = []

    def claim(i: int) -> None:
        mine = ledger.Claim(at, ledger.ITEMS, "same-request", run=f"run-{i}")
        start.wait()
        won.append(mine.send(sent_at=utcnow(), match={}, window=90, replace=False))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * 7 + [True]
    record = json.loads(s3_client.get_object(
        Bucket=destination.bucket, Key=at.path(ledger.ITEMS, "same-request"))["Body"].read())
    assert record["state"] == "sending" and "prompt" not in json.dumps(record)


def test_two_processes_running_one_manifest_pay_for_each_item_once(
    seedream_sandbox: Any, s3_endpoint: str, bucket: str, s3_client: Any, tmp_path: Path,
    record_outcome: Any,
) -> None:
    """Two workers (or an overlapping schedule) on the same 16-row manifest at the same time:
    each item is created once, and both runs end with every item accounted for."""
    seedream_sandbox.configure(run_seconds=3)
    rows = [{"id": f"p{i}", "prompt": f"catalogue shot {i}", "size": "1K"} for i in range(16)]
    results = [[(i["status"], i["cost_usd"], i["prediction_id"],
                 [image["uri"] for image in i["images"]]) for i in items]
               for items in run_batches_at_once(seedream_sandbox, s3_endpoint, bucket,
                                                tmp_path, [rows, rows])]

    assert seedream_sandbox.counters()["creates"] == 16
    for items in results:
        assert len(items) == 16
        assert {status for status, *_ in items} <= {"succeeded", "attached", "already_done"}
    # Both runs name the same prediction for each item; only its creator counts its cost.
    assert [item[2] for item in results[0]] == [item[2] for item in results[1]]
    assert sum(cost for items in results for _, cost, *_ in items) == pytest.approx(16 * PRICE)
    stored = {o["Key"] for page in s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="shared/batch/") for o in page.get("Contents", [])
        if o["Key"].endswith(".jpg")}
    assert stored == {uri.split(f"s3://{bucket}/")[1] for _, _, _, uris in results[0]
                      for uri in uris}
    assert not [p for p in seedream_sandbox.predictions()
                if p["status"] in ("starting", "processing")]
    record_outcome("two processes run generate_batch on one 16-row manifest at once",
                   "each item claimed once in the S3 ledger; the other run attached to it",
                   created=seedream_sandbox.counters()["creates"], requests=16, left_running=0)


def test_an_unknown_create_names_its_request_and_the_rerun_settles_it_without_paying_again(
    seedream_sandbox: Any, credentials: Any, destination: Any, record_outcome: Any,
) -> None:
    """Create answers lost while the list is down: `CreateOutcomeUnknown` names the request key
    and its record; once the list is back, the retry finds the prediction instead of paying."""
    request = SeedreamInput(prompt="a lantern in fog", size="1K")
    errors: list[str] = []

    @flow(retries=1, retry_delay_seconds=0)
    def generate() -> str:
        try:
            return str(create_prediction(request, credentials=credentials, ledger=destination).id)
        except CreateOutcomeUnknown as exc:
            errors.append(str(exc))
            seedream_sandbox.faults.error_share(0.0, status=503, routes=["list"])  # list is back
            raise

    seedream_sandbox.faults.drop_create_responses(2)
    seedream_sandbox.faults.error_share(1.0, status=503, routes=["list"])
    prediction_id = generate()
    assert len(errors) == 1
    assert "Request key " in errors[0] and f"s3://{destination.bucket}/runs/_ledger/" in errors[0]
    assert [p["id"] for p in seedream_sandbox.predictions()] == [prediction_id]
    assert seedream_sandbox.counters()["requests"]["create"] == 1
    record_outcome("create answer lost, list down, then the flow run retried",
                   "CreateOutcomeUnknown naming the request key; the retry found the prediction "
                   "by its recorded digest and re-attached", created=1, left_running=0)


def test_two_runs_naming_one_request_share_one_prediction(
    seedream_sandbox: Any, credentials: Any, destination: Any, record_outcome: Any,
) -> None:
    """An event delivered twice, or an order submitted from two places at once: two flow runs
    with the same `request_id` and input pay once and both return its images; the same id with
    another input is another request."""
    from concurrent.futures import ThreadPoolExecutor

    from prefect_seedream import generate_images

    seedream_sandbox.configure(run_seconds=2)

    def order(prompt: str) -> list[Any]:
        return generate_images(prompt, size="1K", request_id="order-1042",  # type: ignore[no-any-return]
                               credentials=credentials, destination=destination)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(order, ["a teapot, studio light"] * 2)
    assert seedream_sandbox.counters()["creates"] == 1
    assert [image.uri for image in first] == [image.uri for image in second]
    assert not [p for p in seedream_sandbox.predictions()
                if p["status"] in ("starting", "processing")]
    record_outcome("two flow runs with one request_id at the same moment",
                   "one claimed the request in the S3 ledger; the other attached and returned "
                   "the same images", created=seedream_sandbox.counters()["creates"],
                   left_running=0)

    other = order("a teapot, night light")
    assert seedream_sandbox.counters()["creates"] == 2
    assert other[0].prediction_id != first[0].prediction_id
