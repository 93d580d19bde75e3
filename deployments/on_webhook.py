"""The webhook path: `submit-images/with-webhook` starts predictions that report back by
webhook; `store-prediction/on-webhook` stores them when `replicate.prediction.completed` arrives.

No worker waits while Replicate works. The event comes from the receiver that ships with the
project (`python -m prefect_seedream.deployments.webhook_receiver`) or from a Prefect Cloud webhook
(README).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.events import DeploymentEventTrigger

from prefect_seedream.deployments.common import blocks, deployment
from prefect_seedream.flows.events import PREDICTION_COMPLETED

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

STORE_NAME = "on-webhook"
SUBMIT_NAME = "with-webhook"


def trigger() -> DeploymentEventTrigger:
    """One store run per completed prediction (failed ones fail the run, which reports them)."""
    return DeploymentEventTrigger(
        name="store on webhook",
        expect={PREDICTION_COMPLETED},
        match={"prefect.resource.id": "replicate.prediction.*"},
        parameters={"prediction_id": "{{ event.payload.prediction_id }}"},
    )


def build(work_pool_name: str | None = None) -> RunnerDeployment:
    """`store-prediction/on-webhook`."""
    from prefect_seedream.flows.webhook_flows import store_prediction

    return deployment(
        store_prediction, STORE_NAME, work_pool_name, parameters=blocks(), triggers=[trigger()],
        description="Stores a prediction's images when its completion webhook arrives.",
    )


def build_submit(work_pool_name: str | None = None,
                 webhook_url: str = "https://hooks.example.com/replicate") -> RunnerDeployment:
    """`submit-images/with-webhook` (run it with `run_deployment` or from the UI)."""
    from prefect_seedream.flows.webhook_flows import submit_images

    return deployment(
        submit_images, SUBMIT_NAME, work_pool_name,
        parameters={"webhook_url": webhook_url, **blocks()},
        description="Starts a prediction whose completion webhook stores it.",
    )
