"""Store first, judge after: every image Replicate made and we paid for reaches S3.

Through the flows, against the sandbox's faults (the hosted model returning a size off Seedream's
table, or output files that are not images) and moto's S3 server, sync and async.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr

from prefect_seedream import OutputInvalid, agenerate_images, generate_images
from prefect_seedream.blocks import S3Destination

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def destination(s3_endpoint: str, bucket: str) -> S3Destination:
    return S3Destination(
        bucket=bucket, prefix="kept", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key=SecretStr("testing"),
    )


def _generate(mode: str, *args: Any, **kwargs: Any) -> Any:
    if mode == "sync":
        return generate_images(*args, **kwargs)
    import asyncio

    from prefect import flow

    @flow
    async def run() -> Any:
        return await agenerate_images(*args, **kwargs)

    return asyncio.run(run())


def _keys(s3_client: Any, bucket: str) -> list[str]:
    """The bucket's objects, without the prediction ledger's records (not images)."""
    listing = s3_client.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", [])
                  if "/_ledger/" not in item["Key"])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_image_off_the_size_table_is_stored_with_the_difference_recorded(
    mode: str, seedream_sandbox: Any, credentials: Any, destination: S3Destination,
    s3_client: Any, record_outcome: Any,
) -> None:
    seedream_sandbox.faults.size_drift(1, dx=16, dy=0)  # 2576x1440 where the table says 2560
    (image,) = _generate(mode, "a harbour at noon", size="2K", aspect_ratio="16:9",
                         credentials=credentials, destination=destination)
    assert (image.width, image.height) == (2576, 1440)
    assert image.size_note is not None and "2560x1440" in image.size_note
    body = s3_client.get_object(Bucket=destination.bucket, Key=image.key)
    assert Image.open(io.BytesIO(body["Body"].read())).size == (2576, 1440)
    assert body["Metadata"]["expected-size"] == "2560x1440"
    assert len(seedream_sandbox.predictions()) == 1
    record_outcome(f"model returns a size off the table ({mode})",
                   "stored at its real size; the difference recorded beside it",
                   created=len(seedream_sandbox.predictions()), left_running=0,
                   outputs_lost=1 - len(_keys(s3_client, destination.bucket)))


@pytest.mark.parametrize("kind", ["html", "truncated"])
def test_output_bytes_that_are_not_an_image_are_kept_in_quarantine(
    kind: str, seedream_sandbox: Any, credentials: Any, destination: S3Destination,
    s3_client: Any, record_outcome: Any,
) -> None:
    seedream_sandbox.faults.corrupt_outputs(1, kind=kind)
    with pytest.raises(OutputInvalid) as info:
        generate_images("a harbour at dusk", size="1K", credentials=credentials,
                        destination=destination)
    (prediction,) = seedream_sandbox.predictions()
    key = f"kept/_quarantine/{prediction['id']}/0.bin"
    assert f"s3://{destination.bucket}/{key}" in str(info.value)
    assert _keys(s3_client, destination.bucket) == [key]  # nothing at the image's own key
    kept = s3_client.get_object(Bucket=destination.bucket, Key=key)
    assert kept["Metadata"]["prediction-id"] == prediction["id"] and kept["ContentLength"] > 0
    record_outcome(f"corrupt output: {kind}",
                   "OutputInvalid naming the quarantined copy; the bytes kept",
                   created=len(seedream_sandbox.predictions()), left_running=0,
                   outputs_lost=1 - len(_keys(s3_client, destination.bucket)))
