"""Prefect tasks for Seedream 4 on Replicate.

Names are re-exported lazily so that `import tasks` (and the CLI's start-up) stays light: Prefect
is imported only when a task is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from tasks.errors import (
        AuthenticationFailed,
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
    from tasks.output_keys import output_key
    from tasks.prediction_model import Prediction, PredictionStatus
    from tasks.predictions import (
        await_prediction,
        cancel_prediction,
        create_prediction,
        get_prediction,
    )
    from tasks.predictions_async import (
        aawait_prediction,
        acancel_prediction,
        acreate_prediction,
        aget_prediction,
    )
    from tasks.seedream_input import SeedreamInput
    from tasks.storage import StoredImage, store_output, store_outputs
    from tasks.storage_async import astore_outputs

_EXPORTS: dict[str, str] = {
    "SeedreamInput": "tasks.seedream_input",
    "Prediction": "tasks.prediction_model",
    "PredictionStatus": "tasks.prediction_model",
    "create_prediction": "tasks.predictions",
    "get_prediction": "tasks.predictions",
    "await_prediction": "tasks.predictions",
    "cancel_prediction": "tasks.predictions",
    "acreate_prediction": "tasks.predictions_async",
    "aget_prediction": "tasks.predictions_async",
    "aawait_prediction": "tasks.predictions_async",
    "acancel_prediction": "tasks.predictions_async",
    "store_outputs": "tasks.storage",
    "store_output": "tasks.storage",
    "astore_outputs": "tasks.storage_async",
    "output_key": "tasks.output_keys",
    "retry_condition": "tasks.errors",
    "StoredImage": "tasks.storage",
    **{
        name: "tasks.errors"
        for name in (
            "AuthenticationFailed", "CreateOutcomeUnknown", "InvalidInput", "OutputExpired",
            "OutputInvalid", "PredictionAborted", "PredictionCanceled", "PredictionFailed",
            "PredictionTimedOut", "RateLimited", "ReplicateUnavailable", "SeedreamError",
            "StorageFailed",
        )
    },
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("tasks", _EXPORTS)
