"""Deployments of the prefect-seedream flows: one module per deployment, each with `build()`.

`prefect.yaml` declares the same deployments for `prefect deploy`; `build_all()` returns them as
`RunnerDeployment`s for `serve()` (`python -m prefect_seedream.deployments`) or `.apply()` to a work
pool. Re-exported lazily, so `python -m prefect_seedream.deployments.webhook_receiver` does not
import every flow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_seedream._lazy import lazy_exports

if TYPE_CHECKING:
    from prefect_seedream.deployments.registry import build_all

_EXPORTS = {"build_all": "prefect_seedream.deployments.registry"}

__all__ = ["build_all"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
