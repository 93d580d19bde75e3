"""prefect-aws `S3Bucket` blocks as destinations: the conversion, and the flows end to end
(real `replicate` client -> the sandbox -> moto's S3 server, under Prefect's test harness)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import sys
import uuid
from typing import Any

import pytest
from PIL import Image
from prefect import flow
from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket
from pydantic import SecretStr

from prefect_seedream.blocks.prefect_aws_adapter import s3_destination_from_bucket
from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
from prefect_seedream.blocks.s3_destination import S3Destination
from prefect_seedream.flows.image_flows import edit_image, generate_images
from prefect_seedream.flows.image_flows_async import aedit_image, agenerate_images

# --- the conversion: pure, no server ------------------------------------------------------------


def test_aws_credentials_become_an_equivalent_destination():
    bucket = S3Bucket(
        bucket_name="team-images", bucket_folder="team/x",
        credentials=AwsCredentials(
            aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="s3cr3t",
            aws_session_token="session-token", region_name="eu-west-1",
            aws_client_parameters={"endpoint_url": "http://127.0.0.1:9000"},
        ),
    )
    destination = s3_destination_from_bucket(bucket)
    assert isinstance(destination, S3Destination)
    assert (destination.bucket, destination.prefix) == ("team-images", "team/x")
    assert destination.join_key("p1", "0.jpg") == "team/x/p1/0.jpg"
    assert destination.region_name == "eu-west-1"
    assert destination.endpoint_url == "http://127.0.0.1:9000"
    assert destination.aws_access_key_id == "AKIAEXAMPLE"
    assert destination.aws_secret_access_key is not None
    assert destination.aws_secret_access_key.get_secret_value() == "s3cr3t"
    assert destination.aws_session_token is not None
    assert destination.aws_session_token.get_secret_value() == "session-token"
    assert "s3cr3t" not in repr(destination) and "session-token" not in repr(destination)


def test_minio_credentials_become_the_keys():
    bucket = S3Bucket(
        bucket_name="local-images",
        credentials=MinIOCredentials(
            minio_root_user="minio-admin", minio_root_password=SecretStr("minio-pass"),
            aws_client_parameters={"endpoint_url": "http://minio:9000"},
        ),
    )
    destination = s3_destination_from_bucket(bucket)
    assert (destination.bucket, destination.prefix) == ("local-images", "")
    assert destination.endpoint_url == "http://minio:9000"
    assert destination.aws_access_key_id == "minio-admin"
    assert destination.aws_secret_access_key is not None
    assert destination.aws_secret_access_key.get_secret_value() == "minio-pass"
    assert destination.aws_session_token is None


def test_empty_aws_credentials_keep_boto3s_default_chain():
    destination = s3_destination_from_bucket(S3Bucket(bucket_name="team-images"))
    assert destination.aws_access_key_id is None
    assert destination.aws_secret_access_key is None
    assert destination.endpoint_url is None and destination.region_name is None


@pytest.mark.parametrize(
    ("credentials", "field"),
    [
        (AwsCredentials(profile_name="dev"), "profile_name"),
        (AwsCredentials(aws_client_parameters={"verify": False}), "aws_client_parameters.verify"),
        (AwsCredentials(aws_client_parameters={"config": {"s3": {"addressing_style": "path"}}}),
         "aws_client_parameters.config"),
    ],
)
def test_settings_a_destination_cannot_carry_are_refused_by_name(credentials, field):
    with pytest.raises(ValueError, match=rf"{field}.*S3Destination"):
        s3_destination_from_bucket(S3Bucket(bucket_name="team-images", credentials=credentials))


def test_the_flows_do_not_import_prefect_aws_unless_given_its_block():
    script = (
        "import sys\n"
        "from prefect.utilities.callables import parameter_schema\n"
        "from prefect_seedream.blocks import S3Destination\n"
        "from prefect_seedream.flows.image_flows import edit_image, generate_images\n"
        "from prefect_seedream.flows.image_flows_async import aedit_image, agenerate_images\n"
        "from prefect_seedream.tasks.connections import resolve_destination\n"
        "schema = parameter_schema(generate_images.fn).model_dump()\n"
        "resolve_destination(S3Destination(bucket='my-bucket'))\n"
        "print(sorted(m for m in sys.modules if m.startswith('prefect_aws')))\n"
        "print(sorted(schema['definitions']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    modules, definitions = result.stdout.strip().splitlines()[-2:]
    assert modules == "[]"
    # A deployment's parameter form offers our destination block or a saved block's name.
    assert definitions == "['ReplicateCredentials', 'S3Destination']"


# --- the flows, end to end ----------------------------------------------------------------------


@pytest.fixture
def aws_bucket(s3_endpoint: str, bucket: str) -> S3Bucket:
    return S3Bucket(
        bucket_name=bucket, bucket_folder="team/x",
        credentials=AwsCredentials(
            aws_access_key_id="TEAMXKEY", aws_secret_access_key="aws-secret-in-a-block",
            region_name="us-east-1", aws_client_parameters={"endpoint_url": s3_endpoint},
        ),
    )


def call(mode: str, sync_flow: Any, async_task: Any, *args: Any, **kwargs: Any) -> Any:
    """The flow called the sync way, or its async twin awaited in a user's flow; its state."""
    if mode == "sync":
        return sync_flow(*args, return_state=True, **kwargs)

    @flow
    async def users_async_pipeline() -> Any:
        return await async_task(*args, **kwargs)

    return asyncio.run(users_async_pipeline(return_state=True))


def stored_keys(s3_client: Any, bucket: str) -> set[str]:
    """The bucket's objects, without the prediction ledger's records (not images)."""
    return {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
            if "/_ledger/" not in o["Key"]}


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_s3_bucket_block_receives_the_images_under_its_folder(
    mode: str, credentials: ReplicateCredentials, aws_bucket: S3Bucket, s3_client: Any,
    seedream_sandbox: Any,
) -> None:
    state = call(mode, generate_images, agenerate_images, "a red fox in fresh snow", size="1K",
                 credentials=credentials, destination=aws_bucket)
    [image] = state.result()
    assert image.key.startswith(f"team/x/{image.prediction_id}/0")
    assert image.uri == f"s3://{aws_bucket.bucket_name}/{image.key}"
    assert stored_keys(s3_client, aws_bucket.bucket_name) == {image.key}
    data = s3_client.get_object(Bucket=aws_bucket.bucket_name, Key=image.key)["Body"].read()
    assert hashlib.sha256(data).hexdigest() == image.sha256
    assert seedream_sandbox.counters()["creates"] == 1
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert "aws-secret-in-a-block" not in str(run.parameters)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_s3_source_is_read_with_the_s3_buckets_credentials(
    mode: str, credentials: ReplicateCredentials, aws_bucket: S3Bucket, s3_client: Any,
    seedream_sandbox: Any, s3_endpoint: str,
) -> None:
    source = io.BytesIO()
    Image.new("RGB", (1200, 800), (30, 120, 200)).save(source, format="JPEG")
    s3_client.put_object(Bucket=aws_bucket.bucket_name, Key="inputs/beach.jpg",
                         Body=source.getvalue())
    state = call(mode, edit_image, aedit_image, "make the sky stormy",
                 [f"s3://{aws_bucket.bucket_name}/inputs/beach.jpg"], size="1K",
                 credentials=credentials, destination=aws_bucket)
    [image] = state.result()
    assert image.key.startswith(f"team/x/{image.prediction_id}/0")
    sent = seedream_sandbox.prediction(image.prediction_id)["input"]["image_input"][0]
    # Handed to Replicate as a URL presigned by the bucket's own endpoint and keys.
    assert sent.startswith(f"{s3_endpoint}/{aws_bucket.bucket_name}/inputs/beach.jpg?")
    assert "TEAMXKEY" in sent  # signed with the block's key, not the environment's


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("spelled", ["name", "slug/name"])
def test_a_saved_s3_bucket_is_found_by_its_name(
    spelled: str, credentials: ReplicateCredentials, aws_bucket: S3Bucket, s3_client: Any,
) -> None:
    name = f"team-images-{uuid.uuid4().hex[:8]}"
    aws_bucket.save(name)
    images = generate_images(
        "a lighthouse at dawn", size="1K", credentials=credentials,
        destination=name if spelled == "name" else f"s3-bucket/{name}",
    )
    assert [image.key.split("/")[:2] for image in images] == [["team", "x"]]
    assert stored_keys(s3_client, aws_bucket.bucket_name) == {image.key for image in images}


@pytest.mark.usefixtures("prefect_harness")
def test_an_s3_bucket_with_minio_credentials(
    credentials: ReplicateCredentials, s3_endpoint: str, bucket: str, s3_client: Any,
) -> None:
    name = f"minio-images-{uuid.uuid4().hex[:8]}"
    S3Bucket(
        bucket_name=bucket, bucket_folder="minio/runs",
        credentials=MinIOCredentials(
            minio_root_user="testing", minio_root_password=SecretStr("testing"),
            aws_client_parameters={"endpoint_url": s3_endpoint},
        ),
    ).save(name)
    [image] = generate_images("a tin robot", size="1K", credentials=credentials, destination=name)
    assert image.key.startswith(f"minio/runs/{image.prediction_id}/")
    assert stored_keys(s3_client, bucket) == {image.key}


@pytest.mark.usefixtures("prefect_harness")
def test_an_unknown_name_fails_before_paying(
    credentials: ReplicateCredentials, seedream_sandbox: Any,
) -> None:
    with pytest.raises(ValueError, match=r"S3Destination.*S3Bucket"):
        generate_images("a lighthouse", size="1K", credentials=credentials,
                        destination=f"nowhere-{uuid.uuid4().hex[:8]}")
    assert seedream_sandbox.counters()["creates"] == 0
