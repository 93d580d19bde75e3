"""`generate-batch/nightly`: every night at 03:00 Europe/Berlin, generate every row of a manifest.

The manifest is a JSONL or CSV file, one request a row
(`{"prompt": "...", "size": "2K", "aspect_ratio": "16:9"}`); see
`prefect_seedream.flows.batch.flow`. By default it is `manifests/nightly.jsonl`, a key relative
to the saved destination block `seedream-images`: the run reads it from that block's bucket,
under its prefix. After `python -m prefect_seedream.deployments.bootstrap --bucket my-images`
(prefix `seedream`), that is `s3://my-images/seedream/manifests/nightly.jsonl`:

    aws s3 cp nightly.jsonl s3://my-images/seedream/manifests/nightly.jsonl

Give `manifest` (to `build()`, in prefect.yaml, or per run) for another key of that bucket, an
`s3://` URI, or an absolute path on the worker. Set `SEEDREAM_MANIFEST_ROOT` in the worker's
environment to confine local paths to one directory (and make every bare name a key); see
`prefect_seedream.flows.batch.manifest_text`. Re-runs skip what S3 already holds, so a failed
night is finished by the next one without paying twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.schedules import Cron, Schedule

from prefect_seedream.deployments.common import blocks, deployment

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

NAME = "nightly"
CRON = "0 3 * * *"
TIMEZONE = "Europe/Berlin"
#: Where the deployed schedule reads its manifest unless told otherwise: a key under the
#: destination block's prefix, in its bucket (the block's name is not a bucket).
DEFAULT_MANIFEST = "manifests/nightly.jsonl"


def schedule() -> Schedule:
    return Cron(CRON, timezone=TIMEZONE)


def build(work_pool_name: str | None = None, manifest: str = DEFAULT_MANIFEST) -> RunnerDeployment:
    """The deployment, for `serve(build())` or `build("seedream-process").apply()`."""
    from prefect_seedream.flows.batch.flow import generate_batch

    return deployment(
        generate_batch, NAME, work_pool_name, schedules=[schedule()],
        parameters={"manifest": manifest, **blocks()},
        description="Every night, generates every row of the manifest (resumable).",
    )
