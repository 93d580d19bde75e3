"""A prefect-aws `S3Bucket` block as a Seedream destination (the `prefect-seedream[aws]` extra).

Users who already keep S3 access in prefect-aws blocks pass their `S3Bucket` (with its
`AwsCredentials` or `MinIOCredentials`) wherever an `S3Destination` is accepted.
`prefect_seedream.tasks.connections.resolve_destination` turns it into the equivalent
`S3Destination` with `s3_destination_from_bucket`: the bucket's `bucket_folder` becomes the
prefix, and the credentials block gives the keys, the region and the endpoint URL.

Nothing here imports prefect_aws until an `S3Bucket` is actually converted: a value can only be
an `S3Bucket` once the user's own code has imported `prefect_aws.s3`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any, TypeGuard

from pydantic import PlainValidator, SecretStr
from pydantic.json_schema import SkipJsonSchema

from prefect_seedream.blocks.s3_destination import S3Destination

if TYPE_CHECKING:  # pragma: no cover - typing only
    from typing import TypeAlias

    from prefect_aws import S3Bucket

#: The block type slug of prefect-aws's `S3Bucket`, under which saved buckets are found.
S3_BUCKET_SLUG = "s3-bucket"


def is_s3_bucket(value: object) -> TypeGuard[S3Bucket]:
    """Whether `value` is a prefect-aws `S3Bucket`, without importing prefect_aws.

    Example:
        ```python
        from prefect_seedream.blocks.prefect_aws_adapter import is_s3_bucket
        from prefect_seedream.blocks.s3_destination import S3Destination

        assert not is_s3_bucket(S3Destination(bucket="my-bucket"))
        ```
    """
    module = sys.modules.get("prefect_aws.s3")
    return module is not None and isinstance(value, module.S3Bucket)


def _only_s3_buckets(value: Any) -> Any:
    if not is_s3_bucket(value):
        raise ValueError("not a prefect-aws S3Bucket block")
    return value


# A prefect-aws `S3Bucket`, for annotations only (never for isinstance checks):
# `destination: S3Destination | S3BucketBlock | str | None`.
if TYPE_CHECKING:
    S3BucketBlock: TypeAlias = S3Bucket
else:
    # What flows validate against at runtime: an `S3Bucket` instance passes unchanged, anything
    # else is left to the other members of the annotation. It adds nothing to a deployment's
    # parameter schema (a saved bucket is chosen there by its name, a string).
    S3BucketBlock = Annotated[Any, PlainValidator(_only_s3_buckets), SkipJsonSchema()]


def _unsupported(bucket: S3Bucket) -> list[str]:
    """The settings of `bucket` an `S3Destination` cannot carry, by their field names."""
    credentials = bucket.credentials
    params = credentials.aws_client_parameters
    found = [
        name for name in ("profile_name", "assume_role_arn") if getattr(credentials, name, None)
    ]
    if params.verify is not None and params.verify is not True:
        found.append("aws_client_parameters.verify")
    if params.verify_cert_path:
        found.append("aws_client_parameters.verify_cert_path")
    if params.config:
        found.append("aws_client_parameters.config")
    return found


def s3_destination_from_bucket(bucket: S3Bucket) -> S3Destination:
    """The `S3Destination` that writes where a prefect-aws `S3Bucket` block writes.

    The bucket's `bucket_folder` becomes the key prefix. From `AwsCredentials`: the access key,
    secret key, session token, region and `aws_client_parameters.endpoint_url`; from
    `MinIOCredentials`: `minio_root_user` and `minio_root_password` as the keys, with its region
    and endpoint URL. Empty AWS credentials stay empty, so boto3's default chain applies, as it
    does for the `S3Bucket` itself.

    Args:
        bucket: A prefect-aws `S3Bucket` block.

    Returns:
        An equivalent `S3Destination` (not saved).

    Raises:
        ValueError: The credentials use a setting an `S3Destination` cannot carry: a profile,
            an assumed role, custom TLS verification or a botocore config.

    Example:
        ```python
        from prefect_aws import AwsCredentials, S3Bucket
        from prefect_seedream.blocks.prefect_aws_adapter import s3_destination_from_bucket

        bucket = S3Bucket(bucket_name="team-images", bucket_folder="seedream",
                          credentials=AwsCredentials(region_name="eu-west-1"))
        destination = s3_destination_from_bucket(bucket)
        assert (destination.bucket, destination.prefix) == ("team-images", "seedream")
        ```
    """
    from prefect_aws.credentials import MinIOCredentials

    unsupported = _unsupported(bucket)
    if unsupported:
        raise ValueError(
            f"The S3Bucket block for bucket {bucket.bucket_name!r} sets "
            f"{', '.join(unsupported)}, which prefect-seedream cannot use: clear that (for a "
            "profile or a CA bundle, set AWS_PROFILE or AWS_CA_BUNDLE in the environment "
            "instead; boto3 reads them), or pass an S3Destination block."
        )
    credentials = bucket.credentials
    key_id: str | None
    secret: SecretStr | None
    token: SecretStr | None
    if isinstance(credentials, MinIOCredentials):
        key_id, secret, token = credentials.minio_root_user, credentials.minio_root_password, None
    else:
        key_id, secret = credentials.aws_access_key_id, credentials.aws_secret_access_key
        token = SecretStr(credentials.aws_session_token) if credentials.aws_session_token else None
    return S3Destination(
        bucket=bucket.bucket_name,
        prefix=bucket.bucket_folder or "",
        region_name=credentials.region_name,
        endpoint_url=credentials.aws_client_parameters.endpoint_url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
    )


__all__ = ["S3_BUCKET_SLUG", "S3BucketBlock", "is_s3_bucket", "s3_destination_from_bucket"]
