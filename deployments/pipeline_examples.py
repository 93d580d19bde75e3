"""The two other compositions of the example pipeline, deployed so they can be run on demand:
`catalogue-with-contact-sheet/example` (the tasks inside a flow) and
`catalogue-via-deployment/example` (`run_deployment` of `generate-images/on-request`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_seedream.deployments.common import DESTINATION_BLOCK, blocks, deployment

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

NAME = "example"


def build_with_tasks(work_pool_name: str | None = None) -> RunnerDeployment:
    from prefect_seedream.flows.pipeline_example import catalogue_with_contact_sheet

    return deployment(catalogue_with_contact_sheet, NAME, work_pool_name, parameters=blocks())


def build_via_deployment(work_pool_name: str | None = None) -> RunnerDeployment:
    from prefect_seedream.flows.pipeline_example import catalogue_via_deployment

    return deployment(catalogue_via_deployment, NAME, work_pool_name,
                      parameters={"destination": DESTINATION_BLOCK})
