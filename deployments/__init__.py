"""Deployments of the prefect-seedream flows: one module per deployment, each with `build()`.

`prefect.yaml` declares the same deployments for `prefect deploy`; `build_all()` returns them as
`RunnerDeployment`s for `serve()` (`python -m deployments`) or `.apply()` to a work pool.
Re-exported lazily, so `python -m deployments.webhook_receiver` does not import every flow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deployments.registry import build_all

_EXPORTS = {"build_all": "deployments.registry"}

__all__ = ["build_all"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deployments' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
