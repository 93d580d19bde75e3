"""The S3Destination block: Prefect block standards, keys and URIs, clients, presigned URLs."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr

from prefect_seedream.blocks.s3_destination import S3Destination, parse_s3_uri


class TestS3DestinationStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[S3Destination]:
        return S3Destination

    def test_has_a_valid_image(self, block: type[S3Destination]) -> None:
        host = str(block._logo_url).split("/")[2]
        try:
            socket.create_connection((host, 443), timeout=3).close()
        except OSError:
            pytest.skip(f"The logo check downloads {host}; this machine is offline.")
        super().test_has_a_valid_image(block)


def test_block_type_does_not_clash_with_prefect_aws():
    assert S3Destination.get_block_type_slug() == "seedream-s3-destination"
    assert S3Destination.get_block_type_name() not in {"S3 Bucket", "AWS Credentials"}


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://my-bucket/a.jpg", ("my-bucket", "a.jpg")),
        ("s3://my.bucket-1/runs/p1/0.jpg", ("my.bucket-1", "runs/p1/0.jpg")),
    ],
)
def test_parse_s3_uri(uri, expected):
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("https://my-bucket/a.jpg", "Not an S3 URI"),
        ("s3:/my-bucket/a.jpg", "Not an S3 URI"),
        ("s3:///a.jpg", "no valid bucket"),
        ("s3://My_Bucket/a.jpg", "no valid bucket"),
        ("s3://my-bucket", "no object key"),
        ("s3://my-bucket/", "no object key"),
    ],
)
def test_parse_s3_uri_says_what_is_wrong(uri, message):
    with pytest.raises(ValueError, match=message):
        parse_s3_uri(uri)


def test_join_key_and_uri():
    dest = S3Destination(bucket="my-bucket", prefix="/seedream//runs/")
    assert dest.join_key("p1", "0.jpg") == "seedream/runs/p1/0.jpg"
    assert dest.join_key("/p1/", "", "/0.jpg") == "seedream/runs/p1/0.jpg"
    assert S3Destination(bucket="b12").join_key("p1/0.jpg") == "p1/0.jpg"
    assert dest.uri("seedream/runs/p1/0.jpg") == "s3://my-bucket/seedream/runs/p1/0.jpg"


def test_secrets_stay_out_of_repr_and_str():
    dest = S3Destination(bucket="b12", aws_access_key_id="AKIAEXAMPLE",
                         aws_secret_access_key=SecretStr("wJalrXUtnFEMI-secret"),
                         aws_session_token=SecretStr("FwoGZX-token"))
    for text in (repr(dest), str(dest), str(dest.model_dump())):
        assert "wJalrXUtnFEMI-secret" not in text and "FwoGZX-token" not in text


def test_clients_are_cached_per_configuration(s3_endpoint):
    a = S3Destination(bucket="b12", endpoint_url=s3_endpoint, region_name="us-east-1")
    b = S3Destination(bucket="other", prefix="x", endpoint_url=s3_endpoint, region_name="us-east-1")
    c = S3Destination(bucket="b12", endpoint_url=s3_endpoint, region_name="eu-west-1")
    assert a.get_client() is b.get_client()  # bucket and prefix do not change the client
    assert a.get_client() is not c.get_client()
    config = a.get_client().meta.config
    assert config.retries["total_max_attempts"] == 5 and config.retries["mode"] == "standard"
    assert config.max_pool_connections >= 8


def test_explicit_credentials_reach_s3_and_default_chain_works(s3_endpoint, bucket, monkeypatch):
    explicit = S3Destination(bucket=bucket, endpoint_url=s3_endpoint, region_name="us-east-1",
                             aws_access_key_id="k1", aws_secret_access_key=SecretStr("s1"))
    creds = explicit.get_client()._request_signer._credentials
    assert (creds.access_key, creds.secret_key) == ("k1", "s1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    chain = S3Destination(bucket=bucket, endpoint_url=s3_endpoint, region_name="us-west-2")
    assert chain.get_client()._request_signer._credentials.access_key == "from-env"
    assert chain.get_client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_presigned_url_downloads_the_object_without_credentials(s3_endpoint, bucket, s3_client):
    s3_client.put_object(Bucket=bucket, Key="in/ref.png", Body=b"reference image")
    dest = S3Destination(bucket=bucket, endpoint_url=s3_endpoint, region_name="us-east-1")
    for target in ("in/ref.png", f"s3://{bucket}/in/ref.png"):
        url = dest.presign_get(target, expires_in=60)
        assert url.startswith(f"{s3_endpoint}/{bucket}/in/ref.png?")
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
        assert httpx.get(url).content == b"reference image"


def test_presign_needs_a_key():
    with pytest.raises(ValueError, match="key"):
        S3Destination(bucket="b12", region_name="us-east-1").presign_get("")


def test_saved_block_loads_back_and_the_api_masks_secrets(prefect_harness):
    from prefect.client.orchestration import get_client

    dest = S3Destination(bucket="b12", prefix="runs", aws_access_key_id="AKIAEXAMPLE",
                         aws_secret_access_key=SecretStr("wJalrXUtnFEMI-secret"))
    dest.save("storage-test", overwrite=True)
    loaded = S3Destination.load("storage-test")
    assert loaded.aws_secret_access_key is not None
    assert loaded.aws_secret_access_key.get_secret_value() == "wJalrXUtnFEMI-secret"
    assert (loaded.bucket, loaded.prefix) == ("b12", "runs")

    with get_client(sync_client=True) as client:
        doc: Any = client.read_block_document_by_name(
            "storage-test", block_type_slug="seedream-s3-destination", include_secrets=False
        )
    assert "wJalrXUtnFEMI-secret" not in str(doc.data)
