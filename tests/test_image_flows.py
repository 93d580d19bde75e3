"""The main product path end to end: Prefect flows -> real `replicate` client over HTTP -> the
sandbox -> bytes streamed into moto's S3 server, checked there."""

from __future__ import annotations

import asyncio
import hashlib
import io
from typing import Any

import pytest
from PIL import Image
from prefect import flow
from pydantic import SecretStr

from prefect_seedream import (
    AuthenticationFailed,
    InvalidInput,
    StorageFailed,
    aedit_image,
    agenerate_images,
    edit_image,
    generate_images,
)
from prefect_seedream.blocks import ReplicateCredentials, S3Destination
from prefect_seedream.tasks.storage import DEFAULT_RETRY_DELAYS

pytestmark = pytest.mark.usefixtures("prefect_harness")


class Flows:
    """The image flows, called the sync way, or their async twins awaited in a user's flow."""

    def __init__(self, mode: str, retries: int | None = None) -> None:
        self.mode = mode
        self.retries = retries

    def retried(self, retries: int) -> Flows:
        """The same flows, run with Prefect's `retries` (`with_options(retries=...)`)."""
        return Flows(self.mode, retries)

    def _run(self, sync_flow: Any, async_task: Any, *args: Any, **kwargs: Any) -> Any:
        if self.retries is not None:
            sync_flow = sync_flow.with_options(retries=self.retries)
            async_task = async_task.with_options(retries=self.retries)
        if self.mode == "sync":
            return sync_flow(*args, **kwargs)
        return_state = kwargs.pop("return_state", False)

        @flow
        async def users_async_pipeline() -> Any:
            return await async_task(*args, **kwargs)

        return asyncio.run(users_async_pipeline(return_state=return_state))

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(generate_images, agenerate_images, *args, **kwargs)

    def edit(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(edit_image, aedit_image, *args, **kwargs)


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Flows:
    return Flows(request.param)


@pytest.fixture
def destination(s3_endpoint: str, bucket: str) -> S3Destination:
    return S3Destination(
        bucket=bucket, prefix="runs", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key=SecretStr("testing"),
    )


def read_object(s3_client: Any, bucket: str, key: str) -> tuple[bytes, dict[str, Any]]:
    obj = s3_client.get_object(Bucket=bucket, Key=key)
    return obj["Body"].read(), obj


def test_generate_images_stores_checked_images_in_s3(
    run: Flows, credentials: ReplicateCredentials, destination: S3Destination, s3_client: Any,
    seedream_sandbox: Any,
) -> None:
    state = run.generate(
        "a red fox in fresh snow", size="1K", aspect_ratio="16:9",
        credentials=credentials, destination=destination, return_state=True,
    )
    images = state.result()
    if asyncio.iscoroutine(images):
        images = asyncio.run(images)
    assert len(images) == 1
    image = images[0]
    data, obj = read_object(s3_client, image.bucket, image.key)
    assert image.uri == f"s3://{destination.bucket}/{image.key}"
    assert image.key.startswith(f"runs/{image.prediction_id}/0")
    assert hashlib.sha256(data).hexdigest() == image.sha256
    assert len(data) == image.size_bytes
    assert Image.open(io.BytesIO(data)).size == (1280, 720) == (image.width, image.height)
    assert obj["ContentType"] == image.content_type == "image/jpeg"
    metadata = obj["Metadata"]
    assert metadata["prediction-id"] == image.prediction_id
    assert "fox" in metadata["prompt"]
    assert metadata["flow-run-id"] == str(state.state_details.flow_run_id)
    assert seedream_sandbox.counters()["creates"] == 1
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        reports = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["seedream-images"])))
    report = next(a for a in reports if image.uri in str(a.data))
    assert "1280x720" in str(report.data) and image.prediction_id in str(report.data)


def test_sequential_generation_keeps_every_image_even_when_fewer_come_back(
    run: Flows, credentials: ReplicateCredentials, destination: S3Destination, s3_client: Any,
    seedream_sandbox: Any,
) -> None:
    seedream_sandbox.configure(auto_image_count=3)
    images = run.generate(
        "four seasons of one tree", size="1K", max_images=4,
        credentials=credentials, destination=destination,
    )
    assert [image.index for image in images] == [0, 1, 2]
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=destination.bucket)["Contents"]
            if "/_ledger/" not in o["Key"]}
    assert keys == {image.key for image in images}
    assert seedream_sandbox.counters()["creates"] == 1


def test_edit_image_from_an_s3_source(
    run: Flows, credentials: ReplicateCredentials, destination: S3Destination, s3_client: Any,
    seedream_sandbox: Any,
) -> None:
    source = io.BytesIO()
    Image.new("RGB", (1500, 1000), (30, 120, 200)).save(source, format="JPEG")
    s3_client.put_object(Bucket=destination.bucket, Key="inputs/beach.jpg",
                         Body=source.getvalue())
    images = run.edit(
        "make the sky stormy", [f"s3://{destination.bucket}/inputs/beach.jpg"], size="1K",
        credentials=credentials, destination=destination,
    )
    assert len(images) == 1
    data, _ = read_object(s3_client, images[0].bucket, images[0].key)
    width, height = Image.open(io.BytesIO(data)).size
    assert abs(width / height - 1.5) < 0.02  # match_input_image kept the source's ratio
    sent = seedream_sandbox.prediction(images[0].prediction_id)["input"]["image_input"][0]
    assert sent.startswith(destination.endpoint_url) and "inputs/beach.jpg" in sent


def test_a_retried_edit_reattaches_to_the_prediction_its_first_attempt_paid_for(
    run: Flows, credentials: ReplicateCredentials, destination: S3Destination, s3_client: Any,
    seedream_sandbox: Any, record_outcome: Any,
) -> None:
    """Every attempt presigns the S3 source again, so the URL sent differs; the retry still
    finds the first attempt's prediction in the ledger and stores its images."""
    source = io.BytesIO()
    Image.new("RGB", (1200, 1200), (200, 90, 40)).save(source, format="JPEG")
    s3_client.put_object(Bucket=destination.bucket, Key="inputs/src.jpg", Body=source.getvalue())
    # Every try of the first attempt's download fails; the retry's downloads work.
    seedream_sandbox.faults.fail_next("files", len(DEFAULT_RETRY_DELAYS) + 1, status=503)

    images = run.retried(1).edit(
        "make it autumn", [f"s3://{destination.bucket}/inputs/src.jpg"], size="1K",
        credentials=credentials, destination=destination,
    )

    made = seedream_sandbox.predictions()
    assert [p["id"] for p in made] == [images[0].prediction_id]
    assert made[0]["status"] == "succeeded"
    data, obj = read_object(s3_client, images[0].bucket, images[0].key)
    assert hashlib.sha256(data).hexdigest() == images[0].sha256
    assert obj["Metadata"]["prediction-id"] == made[0]["id"]
    running = [p for p in made if p["status"] in ("starting", "processing")]
    record_outcome(f"edit retried after its output downloads failed ({run.mode})",
                   "the retry re-attaches through the ledger (source named by URI + ETag, not "
                   "its presigned URL) and stores the first prediction's images",
                   created=len(made), left_running=len(running))


@pytest.mark.parametrize(
    "options",
    [
        {"size": "8K"},
        {"aspect_ratio": "5:4"},
        {"size": "custom", "width": 900, "height": 2000},
        {"max_images": 16},
        {"size": "2K", "width": 2048},
    ],
)
def test_invalid_input_is_refused_before_any_request(
    run: Flows, options: dict[str, Any], credentials: ReplicateCredentials,
    destination: S3Destination, seedream_sandbox: Any, record_outcome: Any,
) -> None:
    with pytest.raises(InvalidInput):
        run.generate("x", credentials=credentials, destination=destination, **options)
    counters = seedream_sandbox.counters()
    assert counters["creates"] == 0 and counters["gets"] == 0
    record_outcome(f"invalid input {sorted(options)} ({run.mode})",
                   "InvalidInput naming the field, before any request",
                   created=counters["creates"], left_running=0)


def test_edit_of_a_missing_s3_source_is_refused_before_any_request(
    credentials: ReplicateCredentials, destination: S3Destination, seedream_sandbox: Any,
) -> None:
    with pytest.raises(InvalidInput, match="images\\[0\\]"):
        edit_image("x", [f"s3://{destination.bucket}/nope.jpg"],
                   credentials=credentials, destination=destination)
    assert seedream_sandbox.counters()["creates"] == 0


def test_edit_with_no_image_is_refused_before_any_request(
    credentials: ReplicateCredentials, destination: S3Destination, seedream_sandbox: Any,
) -> None:
    """Seedream accepts a prompt alone (it then makes a square image), so an edit with an empty
    `images` would silently become a paid generation; it is refused instead."""
    with pytest.raises(InvalidInput, match="at least one image"):
        edit_image("make it dusk", [], credentials=credentials, destination=destination)
    assert seedream_sandbox.counters()["creates"] == 0


def test_unwritable_bucket_is_refused_before_paying(
    credentials: ReplicateCredentials, s3_endpoint: str, seedream_sandbox: Any,
) -> None:
    missing = S3Destination(bucket="no-such-bucket-here", endpoint_url=s3_endpoint,
                            aws_access_key_id="testing",
                            aws_secret_access_key=SecretStr("testing"))
    with pytest.raises(StorageFailed, match="no-such-bucket-here"):
        generate_images("x", size="1K", credentials=credentials, destination=missing)
    assert seedream_sandbox.counters()["creates"] == 0


def test_bad_token_is_a_clear_error_that_does_not_echo_the_token(
    run: Flows, seedream_sandbox: Any, destination: S3Destination, record_outcome: Any,
) -> None:
    wrong = "r8_wrong_token_0123456789"
    bad = ReplicateCredentials(api_token=SecretStr(wrong), base_url=seedream_sandbox.base_url)
    with pytest.raises(AuthenticationFailed) as info:
        run.generate("x", size="1K", credentials=bad, destination=destination)
    assert "ReplicateCredentials" in str(info.value)
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert seedream_sandbox.predictions() == []
    record_outcome(f"bad token ({run.mode})", "AuthenticationFailed, not retried, token not echoed",
                   created=len(seedream_sandbox.predictions()), left_running=0,
                   secret_occurrences=int(wrong in str(info.value)))


def test_interrupted_prediction_is_replaced_once_and_its_images_stored(
    run: Flows, credentials: ReplicateCredentials, destination: S3Destination,
    seedream_sandbox: Any,
) -> None:
    seedream_sandbox.faults.interrupt_predictions(1)
    images = run.generate("a windmill", size="1K", credentials=credentials,
                          destination=destination)
    statuses = sorted(p["status"] for p in seedream_sandbox.predictions())
    assert statuses == ["failed", "succeeded"]
    assert seedream_sandbox.prediction(images[0].prediction_id)["status"] == "succeeded"
