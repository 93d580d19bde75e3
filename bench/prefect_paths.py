"""The Prefect side of figures 1, 5 and (b): many single-image predictions at a concurrency.

- `batch`: `prefect_seedream.flows.batch.flow.generate_batch(max_in_flight=C)`, when that flow
  exists;
- `agen`: one async flow gathering `agenerate_images` under an `asyncio.Semaphore(C)`;
- `agen_wait60` (experiment): the same, but each create holds open up to 60 s (`Prefer: wait`),
  built from the public async tasks exactly as `arun_prediction` composes them.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from anyio import to_thread
from prefect import flow

from prefect_seedream.flows.image_flows_async import agenerate_images
from prefect_seedream.flows.image_report import publish_report
from prefect_seedream.tasks.predictions_async import aawait_prediction, acreate_prediction
from prefect_seedream.tasks.seedream_input import SeedreamInput
from prefect_seedream.tasks.storage_async import astore_outputs


@flow(name="bench-empty")
def empty_flow() -> None:
    """A flow run that does nothing: what Prefect's engine costs per flow run on its own."""


def run_empty() -> None:
    empty_flow()


def run_batch_without_heartbeat(*args: Any, **kwargs: Any) -> int:
    """`run_batch` with the flow engine's heartbeat thread off: a diagnosis of what that
    thread's join costs a run, never the shipped default (heartbeats detect crashed runs)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return run_batch(*args, **kwargs)


def batch_available() -> bool:
    try:
        from prefect_seedream.flows.batch.flow import generate_batch  # noqa: F401
    except Exception:
        return False
    return True


async def _one_wait60(prompt: str, credentials: Any, destination: Any, size: str) -> list[Any]:
    request = SeedreamInput(prompt=prompt, size=size, aspect_ratio="1:1")
    started = time.monotonic()
    created = await acreate_prediction(request, credentials=credentials, wait_seconds=60,
                                       cancel_after=660)
    finished = await aawait_prediction(created, credentials=credentials, timeout_seconds=600)
    stored = await astore_outputs(finished, destination, expected_size=(1024, 1024)
                                  if size == "1K" else None)
    await to_thread.run_sync(functools.partial(
        publish_report, f"Generated: {prompt}", finished, stored, destination,
        seconds=time.monotonic() - started))
    return list(stored)


@flow(name="bench-gather")
async def gather_flow(prompts: list[str], credentials: Any, destination: Any, limit: int,
                      size: str = "1K", wait60: bool = False) -> int:
    """`len(prompts)` predictions, at most `limit` at once, on one event loop."""
    semaphore = asyncio.Semaphore(limit)

    async def one(prompt: str) -> list[Any]:
        async with semaphore:
            if wait60:
                return await _one_wait60(prompt, credentials, destination, size)
            return await agenerate_images(prompt, size=size, credentials=credentials,
                                          destination=destination)

    results = await asyncio.gather(*(one(p) for p in prompts))
    return sum(len(r) for r in results)


def run_agen(prompts: list[str], credentials: Any, destination: Any, limit: int,
             wait60: bool = False) -> int:
    return asyncio.run(gather_flow(prompts, credentials, destination, limit, wait60=wait60))


def run_batch(prompts: list[str], credentials: Any, destination: Any, limit: int,
              key_prefix: str) -> int:
    from prefect_seedream.flows.batch.flow import generate_batch

    manifest = [{"id": f"item-{i}", "prompt": p, "size": "1K", "aspect_ratio": "1:1"}
                for i, p in enumerate(prompts)]
    result: Any = generate_batch(manifest, credentials=credentials, destination=destination,
                                 key_prefix=key_prefix, max_in_flight=limit)
    stored = len(getattr(result, "images", []))
    if stored != len(prompts):
        summary = result.summary() if hasattr(result, "summary") else repr(result)
        raise RuntimeError(f"generate_batch stored {stored} of {len(prompts)}: {summary}")
    return stored
