"""`make-contact-sheet/on-images-stored`: the example downstream pipeline, chained by an event.

Every `seedream.images.stored` event runs `prefect_seedream.flows.pipeline_example.contact_sheet`
with the event's image URIs, named after the prediction (so a repeated event rewrites the same
sheet).

Whoever can emit events chooses both parameters, so the flow trusts neither: it reads only objects
under the destination's prefix (any other URI is refused before a request, with the same message
whether or not it exists), streams them, stops at `SEEDREAM_CONTACT_SHEET_MAX_IMAGES` and
`SEEDREAM_CONTACT_SHEET_MAX_IMAGE_BYTES`, and refuses a name (the event's `prediction_id`) that
breaks the key rule (`tasks.s3_storage.keys`), such as `../../leaked-x`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.events import DeploymentEventTrigger

from prefect_seedream.deployments.common import DESTINATION_BLOCK, deployment
from prefect_seedream.flows.events import IMAGES_STORED

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

NAME = "on-images-stored"


def trigger() -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name="contact sheet on images stored",
        expect={IMAGES_STORED},
        match={"prefect.resource.id": "seedream.prediction.*"},
        parameters={"images": "{{ event.payload.uris }}",
                    "name": "{{ event.payload.prediction_id }}"},
    )


def build(work_pool_name: str | None = None) -> RunnerDeployment:
    from prefect_seedream.flows.pipeline_example import contact_sheet

    return deployment(
        contact_sheet, NAME, work_pool_name, parameters={"destination": DESTINATION_BLOCK},
        triggers=[trigger()],
        description="Makes a contact sheet of every stored image set.",
    )
