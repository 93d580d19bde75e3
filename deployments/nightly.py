"""`generate-batch/nightly`: every night at 03:00 Europe/Berlin, generate every row of a manifest.

The manifest is a JSONL or CSV file, a local path or an `s3://` URI, one request a row
(`{"prompt": "...", "size": "2K", "aspect_ratio": "16:9"}`); see `flows.batch_flows`. Re-runs
skip what S3 already holds, so a failed night is finished by the next one without paying twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.schedules import Cron, Schedule

from deployments.common import blocks, deployment

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

NAME = "nightly"
CRON = "0 3 * * *"
TIMEZONE = "Europe/Berlin"
#: Where the deployed schedule reads its manifest unless told otherwise.
DEFAULT_MANIFEST = "s3://seedream-images/manifests/nightly.jsonl"


def schedule() -> Schedule:
    return Cron(CRON, timezone=TIMEZONE)


def build(work_pool_name: str | None = None, manifest: str = DEFAULT_MANIFEST) -> RunnerDeployment:
    """The deployment, for `serve(build())` or `build("seedream-process").apply()`."""
    from flows.batch_flows import generate_batch

    return deployment(
        generate_batch, NAME, work_pool_name, schedules=[schedule()],
        parameters={"manifest": manifest, **blocks()},
        description="Every night, generates every row of the manifest (resumable).",
    )
