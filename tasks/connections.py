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

from tasks.errors import AuthenticationFailed
from tasks.replicate_api import ReplicateApi
from tasks.seedream_settings import get_settings

if TYPE_CHECKING:
    from blocks.replicate_credentials import ReplicateCredentials
    from blocks.s3_destination import S3Destination

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
    from blocks.replicate_credentials import ReplicateCredentials

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
        f" and REPLICATE_BASE_URL={base_url}" if base_url else "",
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
            api = _apis[key] = ReplicateApi(resolved.get_client(), factory=resolved.get_client)
        return api


def resolve_destination(destination: S3Destination | str | None) -> S3Destination:
    """An `S3Destination` from a block, a saved block's name, or `SEEDREAM_*` settings."""
    from blocks.s3_destination import S3Destination

    if isinstance(destination, S3Destination):
        return destination
    settings = get_settings()
    name = destination or settings.destination_block
    if name:
        found: S3Destination = S3Destination.load(name, _sync=True)  # type: ignore[call-arg,assignment]
        return found
    if not settings.bucket:
        raise ValueError(
            "no S3 destination: pass an S3Destination block (or its name), set "
            "SEEDREAM_DESTINATION_BLOCK, or set SEEDREAM_BUCKET"
        )
    kwargs: dict[str, Any] = {"bucket": settings.bucket, "prefix": settings.prefix}
    if settings.s3_endpoint_url:
        kwargs["endpoint_url"] = settings.s3_endpoint_url
    if settings.region_name:
        kwargs["region_name"] = settings.region_name
    return S3Destination(**kwargs)
