"""Pytest fixtures: one sandbox server per session, reset before each test.

Register with `pytest_plugins = ["prefect_seedream.sandbox.pytest_plugin"]` or the `pytest11` entry
point.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from replicate.client import Client

from prefect_seedream.sandbox.config import SandboxConfig
from prefect_seedream.sandbox.server import Sandbox

TEST_TOKEN = "r8_sandbox_test_token"
_FAST: dict[str, float] = {"queue_seconds": 0.0, "run_seconds": 0.1, "retention_seconds": 3600.0}


@pytest.fixture(scope="session")
def seedream_sandbox_server() -> Iterator[Sandbox]:
    """The session's sandbox server (prefer `seedream_sandbox`, which resets it)."""
    config = SandboxConfig().replace(**_FAST)
    with Sandbox(api_token=TEST_TOKEN, config=config) as sandbox:
        yield sandbox


@pytest.fixture
def seedream_sandbox(seedream_sandbox_server: Sandbox) -> Iterator[Sandbox]:
    """A running sandbox with no predictions, zeroed counters, no faults, fast timings.

    Example:
        ```python
        def test_generates(seedream_sandbox):
            client = Client(api_token=seedream_sandbox.api_token,
                                      base_url=seedream_sandbox.base_url)
            ...
        ```
    """
    sandbox = seedream_sandbox_server
    sandbox.reset()
    sandbox.configure(**_FAST, **_defaults_except_timings())
    yield sandbox
    sandbox.faults.clear()


def _defaults_except_timings() -> dict[str, object]:
    defaults = SandboxConfig().to_dict()
    for name in _FAST:
        defaults.pop(name)
    return defaults


@pytest.fixture
def seedream_client(seedream_sandbox: Sandbox) -> Iterator[Client]:
    """A real `replicate.Client` pointed at `seedream_sandbox`, closed after the test."""
    client = Client(api_token=seedream_sandbox.api_token,
                              base_url=seedream_sandbox.base_url)
    yield client
    close_client(client)


def close_client(client: Client) -> None:
    """Close the httpx client inside a `replicate.Client` (1.0.7 has no `close()`)."""
    http_client = getattr(client, "_Client__client", None)
    if http_client is not None:
        http_client.close()
