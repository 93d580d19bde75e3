"""Turning "a block, a saved block's name, or None" into a ready client.

Clients are built once per process and per credentials: `replicate.Client` cannot be closed, so a
long-running worker must not build one per task run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from prefect_seedream.tasks.errors import AuthenticationFailed
from prefect_seedream.tasks.redaction import install_redaction, redact
from prefect_seedream.tasks.replicate_client.api import ReplicateApi
from prefect_seedream.tasks.seedream_settings import get_settings

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
    from prefect_seedream.blocks.s3_destination import S3Destination

_lock = threading.Lock()
_apis: dict[str, ReplicateApi] = {}


def _log() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_logger, get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("prefect_seedream")


def resolve_credentials(credentials: ReplicateCredentials | str | None) -> ReplicateCredentials:
    """A `ReplicateCredentials` from a block, a saved block's name, or the defaults.

    With None: the block named by `SEEDREAM_CREDENTIALS_BLOCK`, else `REPLICATE_API_TOKEN` (and
    `REPLICATE_BASE_URL`) from the environment, which is logged so nobody is surprised.
    """
    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials

    install_redaction()  # before any client exists: no URL or signature reaches a log
    if isinstance(credentials, ReplicateCredentials):
        return credentials
    name = credentials or get_settings().credentials_block
    if name:
        loaded: ReplicateCredentials = ReplicateCredentials.load(name, _sync=True)  # type: ignore[call-arg,assignment]
        return loaded
    token = os.environ.get("REPLICATE_API_TOKEN", "").strip()
    if not token:
        raise AuthenticationFailed(
            "no Replicate credentials: pass a ReplicateCredentials block (or its name), set "
            "SEEDREAM_CREDENTIALS_BLOCK, or export REPLICATE_API_TOKEN"
        )
    base_url = os.environ.get("REPLICATE_BASE_URL") or None
    _log().info(
        "No credentials block given; using REPLICATE_API_TOKEN from the environment%s",
        f" and REPLICATE_BASE_URL={redact(base_url)}" if base_url else "",
    )
    from pydantic import SecretStr

    return ReplicateCredentials(api_token=SecretStr(token), base_url=base_url)


def replicate_api(credentials: ReplicateCredentials | str | None) -> ReplicateApi:
    """The process-wide `ReplicateApi` for these credentials."""
    resolved = resolve_credentials(credentials)
    token = resolved.api_token.get_secret_value()
    key = hashlib.sha256(f"{token}\0{resolved.base_url}".encode()).hexdigest()
    with _lock:
        api = _apis.get(key)
        if api is None:
            api = _apis[key] = ReplicateApi(resolved.get_client())
        return api


def resolve_destination(destination: S3Destination | S3Bucket | str | None) -> S3Destination:
    """An `S3Destination` from a block, a saved block's name, or `SEEDREAM_*` settings.

    A prefect-aws `S3Bucket` (given, or saved under the name) becomes the equivalent
    `S3Destination`: see `prefect_seedream.blocks.prefect_aws_adapter`.
    """
    from prefect_seedream.blocks.prefect_aws_adapter import (
        is_s3_bucket,
        s3_destination_from_bucket,
    )
    from prefect_seedream.blocks.s3_destination import S3Destination

    install_redaction()
    if isinstance(destination, S3Destination):
        return destination
    if is_s3_bucket(destination):
        return s3_destination_from_bucket(destination)
    if destination is not None and not isinstance(destination, str):
        raise TypeError(
            f"destination must be an S3Destination or prefect-aws S3Bucket block, a saved "
            f"block's name, or None; got {type(destination).__name__}"
        )
    settings = get_settings()
    name = destination or settings.destination_block
    if name:
        return load_destination(name)
    if not settings.bucket:
        raise ValueError(
            "no S3 destination: pass an S3Destination or S3Bucket block (or its name), set "
            "SEEDREAM_DESTINATION_BLOCK, or set SEEDREAM_BUCKET"
        )
    kwargs: dict[str, Any] = {"bucket": settings.bucket, "prefix": settings.prefix,
                              "source_buckets": settings.source_buckets}
    if settings.s3_endpoint_url:
        kwargs["endpoint_url"] = settings.s3_endpoint_url
    if settings.region_name:
        kwargs["region_name"] = settings.region_name
    return S3Destination(**kwargs)


def load_destination(name: str) -> S3Destination:
    """The saved destination block named `name`, as an `S3Destination`.

    A plain name is looked up as a Seedream S3 Destination, then as a prefect-aws S3 Bucket
    (loading that one imports prefect_aws, through Prefect's collection registry, and asks for
    it to be installed if it is not); a `block-type-slug/name` (e.g. `s3-bucket/team-images`)
    names its type itself.
    """
    from prefect.blocks.core import Block
    from prefect.exceptions import ObjectNotFound

    from prefect_seedream.blocks.prefect_aws_adapter import (
        S3_BUCKET_SLUG,
        is_s3_bucket,
        s3_destination_from_bucket,
    )
    from prefect_seedream.blocks.s3_destination import S3Destination

    if "/" in name:
        slug = name
    else:
        try:
            found: S3Destination = S3Destination.load(name, _sync=True)  # type: ignore[call-arg,assignment]
            return found
        except ValueError as exc:
            if not isinstance(exc.__cause__, ObjectNotFound):
                raise  # it exists but does not load: say why, do not look elsewhere
        slug = f"{S3_BUCKET_SLUG}/{name}"
    try:
        block: Block = Block.load(slug, _sync=True)  # type: ignore[call-arg,assignment]
    except ValueError as exc:
        if not isinstance(exc.__cause__, ObjectNotFound):
            raise
        raise ValueError(
            f"No saved destination block named {name!r}: save an S3Destination "
            f"({S3Destination.get_block_type_slug()}) or a prefect-aws S3Bucket "
            f"({S3_BUCKET_SLUG}) under that name."
        ) from exc
    if isinstance(block, S3Destination):
        return block
    if is_s3_bucket(block):
        return s3_destination_from_bucket(block)
    raise TypeError(
        f"The block {name!r} is a {type(block).__name__}, not an S3Destination or S3Bucket."
    )
