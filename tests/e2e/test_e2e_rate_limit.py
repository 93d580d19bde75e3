"""The shared create budget against a real server: configured but missing is a clear error before
any request; present, deployed creates take a slot (see test_e2e_events)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from e2e_support import Stack
from pydantic import SecretStr

from prefect_seedream.blocks import ReplicateCredentials
from prefect_seedream.tasks.concurrency import RateLimitUnavailable
from prefect_seedream.tasks.predictions import create_prediction
from prefect_seedream.tasks.predictions_async import acreate_prediction
from prefect_seedream.tasks.seedream_input import SeedreamInput

pytestmark = pytest.mark.server


@pytest.fixture
def credentials(seedream_stack: Stack) -> ReplicateCredentials:
    sandbox = seedream_stack.sandbox
    return ReplicateCredentials(api_token=SecretStr(sandbox.api_token), base_url=sandbox.base_url)


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_a_configured_but_missing_limit_fails_before_any_request(
    twin: str, seedream_stack: Stack, prefect_api: Any, credentials: ReplicateCredentials,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEEDREAM_RATE_LIMIT_NAME", f"no-such-limit-{twin}")
    before = seedream_stack.sandbox.counters()["creates"]
    request = SeedreamInput(prompt="a lighthouse", aspect_ratio="1:1", size="1K")
    with pytest.raises(RateLimitUnavailable) as caught:
        if twin == "sync":
            create_prediction.fn(request, credentials=credentials)
        else:
            anyio.run(lambda: acreate_prediction.fn(request, credentials=credentials))
    assert f"prefect gcl create no-such-limit-{twin} --limit 100" in str(caught.value)
    assert seedream_stack.sandbox.counters()["creates"] == before
