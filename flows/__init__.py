"""Prefect flows for Seedream 4: generate or edit images and store them in S3.

Re-exported lazily so the `seedream` command starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from flows.batch_flows import generate_batch
    from flows.image_flows import edit_image, generate_images
    from flows.image_flows_async import aedit_image, agenerate_images

_EXPORTS = {
    "generate_images": "flows.image_flows",
    "edit_image": "flows.image_flows",
    "agenerate_images": "flows.image_flows_async",
    "aedit_image": "flows.image_flows_async",
    "generate_batch": "flows.batch_flows",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("flows", _EXPORTS)
