"""prefect-seedream: ByteDance Seedream 4 on Replicate, from Prefect 3, with every image in S3.

The public face. Everything a flow needs is importable from here::

    from prefect_seedream import ReplicateCredentials, S3Destination, generate_images

Names are resolved lazily, so `import prefect_seedream` stays as light as the `seedream` command
needs (Prefect is imported only when a flow, task or block is first used). Where things are:

- `prefect_seedream.flows`: the flows (`generate_images`, `edit_image`, their async twins) and
  `prefect_seedream.flows.batch` (`generate_batch`).
- `prefect_seedream.tasks`: the Prefect tasks, on `tasks.replicate_client` (how we talk to
  Replicate) and `tasks.s3_storage` (how bytes reach S3).
- `prefect_seedream.blocks`: `ReplicateCredentials`, `S3Destination`.
- `prefect_seedream.deployments`: deployments, events in, the webhook receiver.
- `prefect_seedream.sandbox`: the local Replicate-compatible server (free, offline).
- `prefect_seedream.cli`: the `seedream` command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_seedream._lazy import lazy_exports

if TYPE_CHECKING:
    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
    from prefect_seedream.blocks.s3_destination import S3Destination
    from prefect_seedream.flows.batch.flow import generate_batch
    from prefect_seedream.flows.batch.manifest_text import ManifestInvalid
    from prefect_seedream.flows.batch.report import BatchItemsFailed, BatchResult
    from prefect_seedream.flows.image_flows import edit_image, generate_images
    from prefect_seedream.flows.image_flows_async import aedit_image, agenerate_images
    from prefect_seedream.flows.source_images import SourceRefused
    from prefect_seedream.tasks.errors import (
        AuthenticationFailed,
        BudgetExceeded,
        CreateOutcomeUnknown,
        InvalidInput,
        OutputExpired,
        OutputInvalid,
        PredictionAborted,
        PredictionCanceled,
        PredictionFailed,
        PredictionTimedOut,
        RateLimited,
        ReplicateUnavailable,
        SeedreamError,
        StorageFailed,
        retry_condition,
    )
    from prefect_seedream.tasks.predictions import (
        await_prediction,
        cancel_prediction,
        create_prediction,
        get_prediction,
    )
    from prefect_seedream.tasks.predictions_async import (
        aawait_prediction,
        acancel_prediction,
        acreate_prediction,
        aget_prediction,
    )
    from prefect_seedream.tasks.replicate_client.prediction import Prediction, PredictionStatus
    from prefect_seedream.tasks.s3_storage.keys import UnsafeKey, output_key
    from prefect_seedream.tasks.seedream_input import SeedreamInput
    from prefect_seedream.tasks.storage import StoredImage, store_output, store_outputs
    from prefect_seedream.tasks.storage_async import astore_outputs

_EXPORTS: dict[str, str] = {  # public name -> the module that defines it
    "ReplicateCredentials": "prefect_seedream.blocks.replicate_credentials",
    "S3Destination": "prefect_seedream.blocks.s3_destination",
    **dict.fromkeys(("generate_images", "edit_image"), "prefect_seedream.flows.image_flows"),
    **dict.fromkeys(("agenerate_images", "aedit_image"),
                    "prefect_seedream.flows.image_flows_async"),
    "generate_batch": "prefect_seedream.flows.batch.flow",
    **dict.fromkeys(("BatchItemsFailed", "BatchResult"), "prefect_seedream.flows.batch.report"),
    **dict.fromkeys((
        "AuthenticationFailed", "BudgetExceeded", "CreateOutcomeUnknown", "InvalidInput",
        "OutputExpired",
        "OutputInvalid", "PredictionAborted", "PredictionCanceled", "PredictionFailed",
        "PredictionTimedOut", "RateLimited", "ReplicateUnavailable", "SeedreamError",
        "StorageFailed", "retry_condition",
    ), "prefect_seedream.tasks.errors"),
    **dict.fromkeys(("create_prediction", "get_prediction", "await_prediction",
                     "cancel_prediction"), "prefect_seedream.tasks.predictions"),
    **dict.fromkeys(("acreate_prediction", "aget_prediction", "aawait_prediction",
                     "acancel_prediction"), "prefect_seedream.tasks.predictions_async"),
    **dict.fromkeys(("Prediction", "PredictionStatus"),
                    "prefect_seedream.tasks.replicate_client.prediction"),
    **dict.fromkeys(("output_key", "UnsafeKey"), "prefect_seedream.tasks.s3_storage.keys"),
    "SourceRefused": "prefect_seedream.flows.source_images",
    "ManifestInvalid": "prefect_seedream.flows.batch.manifest_text",
    "SeedreamInput": "prefect_seedream.tasks.seedream_input",
    **dict.fromkeys(("StoredImage", "store_output", "store_outputs"),
                    "prefect_seedream.tasks.storage"),
    "astore_outputs": "prefect_seedream.tasks.storage_async",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
