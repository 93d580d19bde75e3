"""Every deployment of the project in one list, for `serve()` or `.apply()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment


def build_all(work_pool_name: str | None = None) -> list[RunnerDeployment]:
    """Every deployment of the project, for `serve(*build_all())`."""
    from prefect_seedream.deployments import (
        contact_sheet,
        nightly,
        on_request,
        on_webhook,
        pipeline_examples,
    )

    return [
        on_request.build(work_pool_name),
        nightly.build(work_pool_name),
        on_webhook.build(work_pool_name),
        on_webhook.build_submit(work_pool_name),
        contact_sheet.build(work_pool_name),
        pipeline_examples.build_with_tasks(work_pool_name),
        pipeline_examples.build_via_deployment(work_pool_name),
    ]
