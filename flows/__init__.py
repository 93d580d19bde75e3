"""Prefect flows for Seedream 4: generate or edit images and store them in S3.

Re-exported lazily so the `seedream` command starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.image_flows import edit_image, generate_images
    from flows.image_flows_async import aedit_image, agenerate_images

_EXPORTS = {
    "generate_images": "flows.image_flows",
    "edit_image": "flows.image_flows",
    "agenerate_images": "flows.image_flows_async",
    "aedit_image": "flows.image_flows_async",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
