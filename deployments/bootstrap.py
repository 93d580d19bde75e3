"""One-time set-up of a Prefect server for the Seedream deployments, idempotent.

    python -m prefect_seedream.deployments.bootstrap --bucket my-images   # pool, limit, blocks

creates the `seedream-process` work pool, the `replicate-create` global rate limit (600 creates a
minute), and saves the blocks the deployments use: `seedream-replicate` from the token in
`$REPLICATE_API_TOKEN` (never a command-line argument), `seedream-images` for the bucket, and
`replicate-webhook-secret` from `$REPLICATE_WEBHOOK_SECRET` when it is set.

`ensure_rate_limit` is also a `prefect deploy` build step (see prefect.yaml), so deploying
creates the limit the deployed runs then require.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from prefect_seedream.deployments.common import (
    CREDENTIALS_BLOCK,
    DESTINATION_BLOCK,
    RATE_LIMIT,
    WEBHOOK_SECRET_BLOCK,
    WORK_POOL,
)


def ensure_rate_limit(name: str = RATE_LIMIT, creates_per_minute: int = 600) -> dict[str, Any]:
    """Create or update the global rate limit `name`; a `prefect deploy` build step.

    Returns:
        `{"name", "limit", "slot_decay_per_second"}` (usable as `{{ step-id.name }}`).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    from prefect_seedream.tasks.concurrency import limit_shape

    limit, decay = limit_shape(creates_per_minute)  # a burst of 10 s, the rate as decay
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                name=name, limit=limit, slot_decay_per_second=decay))
        else:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(
                limit=limit, slot_decay_per_second=decay, active=True))
    return {"name": name, "limit": limit, "slot_decay_per_second": decay}


def ensure_work_pool(name: str = WORK_POOL) -> None:
    """Create the process work pool `name` unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=name, type="process",
                base_job_template=ProcessWorker.get_default_base_job_template()))


def save_blocks(*, bucket: str, prefix: str = "seedream", endpoint_url: str | None = None,
                region_name: str | None = None, base_url: str | None = None,
                environ: dict[str, str] | None = None) -> list[str]:
    """Save the blocks the deployments use; secrets come from `environ` only. Returns names."""
    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    from prefect_seedream.blocks import ReplicateCredentials, S3Destination

    env = dict(os.environ if environ is None else environ)
    saved = []
    token = env.get("REPLICATE_API_TOKEN", "").strip()
    if token:
        ReplicateCredentials(api_token=SecretStr(token), base_url=base_url).save(
            CREDENTIALS_BLOCK, overwrite=True)
        saved.append(CREDENTIALS_BLOCK)
    key_id, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    S3Destination(
        bucket=bucket, prefix=prefix, endpoint_url=endpoint_url, region_name=region_name,
        aws_access_key_id=key_id if endpoint_url else None,
        aws_secret_access_key=SecretStr(secret) if endpoint_url and secret else None,
    ).save(DESTINATION_BLOCK, overwrite=True)
    saved.append(DESTINATION_BLOCK)
    webhook_secret = env.get("REPLICATE_WEBHOOK_SECRET", "").strip()
    if webhook_secret:
        Secret(value=SecretStr(webhook_secret)).save(WEBHOOK_SECRET_BLOCK, overwrite=True)
        saved.append(WEBHOOK_SECRET_BLOCK)
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prefect_seedream.deployments.bootstrap",
        description="Create the work pool, the create rate limit and the blocks (idempotent).")
    parser.add_argument("--bucket", required=True, help="S3 bucket for the images")
    parser.add_argument("--prefix", default="seedream", help="key prefix (default: seedream)")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, R2, moto); "
                        "its keys come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    parser.add_argument("--region", help="AWS region of the bucket")
    parser.add_argument("--base-url", help="Replicate API base URL (a proxy or the sandbox)")
    parser.add_argument("--creates-per-minute", type=int, default=600,
                        help="the shared create budget (default: Replicate's 600)")
    args = parser.parse_args(argv)
    ensure_work_pool()
    limit = ensure_rate_limit(creates_per_minute=args.creates_per_minute)
    saved = save_blocks(bucket=args.bucket, prefix=args.prefix, endpoint_url=args.endpoint_url,
                        region_name=args.region, base_url=args.base_url)
    print(f"work pool {WORK_POOL}; rate limit {limit['name']} ({limit['limit']}/min); "
          f"blocks: {', '.join(saved)}")
    if CREDENTIALS_BLOCK not in saved:
        print(f"REPLICATE_API_TOKEN is not set: save the {CREDENTIALS_BLOCK} block yourself",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
