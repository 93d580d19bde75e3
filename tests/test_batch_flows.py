"""`generate_batch` end to end: Prefect flow -> real `replicate` client over HTTP -> the sandbox
-> moto's S3 server, with faults injected through the sandbox."""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr

from prefect_seedream import generate_batch
from prefect_seedream.blocks import ReplicateCredentials, S3Destination
from prefect_seedream.flows.batch.manifest import ManifestInvalid, ManifestUnreadable
from prefect_seedream.flows.batch.progress import add_listener
from prefect_seedream.flows.batch.report import BatchItemsFailed, BatchResult

pytestmark = pytest.mark.usefixtures("prefect_harness")

CONTENT_POLICY = ("The input or output was flagged as sensitive. Please try again with "
                  "different inputs. (E005)")


@pytest.fixture
def credentials(seedream_sandbox: Any) -> ReplicateCredentials:
    return ReplicateCredentials(api_token=SecretStr(seedream_sandbox.api_token),
                                base_url=seedream_sandbox.base_url)


@pytest.fixture
def destination(s3_endpoint: str, bucket: str) -> S3Destination:
    return S3Destination(
        bucket=bucket, prefix="cat", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key=SecretStr("testing"),
    )


def prompts(n: int, **options: Any) -> list[dict[str, Any]]:
    return [{"id": f"p{i}", "prompt": f"product shot {i}", "size": "1K", **options}
            for i in range(n)]


def run(manifest: Any, credentials: Any, destination: Any, **kwargs: Any) -> BatchResult:
    """Run the batch; return its result whether the run ended Completed or Failed."""
    state = generate_batch(manifest, credentials=credentials, destination=destination,
                           return_state=True, **kwargs)
    data = state.result(raise_on_failure=False)
    if isinstance(data, BatchItemsFailed):
        assert state.is_failed() and state.message == str(data)
        assert data.result is not None
        return data.result
    assert state.is_completed(), state
    assert isinstance(data, BatchResult)
    return data


def keys(s3_client: Any, bucket: str) -> set[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def running(sandbox: Any) -> list[str]:
    return [p["id"] for p in sandbox.predictions() if p["status"] in ("starting", "processing")]


def put_jpeg(s3_client: Any, bucket: str, key: str, color: tuple[int, int, int]) -> str:
    data = io.BytesIO()
    Image.new("RGB", (1200, 800), color).save(data, format="JPEG")
    s3_client.put_object(Bucket=bucket, Key=key, Body=data.getvalue())
    return f"s3://{bucket}/{key}"


# --- the manifest ---------------------------------------------------------------------------

def test_invalid_rows_are_reported_together_with_line_numbers_before_any_request(
    tmp_path: Path, credentials: ReplicateCredentials, destination: S3Destination,
    seedream_sandbox: Any,
) -> None:
    manifest = tmp_path / "catalogue.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"id": "ok", "prompt": "a teapot", "size": "1K"}),
        json.dumps({"prompt": "a lamp", "size": "8K"}),
        "{not json",
        "",
        json.dumps({"instruction": "make it blue"}),
        json.dumps({"prompt": "x", "colour": "red", "aspect_ratio": "1:1"}),
        json.dumps({"id": "ok", "prompt": "again", "size": "1K"}),
        json.dumps({"instruction": "warmer",
                    "images": ["s3://" + destination.bucket + "/nope.jpg"]}),
    ]) + "\n")
    with pytest.raises(ManifestInvalid) as info:
        generate_batch(str(manifest), credentials=credentials, destination=destination)
    problems = "\n".join(info.value.problems)
    for expected in ("line 2: size", "line 3: not valid JSON", "line 5: an edit needs 'images'",
                     "line 6: key #2 is not a field", "line 7: the same id as line 1"):
        assert expected in problems
    assert len(info.value.problems) == 5  # the missing source is checked once the rows are valid
    assert seedream_sandbox.counters()["creates"] == 0


def test_a_missing_edit_source_is_refused_before_any_request(
    credentials: ReplicateCredentials, destination: S3Destination, seedream_sandbox: Any,
) -> None:
    manifest = [{"prompt": "a teapot", "size": "1K"},
                {"instruction": "warmer", "images": [f"s3://{destination.bucket}/nope.jpg"]}]
    with pytest.raises(ManifestInvalid, match="line 2: cannot read source"):
        generate_batch(manifest, credentials=credentials, destination=destination)
    assert seedream_sandbox.counters()["creates"] == 0


def test_the_nightly_default_manifest_is_read_from_the_destination_bucket_under_its_prefix(
    credentials: ReplicateCredentials, destination: S3Destination, s3_client: Any,
    seedream_sandbox: Any,
) -> None:
    from prefect_seedream.deployments import nightly

    manifest = nightly.build().parameters["manifest"]
    assert manifest == nightly.DEFAULT_MANIFEST == "manifests/nightly.jsonl"
    s3_client.put_object(Bucket=destination.bucket, Key="cat/manifests/nightly.jsonl",
                         Body="".join(json.dumps(row) + "\n" for row in prompts(2)).encode())
    result = run(manifest, credentials, destination)
    assert [(i.id, i.status) for i in result.items] == [("p0", "succeeded"), ("p1", "succeeded")]
    assert all(i.key.startswith("cat/batch/") for i in result.images)
    assert seedream_sandbox.counters()["creates"] == 2


@pytest.mark.parametrize("given", ["manifests/missing.jsonl",
                                   "s3://{bucket}/cat/manifests/missing.jsonl"])
def test_a_manifest_missing_from_s3_is_reported_as_unreadable_not_as_bad_rows(
    given: str, credentials: ReplicateCredentials, destination: S3Destination,
    seedream_sandbox: Any,
) -> None:
    with pytest.raises(ManifestUnreadable) as info:
        generate_batch(given.format(bucket=destination.bucket), credentials=credentials,
                       destination=destination)
    message = str(info.value)
    assert message.startswith(f"cannot read the manifest s3://{destination.bucket}/cat/manifests/"
                              "missing.jsonl: NoSuchKey")
    assert "invalid manifest row" not in message
    assert seedream_sandbox.counters()["creates"] == 0


def test_mixed_csv_batch_stores_every_item_and_a_results_manifest(
    tmp_path: Path, credentials: ReplicateCredentials, destination: S3Destination,
    s3_client: Any, seedream_sandbox: Any,
) -> None:
    source = put_jpeg(s3_client, destination.bucket, "in/chair.jpg", (200, 40, 40))
    manifest = tmp_path / "week.csv"
    manifest.write_text(
        "id,prompt,instruction,images,size,aspect_ratio,max_images\n"
        "mon,a sunrise over hills,,,1K,16:9,\n"
        "tue,,restage on a beach,s3://" + source[5:] + ",1K,,\n"
        "wed,two seasons,,,1K,1:1,2\n"
    )
    seedream_sandbox.configure(auto_image_count=2)
    events: list[dict[str, Any]] = []
    remove = add_listener(events.append)
    try:
        result = run(str(manifest), credentials, destination, max_in_flight=2)
    finally:
        remove()
    assert [(i.id, i.status, len(i.images)) for i in result.items] == [
        ("mon", "succeeded", 1), ("tue", "succeeded", 1), ("wed", "succeeded", 2)]
    assert result.actual_cost_usd == pytest.approx(4 * 0.03)
    assert result.estimated_cost_usd == pytest.approx(4 * 0.03)
    stored = keys(s3_client, destination.bucket)
    for item in result.items:
        assert f"cat/batch/{item.item_key}/result.json" in stored
        assert all(i.key.startswith(f"cat/batch/{item.item_key}/") and i.key in stored
                   for i in item.images)
    beach = result.items[1].images[0]
    assert abs(beach.width / beach.height - 1.5) < 0.02  # match_input_image for edits
    assert result.results_uri is not None
    lines = [json.loads(line) for line in s3_client.get_object(
        Bucket=destination.bucket, Key=result.results_uri.split("/", 3)[3])["Body"].iter_lines()]
    assert [line["id"] for line in lines] == ["mon", "tue", "wed"]
    assert lines[2]["images"][1]["uri"] == result.items[2].images[1].uri
    assert events[0]["event"] == "plan" and events[0]["estimate_usd"] == pytest.approx(0.12)
    assert events[-1]["event"] == "done"
    counters = seedream_sandbox.counters()
    assert counters["creates"] == 3
    # Sync mode: each prediction ended inside the create's wait, so none was polled.
    api_calls = sum(n for route, n in counters["requests"].items() if route != "files")
    assert (counters["gets"], api_calls) == (0, 3), counters["requests"]


# --- failures and rate limits ---------------------------------------------------------------

def test_429s_slow_the_batch_and_a_failed_item_spares_its_siblings(
    monkeypatch: pytest.MonkeyPatch, credentials: ReplicateCredentials,
    destination: S3Destination, seedream_sandbox: Any,
) -> None:
    monkeypatch.setenv("SEEDREAM_CREATE_ATTEMPTS", "1")  # every 429 escapes the create
    seedream_sandbox.faults.rate_limit_creates(2, retry_after=1)
    seedream_sandbox.faults.interrupt_predictions(1)  # transient: the item gets a fresh one
    seedream_sandbox.faults.interrupt_predictions(1, error=CONTENT_POLICY)  # final
    state = generate_batch(prompts(5), credentials=credentials, destination=destination,
                           max_in_flight=1, return_state=True)
    assert state.is_failed()
    assert state.message == "1 of 5 items failed"
    result = state.result(raise_on_failure=False).result
    statuses = [i.status for i in result.items]
    assert statuses.count("succeeded") == 4 and statuses.count("failed") == 1
    failed = result.failed[0]
    assert failed.error_type == "PredictionFailed" and "E005" in (failed.error or "")
    assert all(len(i.images) == 1 for i in result.items if i.status == "succeeded")
    counters = seedream_sandbox.counters()
    assert counters["rate_limited"] == 2
    assert counters["creates"] == 6  # 5 items + 1 retry of the interrupted one
    assert result.actual_cost_usd == pytest.approx(4 * 0.03)


def test_direct_call_raises_the_typed_error_with_the_result(
    credentials: ReplicateCredentials, destination: S3Destination, seedream_sandbox: Any,
) -> None:
    seedream_sandbox.faults.interrupt_predictions(1, error=CONTENT_POLICY)
    with pytest.raises(BatchItemsFailed, match="1 of 2 items failed") as info:
        generate_batch(prompts(2), credentials=credentials, destination=destination,
                       max_in_flight=1)
    assert info.value.result is not None and len(info.value.result.images) == 1


# --- cancellation ---------------------------------------------------------------------------

def _terminate_main() -> None:
    """What a Prefect runner does to cancel a flow run: SIGTERM, raised as TerminationSignal."""
    import os

    os.kill(os.getpid(), signal.SIGTERM)


def _on_sigterm(signum: int, frame: Any) -> None:
    from prefect.exceptions import TerminationSignal

    raise TerminationSignal(signal=signum)


@pytest.mark.parametrize("stop", ["cancel", "ctrl-c"])
def test_a_cancelled_batch_leaves_nothing_running(
    stop: str, credentials: ReplicateCredentials, destination: S3Destination,
    seedream_sandbox: Any,
) -> None:
    import _thread

    from prefect.exceptions import TerminationSignal

    seedream_sandbox.configure(run_seconds=30)
    expected: type[BaseException] = KeyboardInterrupt
    stopper = _thread.interrupt_main
    previous = signal.getsignal(signal.SIGTERM)
    if stop == "cancel":
        signal.signal(signal.SIGTERM, _on_sigterm)
        expected, stopper = TerminationSignal, _terminate_main

    def stop_when_running() -> None:
        deadline = time.monotonic() + 30
        while len(running(seedream_sandbox)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        stopper()

    threading.Thread(target=stop_when_running, daemon=True).start()
    try:
        with pytest.raises(expected):
            generate_batch(prompts(5), credentials=credentials, destination=destination,
                           max_in_flight=2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    made = seedream_sandbox.predictions()
    assert len(made) == 2  # the other three were never submitted
    assert running(seedream_sandbox) == []
    assert {p["status"] for p in made} == {"canceled"}


# --- resumable and idempotent ---------------------------------------------------------------

def test_rerun_of_the_same_manifest_creates_zero_predictions(
    credentials: ReplicateCredentials, destination: S3Destination, s3_client: Any,
    seedream_sandbox: Any,
) -> None:
    source = put_jpeg(s3_client, destination.bucket, "in/sofa.jpg", (40, 90, 200))
    manifest = [*prompts(3), {"id": "sofa", "instruction": "in a loft", "images": [source],
                              "size": "1K"}]
    first = run(manifest, credentials, destination)
    assert seedream_sandbox.counters()["creates"] == 4
    objects = keys(s3_client, destination.bucket)

    seedream_sandbox.reset()
    # The same items in another order, with other ids, and the source copied to another key.
    copy = put_jpeg(s3_client, destination.bucket, "elsewhere/sofa-copy.jpg", (40, 90, 200))
    again = [{**row, "id": f"again-{row['id']}"} for row in reversed(manifest)]
    again[0]["images"] = [copy]
    second = run(again, credentials, destination)
    assert seedream_sandbox.counters()["creates"] == 0
    assert {i.status for i in second.items} == {"already_done"}
    assert second.actual_cost_usd == 0
    assert sorted(u for i in second.items for u in i.uris) == sorted(
        u for i in first.items for u in i.uris)
    new = keys(s3_client, destination.bucket) - objects
    assert all("/batch/results/" in k or k.startswith("elsewhere/") for k in new)


def test_an_interrupted_batch_resumes_with_only_the_missing_items(
    credentials: ReplicateCredentials, destination: S3Destination, seedream_sandbox: Any,
) -> None:
    run(prompts(2), credentials, destination)
    seedream_sandbox.reset()
    result = run(prompts(5), credentials, destination)
    assert [i.status for i in result.items] == ["already_done"] * 2 + ["succeeded"] * 3
    assert seedream_sandbox.counters()["creates"] == 3


def test_changed_source_bytes_make_a_new_item(
    credentials: ReplicateCredentials, destination: S3Destination, s3_client: Any,
    seedream_sandbox: Any,
) -> None:
    source = put_jpeg(s3_client, destination.bucket, "in/lamp.jpg", (10, 10, 10))
    manifest = [{"instruction": "brighter", "images": [source], "size": "1K"}]
    first = run(manifest, credentials, destination)
    put_jpeg(s3_client, destination.bucket, "in/lamp.jpg", (250, 250, 250))
    second = run(manifest, credentials, destination)
    assert second.items[0].status == "succeeded"
    assert second.items[0].item_key != first.items[0].item_key
    assert seedream_sandbox.counters()["creates"] == 2


def test_duplicate_rows_are_generated_once(
    credentials: ReplicateCredentials, destination: S3Destination, seedream_sandbox: Any,
) -> None:
    rows = [{"id": "a", "prompt": "same", "size": "1K"},
            {"id": "b", "prompt": "same", "size": "1K"}]
    result = run(rows, credentials, destination)
    assert [i.status for i in result.items] == ["succeeded", "duplicate"]
    assert result.items[0].uris == result.items[1].uris
    assert seedream_sandbox.counters()["creates"] == 1


# --- cost -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cap", [{"max_images_total": 3}, {"max_cost_usd": 0.10}])
def test_budget_cap_stops_submitting_and_reports_the_rest(
    cap: dict[str, Any], credentials: ReplicateCredentials, destination: S3Destination,
    seedream_sandbox: Any,
) -> None:
    result = run(prompts(5), credentials, destination, **cap)
    assert [i.status for i in result.items] == ["succeeded"] * 3 + ["skipped_budget"] * 2
    assert seedream_sandbox.counters()["creates"] == 3
    assert result.actual_cost_usd == pytest.approx(0.09)
    assert result.estimated_cost_usd == pytest.approx(0.09)


def test_budget_reserves_the_worst_case_of_multi_image_items(
    credentials: ReplicateCredentials, destination: S3Destination, seedream_sandbox: Any,
) -> None:
    seedream_sandbox.configure(auto_image_count=1)  # fewer than asked: still reserved up front
    result = run(prompts(3, max_images=2), credentials, destination, max_images_total=5,
                 price_per_image_usd=0.05)
    assert [i.status for i in result.items] == ["succeeded", "succeeded", "skipped_budget"]
    assert result.actual_cost_usd == pytest.approx(2 * 0.05)


# --- visible --------------------------------------------------------------------------------

def test_progress_and_table_artifacts_describe_the_run(
    credentials: ReplicateCredentials, destination: S3Destination, seedream_sandbox: Any,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    seedream_sandbox.faults.interrupt_predictions(1, error=CONTENT_POLICY)
    state = generate_batch(prompts(3), credentials=credentials, destination=destination,
                           max_in_flight=1, return_state=True)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    by_type = {a.type: a for a in artifacts}
    assert by_type["progress"].data == 100.0
    table = by_type["table"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [row["status"] for row in rows] == ["failed", "succeeded", "succeeded"]
    assert rows[1]["images"].startswith(f"s3://{destination.bucket}/cat/batch/")
    assert "E005" in rows[0]["error"]


# --- shared limits --------------------------------------------------------------------------

def test_a_global_concurrency_limit_bounds_predictions_in_flight(
    credentials: ReplicateCredentials, destination: S3Destination, seedream_sandbox: Any,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"seedream-in-flight-{time.monotonic_ns()}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=2))
    seedream_sandbox.configure(run_seconds=0.6)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], len(running(seedream_sandbox)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run(prompts(4), credentials, destination, max_in_flight=4,
                     concurrency_limit_name=name)
    finally:
        stop.set()
        sampler.join()
    assert [i.status for i in result.items] == ["succeeded"] * 4
    assert 1 <= peak[0] <= 2


def test_max_in_flight_bounds_predictions_and_storing_does_not_hold_the_next_one_back(
    credentials: ReplicateCredentials, destination: S3Destination, seedream_sandbox: Any,
    s3_client: Any, bucket: str,
) -> None:
    """Two slots, four items, downloads slower than the predictions: never more than two
    predictions run at once, and the third starts before either of the first two has its
    image in S3 (storing overlaps the next prediction instead of holding its slot)."""
    seedream_sandbox.configure(run_seconds=0.5)
    seedream_sandbox.faults.slow_downloads(60_000)  # a 1K output takes seconds to download
    peak, stored_when_third_began = [0], [-1]
    stop = threading.Event()

    def images_in_s3() -> int:
        listing = s3_client.list_objects_v2(Bucket=bucket, Prefix="cat/batch/")
        return sum(1 for o in listing.get("Contents", []) if o["Key"].endswith(".jpg"))

    def sample() -> None:
        while not stop.is_set():
            predictions = seedream_sandbox.predictions()
            peak[0] = max(peak[0], sum(p["status"] in ("starting", "processing")
                                       for p in predictions))
            if len(predictions) >= 3 and stored_when_third_began[0] < 0:
                stored_when_third_began[0] = images_in_s3()
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run(prompts(4), credentials, destination, max_in_flight=2)
    finally:
        stop.set()
        sampler.join()
    assert [i.status for i in result.items] == ["succeeded"] * 4
    assert len(seedream_sandbox.predictions()) == 4
    assert 1 <= peak[0] <= 2
    assert stored_when_third_began[0] == 0
    assert images_in_s3() == 4


def test_a_missing_concurrency_limit_is_refused_before_any_request(
    credentials: ReplicateCredentials, destination: S3Destination, seedream_sandbox: Any,
) -> None:
    from prefect_seedream import InvalidInput

    with pytest.raises(InvalidInput, match="no-such-limit"):
        generate_batch(prompts(2), credentials=credentials, destination=destination,
                       concurrency_limit_name="no-such-limit")
    assert seedream_sandbox.counters()["creates"] == 0


def test_rerun_after_a_killed_run_reattaches_instead_of_paying_again(
    credentials: ReplicateCredentials, destination: S3Destination, s3_client: Any,
    seedream_sandbox: Any,
) -> None:
    import replicate

    from prefect_seedream.flows.batch.manifest import check_rows
    from prefect_seedream.tasks import prediction_ledger as ledger
    from prefect_seedream.tasks.replicate_client.prediction import PredictionStatus
    from prefect_seedream.tasks.replicate_client.protocol import utcnow
    from prefect_seedream.tasks.replicate_client.request_builders import RequestMatch
    from prefect_seedream.tasks.seedream_input import MODEL_SLUG

    rows = prompts(2)
    first = run(rows[:1], credentials, destination)  # learn the item key the batch uses
    key = first.items[0].item_key
    for obj in s3_client.list_objects_v2(Bucket=destination.bucket).get("Contents", []):
        s3_client.delete_object(Bucket=destination.bucket, Key=obj["Key"])
    seedream_sandbox.reset()
    # A run that was killed after creating the first item's prediction, before storing it,
    # left its ledger record (written by the ledger's own code) and its open pointer:
    client = replicate.Client(api_token=seedream_sandbox.api_token,
                              base_url=seedream_sandbox.base_url)
    request = check_rows(rows[:1])[0].request()
    orphan = client.models.predictions.create(model=MODEL_SLUG, input=request.to_request())
    killed = ledger.Claim(ledger.Ledger(destination, destination.prefix), ledger.ITEMS, key,
                          run="killed-run")
    assert killed.send(sent_at=utcnow(), match=RequestMatch.of(
        MODEL_SLUG, request.to_request()).to_json(), window=90, replace=False)
    assert killed.created(orphan.id, PredictionStatus.STARTING)

    result = run(rows, credentials, destination)
    # The orphan is re-attached (this run paid nothing for it), the second item is created.
    assert [i.status for i in result.items] == ["attached", "succeeded"]
    assert [i.cost_usd for i in result.items] == [0.0, 0.03]
    assert seedream_sandbox.counters()["creates"] == 2  # the orphan and the second item only
    assert len(seedream_sandbox.predictions()) == 2
    assert orphan.id in " ".join(result.items[0].uris)
    open_pointers = [k for k in keys(s3_client, destination.bucket) if "/_ledger/open/" in k]
    assert len(open_pointers) == 1 and "/open/killed-run/" in open_pointers[0]  # not ours


def test_a_wide_batch_keeps_its_s3_connections_instead_of_opening_one_per_request(
    credentials: ReplicateCredentials, destination: S3Destination, seedream_sandbox: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At 40 in flight a batch runs 80 item threads, each making a few S3 requests (claim,
    open pointer, image, result.json). With a pool smaller than that, urllib3 throws away every
    connection past it after one request and the next opens a new one: figure 1d logged
    "Connection pool is full, discarding connection" by the hundred at 64 in flight."""
    seedream_sandbox.configure(run_seconds=0.3)
    with caplog.at_level("WARNING", logger="urllib3.connectionpool"):
        result = run(prompts(80), credentials, destination, max_in_flight=40)
    assert [i.status for i in result.items] == ["succeeded"] * 80
    discarded = [r for r in caplog.records if "Connection pool is full" in r.getMessage()]
    assert not discarded, f"{len(discarded)} S3 connections thrown away after one request"
