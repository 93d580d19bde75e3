"""Twenty generations in one async flow run at the same time on one event loop: the sandbox's
own timestamps show every prediction overlapping every other."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
from prefect import flow
from pydantic import SecretStr

from prefect_seedream import agenerate_images
from prefect_seedream.blocks import ReplicateCredentials, S3Destination

pytestmark = pytest.mark.usefixtures("prefect_harness")


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _blocks(sandbox: Any, s3_endpoint: str, bucket: str
            ) -> tuple[ReplicateCredentials, S3Destination]:
    return (ReplicateCredentials(api_token=SecretStr(sandbox.api_token), base_url=sandbox.base_url),
            S3Destination(bucket=bucket, endpoint_url=s3_endpoint, aws_access_key_id="testing",
                          aws_secret_access_key=SecretStr("testing")))


def test_twenty_async_generations_overlap_on_one_loop(
    seedream_sandbox: Any, s3_endpoint: str, bucket: str,
) -> None:
    seedream_sandbox.configure(run_seconds=3.0)
    credentials, destination = _blocks(seedream_sandbox, s3_endpoint, bucket)
    prompts = [f"postcard number {i}" for i in range(20)]

    @flow
    async def twenty_posts() -> list[Any]:
        return await asyncio.gather(*(
            agenerate_images(p, size="1K", credentials=credentials, destination=destination)
            for p in prompts
        ))

    results = asyncio.run(twenty_posts())
    assert sorted(images[0].key.split("/")[-2] for images in results) == sorted(
        p["id"] for p in seedream_sandbox.predictions())
    predictions = seedream_sandbox.predictions()
    assert len(predictions) == 20 and {p["status"] for p in predictions} == {"succeeded"}
    # Every prediction was created before the first one completed: all 20 were in flight at once.
    last_created = max(when(p["created_at"]) for p in predictions)
    first_completed = min(when(p["completed_at"]) for p in predictions)
    assert last_created < first_completed


def test_one_worker_thread_per_loop_still_runs_a_request_twice_gathered_once(
    seedream_sandbox: Any, s3_endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The async twins share a few worker threads per loop (`SEEDREAM_ASYNC_WORKER_THREADS`).
    Two generations of one request id gathered on one loop: the second waits on the first's
    claim. That wait must not hold a shared thread, or the first could never record its
    prediction with one thread, and the second would wait out the claim window (minutes)."""
    monkeypatch.setenv("SEEDREAM_ASYNC_WORKER_THREADS", "1")
    seedream_sandbox.configure(run_seconds=1.0)
    credentials, destination = _blocks(seedream_sandbox, s3_endpoint, bucket)

    @flow
    async def twice() -> list[Any]:
        return await asyncio.wait_for(asyncio.gather(*(
            agenerate_images("one order, asked twice", size="1K", credentials=credentials,
                             destination=destination, request_id="order-17")
            for _ in range(2))), timeout=90)

    first, second = asyncio.run(twice())
    assert [image.uri for image in first] == [image.uri for image in second]
    assert len(seedream_sandbox.predictions()) == 1  # paid once
