"""`generate-images/on-request`: generate images whenever a `seedream.generate.requested` event
arrives, with the prompt and options from the event's payload.

Any system can ask (see the README): `prefect_seedream.flows.events.request_generation(...)` from
Python, `prefect event emit seedream.generate.requested --resource-id seedream.request.42 --payload
'{"prompt": "..."}'` from a shell, or a Prefect Cloud webhook. Anyone who can emit events can
spend Replicate credit: keep API access to your Prefect server as narrow as that.

An event that cannot become a valid request still becomes a flow run, so the problem shows where
people look: every template has a default (a missing `prompt` renders as `""`, never as a
template error the server only logs), and the deployment does not enforce its parameter schema,
so a mistyped option (`"max_images": "lots"`) is refused by the flow run itself. Either way the
run ends Failed with the reason (`InvalidInput`, or Prefect's `ParameterTypeError` naming the
field), emits `seedream.images.failed`, and nothing is paid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.events import DeploymentEventTrigger

from prefect_seedream.deployments.common import blocks, deployment
from prefect_seedream.flows.events import GENERATE_REQUESTED

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

NAME = "on-request"

#: Payload keys and their defaults (the flow's own); missing keys take the default. A missing
#: prompt renders as "" so the run is created and fails visibly ("prompt is empty").
PARAMETERS = {
    "prompt": "{{ event.payload.prompt | default('') }}",
    "size": "{{ event.payload.size | default('2K') }}",
    "aspect_ratio": "{{ event.payload.aspect_ratio | default('1:1') }}",
    "width": "{{ event.payload.width | default(none) }}",
    "height": "{{ event.payload.height | default(none) }}",
    "max_images": "{{ event.payload.max_images | default(1) }}",
    "enhance_prompt": "{{ event.payload.enhance_prompt | default(none) }}",
    "key_prefix": "{{ event.payload.key_prefix | default(none) }}",
    "model": "{{ event.payload.model | default(none) }}",
}


def trigger() -> DeploymentEventTrigger:
    """Runs the deployment once per `seedream.generate.requested` event."""
    return DeploymentEventTrigger(
        name="generate on request",
        expect={GENERATE_REQUESTED},
        match={"prefect.resource.id": "seedream.request.*"},
        parameters=dict(PARAMETERS),
    )


def build(work_pool_name: str | None = None) -> RunnerDeployment:
    """The deployment, for `serve(build())` or `build("seedream-process").apply()`."""
    from prefect_seedream.flows.image_flows import generate_images

    return deployment(
        generate_images, NAME, work_pool_name, parameters=blocks(), triggers=[trigger()],
        description="Generates images for each seedream.generate.requested event.",
        # Validated by the run (a Failed run, an event), not by the server (a log line only).
        enforce_parameter_schema=False,
    )
