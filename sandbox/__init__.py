"""A local Replicate-compatible server that speaks Seedream 4, for tests and demos."""

from sandbox.config import DEFAULT_TOKEN, SandboxConfig
from sandbox.faults import Faults
from sandbox.server import Sandbox

__all__ = ["DEFAULT_TOKEN", "Faults", "Sandbox", "SandboxConfig"]
