"""The spend limit's promises over real parts (the sandbox over HTTP, moto's S3 server, Prefect's
test server): no run, process or combination of them gets past a limit, a create past it is
refused before any request, aborted predictions give their reservation back, and a crashed
run's reservation is reconciled instead of blocking the budget."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from batch_processes import run_batches_at_once

from prefect_seedream import (
    BudgetExceeded,
    PredictionAborted,
    SeedreamInput,
    aawait_prediction,
    acreate_prediction,
    await_prediction,
    create_prediction,
    generate_images,
)
from prefect_seedream.cli import main as seedream
from prefect_seedream.tasks.spend_limit import period_names

pytestmark = pytest.mark.usefixtures("prefect_harness")


def today() -> str:
    return period_names(datetime.now(timezone.utc))["day"]


def spend_record(s3_client: Any, destination: Any, period: str | None = None) -> dict[str, Any]:
    key = f"{destination.prefix}/_ledger/spend/{period or today()}.json"
    body = s3_client.get_object(Bucket=destination.bucket, Key=key)["Body"].read()
    return json.loads(body)  # type: ignore[no-any-return]


def spend_keys(s3_client: Any, bucket: str) -> list[str]:
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="")
    return [o["Key"] for o in listed.get("Contents", []) if "/_ledger/spend/" in o["Key"]]


def threshold_events(bucket: str) -> list[tuple[str, int]]:
    """The `seedream.spend.threshold` events Prefect's server holds for the limit kept in
    `bucket`, as (period, level), once both have arrived or after 30 s of waiting."""
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)
    now = datetime.now(timezone.utc)
    body = {"filter": {"event": {"name": ["seedream.spend.threshold"]},
                       "occurred": {"since": (now - timedelta(minutes=10)).isoformat(),
                                    "until": (now + timedelta(minutes=5)).isoformat()}},
            "limit": 50}
    found: list[tuple[str, int]] = []
    with get_client(sync_client=True) as client:
        for _ in range(150):
            events = client.request("POST", "/events/filter", json=body).json()["events"]
            found = sorted((e["payload"]["period"], e["payload"]["level"]) for e in events
                           if f"s3://{bucket}/" in e["payload"]["ledger"])
            if len(found) >= 2:
                break
            time.sleep(0.2)
    return found


def spend_artifact(bucket: str) -> str:
    """The latest `seedream-spend` artifact about the ledger in `bucket`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["seedream-spend"])),
            sort=ArtifactSort.CREATED_DESC)
    return next(str(a.data) for a in found if f"s3://{bucket}/" in str(a.data))


def test_without_a_limit_nothing_is_kept_for_it(
    seedream_sandbox: Any, credentials: Any, destination: Any, s3_client: Any,
) -> None:
    images = generate_images("a teapot", size="1K", credentials=credentials,
                             destination=destination)
    assert len(images) == 1
    assert spend_keys(s3_client, destination.bucket) == []


def test_a_limit_of_n_images_lets_n_through_and_refuses_the_next_before_any_request(
    seedream_sandbox: Any, credentials: Any, destination: Any, s3_client: Any,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], record_spend: Any,
) -> None:
    monkeypatch.setenv("SEEDREAM_SPEND_LIMIT_IMAGES_PER_DAY", "2")
    for prompt in ("a red kite", "a blue kite"):
        assert len(generate_images(prompt, size="1K", credentials=credentials,
                                   destination=destination)) == 1
    before = seedream_sandbox.counters()["requests"].get("create", 0)
    with pytest.raises(BudgetExceeded) as refused:
        generate_images("a green kite", size="1K", credentials=credentials,
                        destination=destination)
    assert seedream_sandbox.counters()["requests"].get("create", 0) == before == 2
    assert seedream_sandbox.counters()["creates"] == 2
    error = refused.value
    assert error.limit == "SEEDREAM_SPEND_LIMIT_IMAGES_PER_DAY" and error.period == today()
    assert (error.spent, error.reserved, error.asked) == (2, 0, 1)
    assert "SEEDREAM_SPEND_LIMIT_IMAGES_PER_DAY=2" in str(error)
    assert "nothing was sent" in str(error)

    record = spend_record(s3_client, destination)
    assert (record["settled_images"], record["entries"]) == (2, {})
    assert record["settled_usd"] == pytest.approx(0.06)
    assert record["alerts"] == [80, 100]
    assert threshold_events(destination.bucket) == [(today(), 80), (today(), 100)]

    monkeypatch.setenv("SEEDREAM_BUCKET", destination.bucket)
    monkeypatch.setenv("SEEDREAM_PREFIX", destination.prefix)
    monkeypatch.setenv("SEEDREAM_S3_ENDPOINT_URL", str(destination.endpoint_url))
    capsys.readouterr()
    assert seedream(["spend"]) == 0
    out = capsys.readouterr().out
    day = f"| {today()} | 2 images ($0.06) | 0 images ($0.00), 0 open | 2 images | 0 images |"
    assert day in out
    assert "| flow generate-images | 2 images ($0.06) |" in out  # who spent it
    # The same report is the flow run's `seedream-spend` artifact, as of its last image.
    assert day in spend_artifact(destination.bucket)
    record_spend("three `generate_images` runs, one after another; the third is refused with "
                 "`BudgetExceeded` before any request", "2 images a day", limit_value=2,
                 requests=3, allowed=2, created=seedream_sandbox.counters()["creates"],
                 spent=record["settled_images"])


def test_a_dollar_limit_refuses_a_worst_case_that_would_cross_it(
    seedream_sandbox: Any, credentials: Any, destination: Any, s3_client: Any,
    monkeypatch: pytest.MonkeyPatch, record_spend: Any,
) -> None:
    """Four images at $0.03 could cost $0.12: past a $0.10 limit, even though Seedream might
    return fewer; nothing is sent and nothing is left reserved."""
    monkeypatch.setenv("SEEDREAM_SPEND_LIMIT_USD_PER_DAY", "0.10")
    with pytest.raises(BudgetExceeded, match=r"SEEDREAM_SPEND_LIMIT_USD_PER_DAY.*\$0\.12"):
        generate_images("a kite festival", size="1K", max_images=4, credentials=credentials,
                        destination=destination)
    assert seedream_sandbox.counters()["requests"].get("create", 0) == 0
    assert spend_keys(s3_client, destination.bucket) == []  # the refusal wrote nothing
    record_spend("one `generate_images` of up to 4 images ($0.12 worst case)", "$0.10 a day",
                 limit_value=0.10, requests=1, allowed=0,
                 created=seedream_sandbox.counters()["creates"], spent=0.0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_aborted_prediction_gives_its_reservation_back(
    mode: str, seedream_sandbox: Any, credentials: Any, destination: Any, s3_client: Any,
    monkeypatch: pytest.MonkeyPatch, record_spend: Any,
) -> None:
    """A limit of one image: the first prediction's Cancel-After passes while it is queued
    (aborted, not billed), so the budget is whole again and the next create is not refused."""
    monkeypatch.setenv("SEEDREAM_SPEND_LIMIT_IMAGES_PER_DAY", "1")

    def run(prompt: str, **options: Any) -> Any:
        request = SeedreamInput(prompt=prompt, size="1K")
        if mode == "sync":
            created = create_prediction(request, credentials=credentials, ledger=destination,
                                        **options)
            return await_prediction(created, credentials=credentials, timeout_seconds=30)

        async def both() -> Any:
            created = await acreate_prediction(request, credentials=credentials,
                                               ledger=destination, **options)
            return await aawait_prediction(created, credentials=credentials, timeout_seconds=30)
        return asyncio.run(both())

    seedream_sandbox.configure(queue_seconds=10)
    with pytest.raises(PredictionAborted):
        run("a queued lighthouse", cancel_after=1)
    assert spend_record(s3_client, destination)["settled_images"] == 0
    seedream_sandbox.configure(queue_seconds=0)
    assert run("a lighthouse").status.value == "succeeded"
    assert seedream_sandbox.counters()["creates"] == 2
    record = spend_record(s3_client, destination)
    assert (record["settled_images"], record["entries"]) == (1, {})
    if mode == "sync":
        record_spend("a prediction aborted in the queue (Cancel-After), then another",
                     "1 image a day", limit_value=1, requests=2, allowed=2,
                     created=seedream_sandbox.counters()["creates"],
                     spent=record["settled_images"])


def test_cancel_prediction_alone_settles_the_reservation(
    seedream_sandbox: Any, credentials: Any, destination: Any, s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller that creates, then cancels with `cancel_prediction` and never waits: the
    reservation does not sit open until reconciliation; a canceled prediction keeps its worst
    case (Replicate bills what it ran, which we cannot see)."""
    from prefect_seedream import cancel_prediction

    monkeypatch.setenv("SEEDREAM_SPEND_LIMIT_IMAGES_PER_DAY", "10")
    seedream_sandbox.configure(run_seconds=30)
    created = create_prediction(SeedreamInput(prompt="a slow kite", size="1K", max_images=3,
                                              sequential_image_generation="auto"),
                                credentials=credentials, ledger=destination)
    assert len(spend_record(s3_client, destination)["entries"]) == 1
    cancelled = cancel_prediction(created.id, credentials=credentials)
    assert cancelled is not None and cancelled.status.value == "canceled"
    record = spend_record(s3_client, destination)
    assert (record["entries"], record["settled_images"]) == ({}, 3)


def test_two_processes_running_batches_against_one_limit_never_exceed_it(
    seedream_sandbox: Any, s3_endpoint: str, bucket: str, s3_client: Any, tmp_path: Path,
    record_spend: Any,
) -> None:
    """Two workers, eight different items each, one limit of five images a day: exactly five
    predictions are created between them, and every other item is skipped with the reason."""
    seedream_sandbox.configure(run_seconds=1)
    manifests = [[{"id": f"{worker}{i}", "prompt": f"worker {worker} shot {i}", "size": "1K"}
                  for i in range(8)] for worker in ("a", "b")]
    items = [(i["status"], i["error_type"], i["error"]) for results in run_batches_at_once(
        seedream_sandbox, s3_endpoint, bucket, tmp_path, manifests, max_in_flight=4,
        env={"SEEDREAM_SPEND_LIMIT_IMAGES_PER_DAY": "5"}) for i in results]

    made = sorted(p["input"]["prompt"] for p in seedream_sandbox.predictions())
    assert seedream_sandbox.counters()["creates"] == 5, (made, items)
    statuses = [status for status, *_ in items]
    assert statuses.count("succeeded") == 5 and statuses.count("skipped_budget") == 11
    skipped = [error for status, kind, error in items if status == "skipped_budget"]
    assert all("SEEDREAM_SPEND_LIMIT_IMAGES_PER_DAY=5" in error for error in skipped)
    record = json.loads(s3_client.get_object(
        Bucket=bucket, Key=f"shared/_ledger/spend/{today()}.json")["Body"].read())
    assert (record["settled_images"], record["entries"]) == (5, {})
    record_spend("two processes, each a `generate_batch` of 8 items at 4 in flight; the rest "
                 "`skipped_budget`", "5 images a day", limit_value=5, requests=16, allowed=5,
                 created=seedream_sandbox.counters()["creates"], spent=record["settled_images"])


CRASHING_RUN = textwrap.dedent("""
    import json, os, sys
    from prefect import flow
    from pydantic import SecretStr
    from prefect_seedream import (ReplicateCredentials, S3Destination, SeedreamInput,
                                  create_prediction)

    args = json.loads(sys.argv[1])

    @flow
    def crashing() -> None:
        prediction = create_prediction(
            SeedreamInput(prompt="a crashed lighthouse", size="1K",
                          sequential_image_generation="auto", max_images=4),
            credentials=ReplicateCredentials(api_token=SecretStr(args["token"]),
                                             base_url=args["base_url"]),
            ledger=S3Destination(bucket=args["bucket"], prefix="runs",
                                 endpoint_url=args["endpoint"], region_name="us-east-1",
                                 aws_access_key_id="testing",
                                 aws_secret_access_key=SecretStr("testing")))
        print("CREATED " + prediction.id, flush=True)
        os._exit(3)  # the worker dies before the prediction ends: nothing settles it

    crashing()
""")


def test_a_crashed_runs_reservation_is_reconciled_by_the_next_create(
    seedream_sandbox: Any, credentials: Any, destination: Any, s3_client: Any, s3_endpoint: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_spend: Any,
) -> None:
    """A run reserves four images (its worst case) and dies; its prediction goes on to make
    three. Once that prediction is sure to have ended, the next create settles the orphan at
    what Replicate billed (three), so a one-image request fits a four-image limit again."""
    from prefect.settings import PREFECT_API_URL

    limits = {"SEEDREAM_SPEND_LIMIT_IMAGES_PER_DAY": "4", "SEEDREAM_TIMEOUT_SECONDS": "2",
              "SEEDREAM_CANCEL_AFTER_MARGIN_SECONDS": "0", "SEEDREAM_CLAIM_WINDOW_SECONDS": "1"}
    for name, value in limits.items():
        monkeypatch.setenv(name, value)
    script = tmp_path / "crashing_run.py"
    script.write_text(CRASHING_RUN)
    args = json.dumps({"token": seedream_sandbox.api_token, "base_url": seedream_sandbox.base_url,
                       "bucket": destination.bucket, "endpoint": s3_endpoint})
    crashed = subprocess.run([sys.executable, str(script), args], text=True, capture_output=True,
                             env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())},
                             timeout=300)
    assert crashed.returncode == 3, crashed.stderr[-3000:]
    orphan = spend_record(s3_client, destination)["entries"]
    assert [entry["images"] for entry in orphan.values()] == [4]

    # Wait (without asserting on time) until the orphan's prediction is sure to have ended.
    expires = datetime.fromisoformat(next(iter(orphan.values()))["expires"])
    while datetime.now(timezone.utc) <= expires or any(
            p["status"] in ("starting", "processing") for p in seedream_sandbox.predictions()):
        time.sleep(0.2)
    [first] = seedream_sandbox.predictions()
    assert first["status"] == "succeeded" and len(first["output"]) == 3

    images = generate_images("a lighthouse after the crash", size="1K", credentials=credentials,
                             destination=destination)
    assert len(images) == 1
    record = spend_record(s3_client, destination)
    assert (record["settled_images"], record["entries"]) == (4, {})  # 3 reconciled + 1
    assert seedream_sandbox.counters()["creates"] == 2
    record_spend("a run reserves 4 images and dies (its prediction makes 3); the next run's "
                 "create reconciles the orphan at 3 and fits", "4 images a day", limit_value=4,
                 requests=2, allowed=2, created=seedream_sandbox.counters()["creates"],
                 spent=record["settled_images"])


def test_a_day_starts_at_midnight_in_the_configured_time_zone() -> None:
    late = datetime(2026, 12, 31, 23, 30, tzinfo=timezone.utc)
    assert period_names(late) == {"day": "day-2026-12-31", "month": "month-2026-12"}
    assert period_names(late, "Europe/Berlin") == {"day": "day-2027-01-01",
                                                   "month": "month-2027-01"}


@pytest.mark.parametrize(("status", "outputs", "counted"), [
    ("succeeded", 3, 3),  # what it returned, even below the four reserved
    ("aborted", 0, 0),    # never started: the reservation is released
    ("failed", 0, 0),     # no billable image
    ("canceled", 1, 4),   # billed for what it ran, not visible per image: the worst case stays
])
def test_a_reservation_of_four_settles_to_what_replicate_bills(
    status: str, outputs: int, counted: int,
) -> None:
    from prefect_seedream.tasks.spend_limit import billed_images

    assert billed_images(status, outputs, 4) == counted
