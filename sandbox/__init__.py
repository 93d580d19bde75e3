"""A local Replicate-compatible server that speaks Seedream 4, for tests and demos.

`python -m prefect_seedream.sandbox` (or `seedream sandbox`) serves it; `with Sandbox() as sb:`
runs it in-process; the `seedream_sandbox` pytest fixture comes from `pytest_plugin`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_seedream._lazy import lazy_exports

if TYPE_CHECKING:
    from prefect_seedream.sandbox.config import DEFAULT_TOKEN, SandboxConfig
    from prefect_seedream.sandbox.faults import Faults
    from prefect_seedream.sandbox.server import Sandbox

_EXPORTS = {
    "DEFAULT_TOKEN": "prefect_seedream.sandbox.config",
    "SandboxConfig": "prefect_seedream.sandbox.config",
    "Faults": "prefect_seedream.sandbox.faults",
    "Sandbox": "prefect_seedream.sandbox.server",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
