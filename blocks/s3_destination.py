"""Where generated images go: an S3 bucket (or an S3-compatible store) plus a key prefix.

The block holds credentials as `SecretStr` and hands out a boto3 client that is cached per
process, like prefect-aws's `AwsCredentials.get_client`. Any credential left empty falls back to
boto3's default chain (environment, `~/.aws`, instance or task role).
"""

from __future__ import annotations

import functools
import re
import threading
from typing import TYPE_CHECKING, Any

from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, SecretStr

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mypy_boto3_s3 import S3Client

#: Retries for every S3 request: botocore's "standard" mode retries 5xx, throttling and
#: connection errors with jittered exponential backoff (50 ms base for non-throttling errors).
_RETRIES: dict[str, Any] = {"mode": "standard", "total_max_attempts": 5}
#: Connections kept open for reuse. A batch at `max_in_flight=256` runs 512 item threads,
#: each making S3 requests (claim, open pointer, image, result.json); past the pool's size
#: urllib3 closes a connection after its one request and the next request opens a new one
#: (figure 1d at 64 in flight with 32: "Connection pool is full, discarding connection" by
#: the hundred). Idle connections cost a socket each; S3 closes them when they sit idle.
_MAX_POOL_CONNECTIONS = 1024

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_client_lock = threading.Lock()


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split an `s3://bucket/key` URI into its bucket and key.

    Args:
        uri: A URI of the form `s3://bucket/key`; the key may contain slashes.

    Returns:
        The `(bucket, key)` pair.

    Raises:
        ValueError: If the URI is not `s3://`, names no valid bucket, or has no key.

    Example:
        ```python
        from prefect_seedream.blocks.s3_destination import parse_s3_uri

        assert parse_s3_uri("s3://my-bucket/runs/abc/0.jpg") == ("my-bucket", "runs/abc/0.jpg")
        ```
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"Not an S3 URI (expected 's3://bucket/key'): {uri!r}")
    bucket, sep, key = uri[len("s3://") :].partition("/")
    if not _BUCKET_RE.match(bucket):
        raise ValueError(f"S3 URI {uri!r} has no valid bucket name (expected 's3://bucket/key').")
    if not sep or not key.strip("/"):
        raise ValueError(f"S3 URI {uri!r} names a bucket but no object key.")
    return bucket, key


@functools.lru_cache(maxsize=16)
def _cached_client(
    region_name: str | None,
    endpoint_url: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None,
) -> S3Client:
    import boto3
    from botocore.config import Config

    # A fresh Session per client: boto3's default session is not thread-safe.
    session = boto3.session.Session(
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        region_name=region_name,
    )
    config = Config(
        retries=_RETRIES,  # type: ignore[arg-type]
        max_pool_connections=_MAX_POOL_CONNECTIONS,
        signature_version="s3v4",
        connect_timeout=10,
        read_timeout=60,
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


class S3Destination(Block):
    """An S3 bucket and key prefix where Seedream outputs are stored.

    Works with AWS S3 and S3-compatible stores (MinIO, Cloudflare R2, moto) through
    `endpoint_url`. Credentials left empty fall back to boto3's default credential chain.

    Example:
        Load a saved destination and store a file under its prefix:
        ```python
        from prefect_seedream.blocks import S3Destination

        destination = S3Destination.load("BLOCK_NAME")
        key = destination.join_key("manual", "hello.txt")
        destination.get_client().put_object(Bucket=destination.bucket, Key=key, Body=b"hi")
        print(destination.uri(key))
        ```
    """

    _block_type_name = "Seedream S3 Destination"
    _logo_url = HttpUrl(
        "https://cdn.sanity.io/images/3ugk85nk/production/"
        "d74b16fe84ce626345adf235a47008fea2869a60-225x225.png"
    )
    _documentation_url = HttpUrl(
        "https://docs.aws.amazon.com/AmazonS3/latest/userguide/upload-objects.html"
    )

    bucket: str = Field(description="The name of the S3 bucket that receives the images.")
    prefix: str = Field(
        default="",
        description=(
            "A key prefix (folder) under which every object is written; "
            "empty means the bucket root."
        ),
    )
    source_buckets: list[str] = Field(
        default_factory=list,
        description=(
            "Other buckets that edit sources (s3:// URIs) may be read from; the destination's own "
            "bucket always may, any other bucket is refused before any request is made."
        ),
    )
    region_name: str | None = Field(
        default=None,
        description="The AWS region of the bucket; empty uses boto3's configured default region.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="A custom S3 endpoint URL for S3-compatible stores such as MinIO, R2 or moto.",
    )
    aws_access_key_id: str | None = Field(
        default=None,
        description="An AWS access key ID; empty uses boto3's default credential chain.",
        title="AWS Access Key ID",
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None,
        description="The secret access key that goes with the access key ID.",
        title="AWS Secret Access Key",
    )
    aws_session_token: SecretStr | None = Field(
        default=None,
        description="A session token, needed only for temporary credentials.",
        title="AWS Session Token",
    )

    def get_client(self) -> S3Client:
        """Return a boto3 S3 client for this destination, cached per process.

        Clients are keyed on every field that affects them, built under a lock, and are
        thread-safe, so concurrent uploads share one connection pool (up to 1,024 connections)
        and one retry policy (botocore "standard" mode, 5 attempts in all).

        Returns:
            A boto3 S3 client.

        Example:
            ```python
            from prefect_seedream.blocks.s3_destination import S3Destination

            destination = S3Destination(bucket="my-bucket", region_name="us-east-1")
            assert destination.get_client() is destination.get_client()
            ```
        """
        key = (
            self.region_name,
            self.endpoint_url,
            self.aws_access_key_id,
            _secret(self.aws_secret_access_key),
            _secret(self.aws_session_token),
        )
        with _client_lock:
            return _cached_client(*key)

    def join_key(self, *parts: str) -> str:
        """Join the destination prefix and `parts` into an object key without stray slashes.

        Args:
            *parts: Key segments; empty segments and leading/trailing slashes are ignored.

        Returns:
            The object key, e.g. `prefix/a/b.jpg`.

        Example:
            ```python
            from prefect_seedream.blocks.s3_destination import S3Destination

            destination = S3Destination(bucket="my-bucket", prefix="/runs/")
            assert destination.join_key("abc/", "/0.jpg") == "runs/abc/0.jpg"
            ```
        """
        return join_key_parts(self.prefix, *parts)

    def reads_sources_from(self, bucket: str) -> bool:
        """Whether edit sources may be read from `bucket`: this destination's own bucket or one
        named in `source_buckets`.

        Example:
            ```python
            from prefect_seedream.blocks.s3_destination import S3Destination

            destination = S3Destination(bucket="my-bucket", source_buckets=["my-photos"])
            assert destination.reads_sources_from("my-photos")
            assert not destination.reads_sources_from("private-other")
            ```
        """
        return bucket == self.bucket or bucket in self.source_buckets

    def uri(self, key: str) -> str:
        """Return the `s3://bucket/key` URI of an object key (used as given, not prefixed).

        Example:
            ```python
            from prefect_seedream.blocks.s3_destination import S3Destination

            assert S3Destination(bucket="my-bucket").uri("a/0.jpg") == "s3://my-bucket/a/0.jpg"
            ```
        """
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def presign_get(self, uri_or_key: str, expires_in: int = 900) -> str:
        """Return a presigned HTTPS (or HTTP, for a local endpoint) GET URL for an object.

        Use it to hand an S3 image to Replicate as a file input. The URL grants read access to
        anyone holding it until it expires: never log it.

        Args:
            uri_or_key: An `s3://bucket/key` URI (any bucket: the flows check
                `reads_sources_from` first), or a full key in this bucket.
            expires_in: Lifetime of the URL in seconds.

        Returns:
            The presigned URL.

        Example:
            ```python
            from prefect_seedream.blocks.s3_destination import S3Destination

            destination = S3Destination(bucket="my-bucket", region_name="us-east-1")
            url = destination.presign_get("s3://my-bucket/runs/abc/0.jpg", expires_in=600)
            ```
        """
        if uri_or_key.startswith("s3://"):
            bucket, key = parse_s3_uri(uri_or_key)
        else:
            bucket, key = self.bucket, uri_or_key.lstrip("/")
            if not key:
                raise ValueError("presign_get needs an object key or an s3:// URI.")
        return self.get_client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in
        )


def join_key_parts(*parts: str) -> str:
    """Join key segments with single slashes, dropping empty segments and edge slashes.

    Example:
        ```python
        from prefect_seedream.blocks.s3_destination import join_key_parts

        assert join_key_parts("", "/runs//", "a", "0.jpg") == "runs/a/0.jpg"
        ```
    """
    pieces: list[str] = []
    for part in parts:
        pieces.extend(p for p in str(part).split("/") if p)
    return "/".join(pieces)


__all__ = ["S3Destination", "join_key_parts", "parse_s3_uri"]
