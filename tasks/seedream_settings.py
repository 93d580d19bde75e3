"""Settings for prefect-seedream, read from `SEEDREAM_*` environment variables on demand.

Secrets never live here: tokens and keys belong in blocks.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from prefect_seedream.tasks.seedream_input import MODEL_SLUG


class SeedreamSettings(BaseSettings):
    """Defaults used when a flow or task is not given a value.

    Example:
        ```python
        from prefect_seedream.tasks.seedream_settings import SeedreamSettings

        settings = SeedreamSettings()  # reads SEEDREAM_BUCKET, SEEDREAM_TIMEOUT_SECONDS, ...
        ```
    """

    model_config = SettingsConfigDict(env_prefix="SEEDREAM_", extra="ignore")

    credentials_block: str | None = Field(
        default=None, description="Name of the saved ReplicateCredentials block to use by default."
    )
    destination_block: str | None = Field(
        default=None, description="Name of the saved S3Destination block to use by default."
    )
    bucket: str | None = Field(default=None, description="Default S3 bucket for outputs.")
    prefix: str = Field(default="seedream", description="Default key prefix for outputs.")
    source_buckets: list[str] = Field(
        default_factory=list,
        description=(
            "Buckets besides SEEDREAM_BUCKET that s3:// edit sources may come from, as a JSON "
            "list (the settings' destination's `source_buckets`)."
        ),
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (MinIO, R2, a local moto server); None for AWS."
    )
    region_name: str | None = Field(default=None, description="AWS region of the bucket.")
    model: str = Field(
        default=MODEL_SLUG,
        description="Model every task and flow runs unless given model= (owner/name[:version]).",
    )
    schema_cache_dir: str | None = Field(
        default=None,
        description=(
            "Directory that keeps each model's published input schema (the schema only, never "
            "a token); None: the user cache dir (~/.cache/prefect-seedream/schemas)."
        ),
    )
    schema_ttl_seconds: float = Field(
        default=300.0, ge=0,
        description="How long a fetched model schema is trusted before it is read again.",
    )
    timeout_seconds: float = Field(
        default=600.0, gt=0, description="How long to wait for a prediction before cancelling it."
    )
    cancel_after_margin_seconds: float = Field(
        default=60.0, ge=0,
        description="Added to the timeout for the server-side Cancel-After deadline.",
    )
    sync_wait_seconds: int = Field(
        default=60, ge=0, le=60,
        description=(
            "The flows hold each create open this long (Replicate's sync mode) so most "
            "predictions need no polling at all; 0 turns it off."
        ),
    )
    poll_initial_seconds: float = Field(default=0.5, gt=0, description="First poll interval.")
    poll_max_seconds: float = Field(default=5.0, gt=0, description="Longest poll interval.")
    interrupted_retries: int = Field(
        default=1, ge=0,
        description="New predictions the flows try after 'Prediction interrupted (code: PA)'.",
    )
    create_attempts: int = Field(default=6, ge=1, description="Most create attempts on 429/5xx.")
    claim_window_seconds: float = Field(
        default=90.0, gt=0,
        description=(
            "How long another run's create may stay unanswered (plus its sync wait) before a "
            "run that wants the same request looks for what it made and takes over."
        ),
    )
    max_rate_limit_wait_seconds: float = Field(
        default=60.0, gt=0, description="Longest single wait honoured after a 429."
    )
    source_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Hosts (`cdn.example.com` or `cdn.example.com:8443`) https edit sources may come "
            "from, as a JSON list; empty accepts any host on a public address."
        ),
    )
    source_private_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Hosts (`host` or `host:port`, JSON list) edit sources may come from although they "
            "resolve to loopback, private or link-local addresses (a local MinIO, the sandbox); "
            "plain http is accepted only from these, and only on loopback."
        ),
    )
    source_max_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0,
        description="The most bytes of one edit source the worker reads to size or hash it.",
    )
    contact_sheet_max_images: int = Field(
        default=64, ge=1, description="The most images one contact sheet reads."
    )
    contact_sheet_max_image_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0,
        description="The most bytes of one image a contact sheet reads (streamed, never whole).",
    )
    async_worker_threads: int = Field(
        default=4, ge=1,
        description=(
            "Most worker threads the async tasks and flows of one event loop use at once for "
            "S3, the ledger and input checks; more of them make the loop wait longer for the "
            "GIL (BENCHMARKS.md figure (b))."
        ),
    )
    rate_limit_name: str | None = Field(
        default=None,
        description="Prefect global rate limit every create takes a slot of (None: off).",
    )
    manifest_root: str | None = Field(
        default=None,
        description=(
            "Directory that local batch manifests must lie in (symlinks resolved); set it for "
            "deployments. When set, a manifest name without ./ or / is always a key under the "
            "destination. None: any local path, and a local file of a bare name wins over the key."
        ),
    )
    max_output_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1,
        description=(
            "Largest output file stored as an image (Seedream's 4K JPEGs are a few MB); a "
            "larger one is kept under _quarantine/ and its store fails with OutputInvalid."
        ),
    )
    previews: bool = Field(
        default=True,
        description=(
            "Make a small JPEG preview of every stored image from the bytes streaming to S3 and "
            "show it in the seedream-images artifact and the batch gallery."
        ),
    )
    preview_max_bytes: int = Field(
        default=8192, ge=256,
        description="Most bytes of one preview JPEG; a preview that cannot fit is left out.",
    )
    store_thumbnails: bool = Field(
        default=False,
        description="Also write each preview next to its image, at .../thumbs/{index}.jpg.",
    )
    gallery_items: int = Field(
        default=48, ge=1, description="Most items a batch's gallery artifact shows.",
    )
    gallery_show: Literal["first", "latest"] = Field(
        default="first",
        description="Which items a batch gallery shows: the manifest's first or latest ones.",
    )
    gallery_max_bytes: int = Field(
        default=512 * 1024, ge=4096,
        description=(
            "Most bytes of a batch's gallery artifact; items past it are left out and the "
            "artifact says how many."
        ),
    )

    spend_limit_usd_per_day: float | None = Field(
        default=None, gt=0,
        description=(
            "Most dollars every run together may spend (or hold reserved) per day; each create "
            "reserves its worst case first and is refused with BudgetExceeded past it."
        ),
    )
    spend_limit_images_per_day: int | None = Field(
        default=None, gt=0, description="Most output images every run together may pay per day."
    )
    spend_limit_usd_per_month: float | None = Field(
        default=None, gt=0, description="Most dollars every run together may spend per month."
    )
    spend_limit_images_per_month: int | None = Field(
        default=None, gt=0,
        description="Most output images every run together may pay per calendar month.",
    )
    spend_time_zone: str = Field(
        default="UTC",
        description="IANA time zone whose midnight starts a spend limit's day and month.",
    )
    price_per_image_usd: float | None = Field(
        default=None, ge=0,
        description=(
            "Price of one output image, for every model (spend limit, batch estimates and "
            "caps); None: the model's price in prefect_seedream.tasks.model_prices."
        ),
    )


_built: dict[tuple[tuple[str, str], ...], SeedreamSettings] = {}


def get_settings() -> SeedreamSettings:
    """The settings of the current environment: built again whenever a `SEEDREAM_` variable
    changed, else the instance built last (building reads and validates every field, ~3 ms,
    and creates, polls and manifest rows ask often). Treat it as read-only."""
    key = tuple(sorted((k, v) for k, v in os.environ.items()
                       if k[:9].upper() == "SEEDREAM_"))
    found = _built.get(key)
    if found is None:
        found = SeedreamSettings()
        _built.clear()  # one environment at a time
        _built[key] = found
    return found
