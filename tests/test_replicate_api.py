"""The one HTTP choke point to Replicate sends each request exactly as often as our protocol says.

The `replicate` client's own transport retries a GET that answers 429, 503 or 504 (or fails to
connect) up to 10 times, with backoff, out of our sight: a poll "attempt" could take a minute and
a deadline could not hold. `ReplicateApi` keeps the client's base URL, token and user agent but
not that transport. Checked against the sandbox over real HTTP, counting what it received.
"""

from __future__ import annotations

from typing import Any

import pytest

from prefect_seedream.tasks.replicate_client.api import ReplicateApi
from prefect_seedream.tasks.replicate_client.request_builders import build_create, build_get


def _create(api: ReplicateApi) -> str:
    response = api.send(build_create("bytedance/seedream-4", {"prompt": "a kite", "size": "1K"}))
    assert response.status == 201, response.body
    return str(response.body["id"])


def test_a_failing_get_is_sent_once_not_retried_underneath(
    seedream_sandbox: Any, credentials: Any
) -> None:
    api = ReplicateApi(credentials.get_client())
    prediction_id = _create(api)
    before = seedream_sandbox.counters()["requests"].get("get", 0)
    seedream_sandbox.faults.fail_next("get", 3, status=503)

    answers = [api.send(build_get(prediction_id)).status for _ in range(4)]

    assert answers == [503, 503, 503, 200]  # each answer is the server's, none swallowed
    assert seedream_sandbox.counters()["requests"]["get"] - before == 4


@pytest.mark.anyio
async def test_the_async_driver_does_not_retry_underneath_either(
    seedream_sandbox: Any, credentials: Any
) -> None:
    api = ReplicateApi(credentials.get_client())
    prediction_id = _create(api)
    before = seedream_sandbox.counters()["requests"].get("get", 0)
    seedream_sandbox.faults.fail_next("get", 2, status=429)

    answers = [(await api.asend(build_get(prediction_id))).status for _ in range(3)]

    assert answers == [429, 429, 200]
    assert seedream_sandbox.counters()["requests"]["get"] - before == 3


def test_the_token_and_base_url_still_come_from_the_credentials(
    seedream_sandbox: Any, credentials: Any
) -> None:
    api = ReplicateApi(credentials.get_client())
    assert str(api._http.base_url).rstrip("/") == seedream_sandbox.base_url.rstrip("/")
    assert api._http.headers["Authorization"] == f"Bearer {seedream_sandbox.api_token}"
    assert "replicate-python" in api._http.headers["User-Agent"]
