"""Names every deployment shares: the work pool, the saved blocks, the rate limit.

Change them here and in prefect.yaml together (a test checks that both agree).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

#: A process work pool: `prefect work-pool create seedream-process --type process`.
WORK_POOL = "seedream-process"
#: Saved blocks the deployments reference by name; a token is never a deployment parameter.
CREDENTIALS_BLOCK = "seedream-replicate"
DESTINATION_BLOCK = "seedream-images"
#: A Prefect `Secret` block holding Replicate's `whsec_...` webhook signing secret.
WEBHOOK_SECRET_BLOCK = "replicate-webhook-secret"
#: The global rate limit every create takes a slot of (600 creates a minute by default).
RATE_LIMIT = "replicate-create"
TAGS = ["seedream"]


def blocks() -> dict[str, str]:
    """The `credentials` and `destination` parameters every Seedream deployment passes."""
    return {"credentials": CREDENTIALS_BLOCK, "destination": DESTINATION_BLOCK}


def job_variables() -> dict[str, Any]:
    """Process-pool job variables: turn the shared create budget on for deployed runs."""
    return {"env": {"SEEDREAM_RATE_LIMIT_NAME": RATE_LIMIT}}


def deploy_options(work_pool_name: str | None) -> dict[str, Any]:
    """`to_deployment` options: the installed module as entrypoint (a worker needs no checkout),
    and for a work pool (None: `serve`, which has none) the pool and its job variables."""
    from prefect.types.entrypoint import EntrypointType

    options: dict[str, Any] = {"entrypoint_type": EntrypointType.MODULE_PATH, "tags": TAGS}
    if work_pool_name is not None:
        options.update(work_pool_name=work_pool_name, job_variables=job_variables())
    return options


def deployment(flow: Flow[..., Any], name: str, work_pool_name: str | None,
               **options: Any) -> RunnerDeployment:
    """`flow.to_deployment(name, ...)` with `deploy_options(work_pool_name)`."""
    return cast("RunnerDeployment",
                flow.to_deployment(name=name, **deploy_options(work_pool_name), **options))
