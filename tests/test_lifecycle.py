"""Paid once, never left running, nothing lost: each guarantee under a fault injected through
the sandbox over real HTTP, for the sync tasks and their async twins alike."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
from prefect import flow
from pydantic import SecretStr

from prefect_seedream import (
    CreateOutcomeUnknown,
    OutputExpired,
    PredictionAborted,
    PredictionFailed,
    PredictionTimedOut,
    ReplicateCredentials,
    SeedreamInput,
    aawait_prediction,
    acancel_prediction,
    acreate_prediction,
    aget_prediction,
    await_prediction,
    cancel_prediction,
    create_prediction,
    get_prediction,
    retry_condition,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")

REQUEST = SeedreamInput(prompt="a paper boat", size="1K", aspect_ratio="1:1")
CONTENT_POLICY = ("The input or output was flagged as sensitive. Please try again with "
                  "different inputs. (E005)")


class Ops:
    """The prediction tasks, called the sync way or the async way."""

    def __init__(self, mode: str, credentials: ReplicateCredentials) -> None:
        self.mode, self.credentials = mode, credentials

    def _call(self, sync_task: Any, async_task: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("credentials", self.credentials)
        if self.mode == "sync":
            return sync_task(*args, **kwargs)
        return asyncio.run(async_task(*args, **kwargs))

    def create(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(create_prediction, acreate_prediction, *args, **kwargs)

    def wait(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(await_prediction, aawait_prediction, *args, **kwargs)

    def cancel(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(cancel_prediction, acancel_prediction, *args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(get_prediction, aget_prediction, *args, **kwargs)


@pytest.fixture
def credentials(seedream_sandbox: Any) -> ReplicateCredentials:
    return ReplicateCredentials(api_token=SecretStr(seedream_sandbox.api_token),
                                base_url=seedream_sandbox.base_url)


@pytest.fixture(params=["sync", "async"])
def ops(request: pytest.FixtureRequest, credentials: ReplicateCredentials) -> Ops:
    return Ops(request.param, credentials)


def made(sandbox: Any) -> list[dict[str, Any]]:
    return sandbox.predictions()  # type: ignore[no-any-return]


def running(sandbox: Any) -> list[str]:
    return [p["id"] for p in made(sandbox) if p["status"] in ("starting", "processing")]


# --- paid once --------------------------------------------------------------------------------

def test_429_storm_on_create_waits_and_creates_exactly_one(
    ops: Ops, seedream_sandbox: Any, record_outcome: Any,
) -> None:
    seedream_sandbox.faults.rate_limit_creates(3, retry_after=1)
    prediction = ops.create(REQUEST)
    assert [p["id"] for p in made(seedream_sandbox)] == [prediction.id]
    assert seedream_sandbox.counters()["rate_limited"] == 3
    record_outcome(f"429 storm on create ({ops.mode})", "waited as Retry-After said, then created",
                   created=len(made(seedream_sandbox)), left_running=0)


def test_5xx_on_create_retries_only_after_finding_nothing(
    ops: Ops, seedream_sandbox: Any, record_outcome: Any,
) -> None:
    seedream_sandbox.faults.fail_next("create", 2, status=503)
    prediction = ops.create(REQUEST)
    assert [p["id"] for p in made(seedream_sandbox)] == [prediction.id]
    record_outcome(f"503 on create, twice ({ops.mode})",
                   "listed recent predictions, found none, created again",
                   created=len(made(seedream_sandbox)), left_running=0)


def test_lost_create_response_is_found_again_not_doubled(
    ops: Ops, seedream_sandbox: Any, record_outcome: Any,
) -> None:
    seedream_sandbox.faults.drop_create_responses(1)
    prediction = ops.create(REQUEST)
    assert [p["id"] for p in made(seedream_sandbox)] == [prediction.id]
    assert seedream_sandbox.counters()["lists"] >= 1
    record_outcome(f"create response lost after the prediction was made ({ops.mode})",
                   "found it in the list of recent predictions and re-attached",
                   created=len(made(seedream_sandbox)), left_running=0)


def test_lost_create_answers_with_the_list_down_stop_instead_of_paying_again(
    ops: Ops, seedream_sandbox: Any, record_outcome: Any,
) -> None:
    """Unknown means stop: two create answers lost while `GET /v1/predictions` answers 503 made
    three predictions before; now the first lost create is the only one ever sent."""
    seedream_sandbox.faults.drop_create_responses(2)
    seedream_sandbox.faults.error_share(1.0, status=503, routes=["list"])
    with pytest.raises(CreateOutcomeUnknown, match="nothing was sent again"):
        ops.create(REQUEST)
    assert seedream_sandbox.counters()["requests"]["create"] == 1
    assert len(made(seedream_sandbox)) == 1
    record_outcome(f"create answer lost with the list of predictions down ({ops.mode})",
                   "CreateOutcomeUnknown after a bounded look; no second create",
                   created=len(made(seedream_sandbox)),
                   left_running=len(running(seedream_sandbox)))


def test_retry_inside_a_flow_run_reattaches_to_the_same_prediction(
    credentials: ReplicateCredentials, seedream_sandbox: Any, record_outcome: Any,
    destination: Any,
) -> None:
    attempts: list[str] = []

    @flow(retries=1, retry_delay_seconds=0)
    def flaky() -> str:
        prediction = create_prediction(REQUEST, credentials=credentials, ledger=destination)
        attempts.append(prediction.id)
        if len(attempts) == 1:
            raise RuntimeError("the flow fails after paying, before storing")
        return await_prediction(prediction, credentials=credentials).id  # type: ignore[no-any-return]

    final_id = flaky()
    assert attempts == [final_id, final_id]
    assert len(made(seedream_sandbox)) == 1
    record_outcome("flow retried after the create (or crashed and re-run)",
                   "ledger record found; re-attached to the same prediction",
                   created=len(made(seedream_sandbox)), left_running=0)


def test_retry_after_a_failed_prediction_creates_a_new_one(
    credentials: ReplicateCredentials, seedream_sandbox: Any, destination: Any,
) -> None:
    seedream_sandbox.faults.interrupt_predictions(1)

    @flow(retries=1, retry_delay_seconds=0)
    def retried() -> str:
        prediction = create_prediction(REQUEST, credentials=credentials, ledger=destination)
        return await_prediction(prediction, credentials=credentials).id  # type: ignore[no-any-return]

    final_id = retried()
    statuses = sorted(p["status"] for p in made(seedream_sandbox))
    assert statuses == ["failed", "succeeded"]
    assert seedream_sandbox.prediction(final_id)["status"] == "succeeded"


# --- never left running -----------------------------------------------------------------------

def test_every_create_carries_a_server_side_deadline(ops: Ops, seedream_sandbox: Any) -> None:
    prediction = ops.create(REQUEST, cancel_after=300)
    assert seedream_sandbox.prediction(prediction.id)["deadline"] is not None


def test_our_timeout_cancels_the_prediction(
    ops: Ops, seedream_sandbox: Any, record_outcome: Any,
) -> None:
    seedream_sandbox.configure(run_seconds=30)
    prediction = ops.create(REQUEST)
    with pytest.raises(PredictionTimedOut) as info:
        ops.wait(prediction, timeout_seconds=1)
    assert info.value.prediction_id == prediction.id
    assert "(it was cancelled so it stops billing)" in str(info.value)
    assert seedream_sandbox.prediction(prediction.id)["status"] == "canceled"
    assert running(seedream_sandbox) == []
    record_outcome(f"prediction outlives timeout_seconds ({ops.mode})",
                   "cancelled it, raised PredictionTimedOut",
                   created=len(made(seedream_sandbox)), left_running=len(running(seedream_sandbox)))


def test_a_timeout_whose_cancel_fails_says_so_instead_of_claiming_it_stopped(
    ops: Ops, seedream_sandbox: Any,
) -> None:
    seedream_sandbox.configure(run_seconds=30)
    prediction = ops.create(REQUEST)
    seedream_sandbox.faults.fail_next("cancel", 10, status=503)
    with pytest.raises(PredictionTimedOut) as info:
        ops.wait(prediction, timeout_seconds=1)
    message = str(info.value)
    deadline = seedream_sandbox.prediction(prediction.id)["deadline"]  # the backstop
    assert deadline is not None
    at = datetime.fromisoformat(deadline.replace("Z", "+00:00"))
    assert "cancel failed: " in message
    assert f"the server-side Cancel-After deadline ends it at {at:%H:%M:%S} UTC" in message
    assert "it was cancelled" not in message


def test_prefect_task_timeout_cancels_the_prediction(
    credentials: ReplicateCredentials, seedream_sandbox: Any, record_outcome: Any,
) -> None:
    seedream_sandbox.configure(run_seconds=30)

    @flow
    def sync_flow() -> None:
        prediction = create_prediction(REQUEST, credentials=credentials)
        await_prediction.with_options(timeout_seconds=1)(prediction, credentials=credentials)

    @flow
    async def async_flow() -> None:
        prediction = await acreate_prediction(REQUEST, credentials=credentials,
                                              idempotency_key="async")
        await aawait_prediction.with_options(timeout_seconds=1)(prediction,
                                                                credentials=credentials)

    for run in (sync_flow, lambda: asyncio.run(async_flow())):
        with pytest.raises(TimeoutError):
            run()
    assert len(made(seedream_sandbox)) == 2
    assert running(seedream_sandbox) == []
    assert {p["status"] for p in made(seedream_sandbox)} == {"canceled"}
    record_outcome("Prefect task timeout_seconds (sync and async)",
                   "cleanup in the task (shielded when async) cancelled it",
                   created=len(made(seedream_sandbox)), requests=2,
                   left_running=len(running(seedream_sandbox)))


def test_deadline_before_start_is_aborted_not_billed(
    ops: Ops, seedream_sandbox: Any, record_outcome: Any,
) -> None:
    seedream_sandbox.configure(queue_seconds=10)
    prediction = ops.create(REQUEST, cancel_after=1)
    with pytest.raises(PredictionAborted, match="not billed"):
        ops.wait(prediction, timeout_seconds=30)
    assert seedream_sandbox.prediction(prediction.id)["status"] == "aborted"
    record_outcome(f"Cancel-After passes while queued ({ops.mode})",
                   "reported aborted (not billed), distinct from canceled",
                   created=len(made(seedream_sandbox)), left_running=len(running(seedream_sandbox)))


def test_cancel_is_idempotent_and_leaves_finished_predictions_alone(
    ops: Ops, seedream_sandbox: Any,
) -> None:
    finished = ops.wait(ops.create(REQUEST))
    assert ops.cancel(finished.id).status.value == "succeeded"
    seedream_sandbox.configure(run_seconds=30)
    slow = ops.create(REQUEST, idempotency_key="slow")
    assert ops.cancel(slow.id).status.value == "canceled"
    assert ops.cancel(slow.id).status.value == "canceled"
    assert ops.cancel("no-such-prediction") is None


# --- nothing lost -----------------------------------------------------------------------------

def test_transient_errors_while_polling_do_not_fail_the_wait(
    ops: Ops, seedream_sandbox: Any, record_outcome: Any,
) -> None:
    seedream_sandbox.configure(run_seconds=1.0)
    prediction = ops.create(REQUEST)
    seedream_sandbox.faults.fail_next("get", 3, status=503)
    assert ops.wait(prediction, timeout_seconds=60).status.value == "succeeded"
    record_outcome(f"503 on status polls, three in a row ({ops.mode})",
                   "kept waiting with backoff; prediction succeeded",
                   created=len(made(seedream_sandbox)), left_running=0)


def test_read_right_after_create_sees_aborted_and_deadline(ops: Ops, seedream_sandbox: Any) -> None:
    seedream_sandbox.configure(queue_seconds=10)
    prediction = ops.create(REQUEST, cancel_after=1)
    assert ops.get(prediction.id).deadline is not None


def test_expired_outputs_are_a_specific_error(
    credentials: ReplicateCredentials, seedream_sandbox: Any, s3_endpoint: str, bucket: str,
    record_outcome: Any,
) -> None:
    from prefect_seedream.blocks import S3Destination
    from prefect_seedream.tasks.storage import store_outputs

    finished = await_prediction(create_prediction(REQUEST, credentials=credentials),
                                credentials=credentials)
    seedream_sandbox.faults.expire_outputs(prediction_id=finished.id)
    destination = S3Destination(bucket=bucket, endpoint_url=s3_endpoint,
                                aws_access_key_id="testing",
                                aws_secret_access_key=SecretStr("testing"))
    with pytest.raises(OutputExpired) as info:
        store_outputs(finished, destination)
    assert info.value.prediction_id == finished.id
    record_outcome("outputs expired before storing", "OutputExpired naming the prediction",
                   created=len(made(seedream_sandbox)), left_running=0,
                   outputs_lost=len(finished.output_urls))


# --- typed errors and the retry policy ----------------------------------------------------------

@pytest.mark.parametrize(("message", "retryable"), [(None, True), (CONTENT_POLICY, False)])
def test_failures_say_whether_a_retry_can_help(
    ops: Ops, seedream_sandbox: Any, message: str | None, retryable: bool,
) -> None:
    seedream_sandbox.faults.interrupt_predictions(1, error=message)
    with pytest.raises(PredictionFailed) as info:
        ops.wait(ops.create(REQUEST))
    assert info.value.retryable is retryable
    assert info.value.prediction_id


def test_retry_condition_retries_interruptions_but_not_content_policy(
    credentials: ReplicateCredentials, seedream_sandbox: Any,
) -> None:
    from prefect import task

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_condition)
    def make_image(key: str) -> str:
        prediction = create_prediction(REQUEST, credentials=credentials, idempotency_key=key)
        return await_prediction(prediction, credentials=credentials).id  # type: ignore[no-any-return]

    @flow
    def pipeline(key: str) -> str:
        return make_image(key)  # type: ignore[no-any-return]

    seedream_sandbox.faults.interrupt_predictions(1)
    assert seedream_sandbox.prediction(pipeline("interrupted"))["status"] == "succeeded"
    assert len(made(seedream_sandbox)) == 2

    seedream_sandbox.faults.interrupt_predictions(1, error=CONTENT_POLICY)
    with pytest.raises(PredictionFailed):
        pipeline("flagged")
    assert len(made(seedream_sandbox)) == 3  # no retry after a content-policy failure


def _died_while_sending(destination: Any, body: dict[str, Any],
                        sources: list[str] | None = None) -> None:
    """What an attempt that claimed the request, sent its create and died leaves behind: a
    `sending` record in this flow run's ledger, written by the ledger's own code."""
    from prefect_seedream.tasks import prediction_ledger as ledger
    from prefect_seedream.tasks.replicate_client.protocol import utcnow
    from prefect_seedream.tasks.replicate_client.request_builders import RequestMatch
    from prefect_seedream.tasks.seedream_input import MODEL_SLUG

    flow_run_id = ledger.current_flow_run_id()
    assert flow_run_id
    claim = ledger.Claim(ledger.Ledger(destination, destination.prefix),
                         ledger.run_scope(flow_run_id),
                         ledger.request_key(MODEL_SLUG, body, None, sources),
                         run=flow_run_id)
    assert claim.send(sent_at=utcnow(), match=RequestMatch.of(MODEL_SLUG, body).to_json(),
                      window=90, replace=False)
    ledger.retire(claim.token)  # the attempt is gone


def test_rerun_after_dying_inside_a_sync_create_reattaches(
    credentials: ReplicateCredentials, seedream_sandbox: Any, record_outcome: Any,
    destination: Any,
) -> None:
    import replicate

    from prefect_seedream.tasks.seedream_input import MODEL_SLUG

    prompt = REQUEST.model_copy(update={"prompt": "a paper boat, " + "very " * 1200 + "small"})
    assert len(prompt.prompt) > 6000  # more than a Prefect Variable could have held

    @flow
    def rerun_of_a_crashed_run() -> str:
        body = prompt.to_request()
        # The earlier attempt claimed its sync-mode create, sent it, and died before the answer.
        _died_while_sending(destination, body)
        client = replicate.Client(api_token=seedream_sandbox.api_token,
                                  base_url=seedream_sandbox.base_url)
        client.models.predictions.create(model=MODEL_SLUG, input=body)
        return create_prediction(prompt, credentials=credentials, wait_seconds=30,  # type: ignore[no-any-return]
                                 ledger=destination).id

    reattached = rerun_of_a_crashed_run()
    assert [p["id"] for p in made(seedream_sandbox)] == [reattached]
    record_outcome("process died inside a sync-mode create (a 6,000-character prompt); re-run",
                   "`sending` ledger record found; the prediction found by its request, reused",
                   created=len(made(seedream_sandbox)), left_running=0)


def test_rerun_after_dying_inside_a_sync_edit_create_reattaches_despite_a_new_presign(
    credentials: ReplicateCredentials, seedream_sandbox: Any, s3_client: Any, bucket: str,
    record_outcome: Any, destination: Any,
) -> None:
    """The rerun presigns its S3 source again: its ledger key (source by URI + ETag) still
    finds the record, and the lost create is found by its request's digest."""
    import io

    import replicate
    from PIL import Image

    from prefect_seedream.tasks import prediction_ledger as ledger
    from prefect_seedream.tasks.seedream_input import MODEL_SLUG

    image = io.BytesIO()
    Image.new("RGB", (800, 600), (90, 140, 60)).save(image, format="JPEG")
    s3_client.put_object(Bucket=bucket, Key="inputs/field.jpg", Body=image.getvalue())
    etag = s3_client.head_object(Bucket=bucket, Key="inputs/field.jpg")["ETag"]
    sources = [ledger.source_identity(f"s3://{bucket}/inputs/field.jpg", etag)]
    first, rerun = (
        SeedreamInput(prompt="add a scarecrow", size="1K", image_input=[
            s3_client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": "inputs/field.jpg"},
                ExpiresIn=expires)])
        for expires in (900, 1200)
    )
    assert first.image_input != rerun.image_input

    @flow
    def rerun_of_a_crashed_edit() -> str:
        body = first.to_request()
        _died_while_sending(destination, body, sources)
        client = replicate.Client(api_token=seedream_sandbox.api_token,
                                  base_url=seedream_sandbox.base_url)
        client.models.predictions.create(model=MODEL_SLUG, input=body)
        created = create_prediction(rerun, credentials=credentials, wait_seconds=30,
                                    sources=sources, ledger=destination)
        return str(created.id)

    reattached = rerun_of_a_crashed_edit()
    assert [p["id"] for p in made(seedream_sandbox)] == [reattached]
    record_outcome("process died inside a sync-mode edit create; the rerun presigns again",
                   "record found by the source's URI + ETag; the prediction reused",
                   created=len(made(seedream_sandbox)), left_running=0)


def test_interrupted_sync_create_cancels_what_it_made(
    credentials: ReplicateCredentials, seedream_sandbox: Any,
) -> None:
    seedream_sandbox.configure(run_seconds=30)

    @flow
    async def impatient() -> None:
        await acreate_prediction.with_options(timeout_seconds=2)(
            REQUEST, credentials=credentials, wait_seconds=60)

    with pytest.raises(TimeoutError):
        asyncio.run(impatient())
    assert len(made(seedream_sandbox)) == 1
    assert running(seedream_sandbox) == []


def test_the_ledger_lists_every_open_prediction_of_a_big_run(destination: Any) -> None:
    """A crash hook must see every prediction a run left open, past S3's 1,000-key pages."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from prefect_seedream.tasks import prediction_ledger as ledger
    from prefect_seedream.tasks.replicate_client.prediction import PredictionStatus
    from prefect_seedream.tasks.replicate_client.protocol import utcnow

    at = ledger.Ledger(destination, destination.prefix)
    flow_run_id = str(uuid.uuid4())

    def claim(i: int) -> None:  # 1,000 creates on their way, 2 with known ids (1 finished)
        mine = ledger.Claim(at, ledger.run_scope(flow_run_id), f"key{i:04d}", run=flow_run_id)
        assert mine.send(sent_at=utcnow(), match={}, window=90, replace=False)
        if i >= 1000:
            status = PredictionStatus.SUCCEEDED if i == 1001 else PredictionStatus.STARTING
            assert mine.created(f"pred{i:04d}", status)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(claim, range(1002)))
    records = at.records_of(flow_run_id)
    assert len(records) == 1002
    still_open = [r for r in records if ledger.is_open(r)]
    assert len(still_open) == 1001
    assert [r["prediction_id"] for r in still_open if r["prediction_id"]] == ["pred1000"]


def test_a_pointer_closed_while_the_crash_hook_reads_does_not_hide_the_others(
        destination: Any) -> None:
    """Open pointers are deleted off the items' paths, so one can vanish between the hook's
    listing and its read: the hook must still see every other open prediction."""
    import uuid

    from prefect_seedream.tasks import prediction_ledger as ledger
    from prefect_seedream.tasks.replicate_client.prediction import PredictionStatus
    from prefect_seedream.tasks.replicate_client.protocol import utcnow

    at = ledger.Ledger(destination, destination.prefix)
    flow_run_id = str(uuid.uuid4())
    for i in range(3):
        mine = ledger.Claim(at, ledger.ITEMS, f"item{i}", run=flow_run_id)
        assert mine.send(sent_at=utcnow(), match={}, window=90, replace=False)
        assert mine.created(f"pred{i}", PredictionStatus.STARTING)
    ledger.flush_pointers()
    client, gone = destination.get_client(), at.open_path(flow_run_id, ledger.ITEMS, "item1")

    def close_it_first(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key") == gone:  # the item ends just as the hook gets to its pointer
            client.delete_object(Bucket=destination.bucket, Key=gone)

    client.meta.events.register("before-parameter-build.s3.GetObject", close_it_first)
    try:
        records = at.records_of(flow_run_id)
    finally:
        client.meta.events.unregister("before-parameter-build.s3.GetObject", close_it_first)
    assert sorted(r["prediction_id"] for r in records) == ["pred0", "pred2"]
