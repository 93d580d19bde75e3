"""Sharding on a real `prefect server start`: a batch hands its shards to a `generate-batch`
deployment served by two process workers; both take a shard and every item is stored once."""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PrefectServer, start_worker, wait_for
from pydantic import SecretStr

from prefect_seedream.sandbox import Sandbox

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
POOL = "batch-shards-e2e"


def _deploy(client: Any) -> str:
    from prefect.client.schemas.actions import WorkPoolCreate

    from prefect_seedream.flows.batch.flow import generate_batch

    with contextlib.suppress(Exception):  # already there from an earlier run in the session
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    # A module path, as in prefect.yaml: the worker imports the installed package.
    source = generate_batch.from_source(
        source=str(ROOT), entrypoint="prefect_seedream.flows.batch.flow.generate_batch")
    source.deploy(name="shards", work_pool_name=POOL,  # type: ignore[union-attr]
                  print_next_steps=False, ignore_warnings=True)
    return "generate-batch/shards"


def _ran(worker_log: str, flow_run_id: str) -> bool:
    """Whether the worker ran the flow run: it submitted it and was not told another had it."""
    return (f"submitting flow run '{flow_run_id}'" in worker_log
            and f"Aborted submission of flow run '{flow_run_id}'" not in worker_log)


def test_two_workers_share_the_shards_and_store_every_item_once(
    prefect_server: PrefectServer, prefect_api: Any, e2e_sandbox: Sandbox, e2e_bucket: str,
    s3_endpoint: str, s3_client: Any,
) -> None:
    from prefect_seedream.blocks import ReplicateCredentials, S3Destination
    from prefect_seedream.flows.batch.flow import generate_batch
    from prefect_seedream.flows.batch.report import BatchItemsFailed

    tag = uuid.uuid4().hex[:8]
    ReplicateCredentials(api_token=SecretStr(e2e_sandbox.api_token),
                         base_url=e2e_sandbox.base_url).save(f"batch-{tag}", overwrite=True)
    S3Destination(bucket=e2e_bucket, prefix=f"shards-{tag}", endpoint_url=s3_endpoint,
                  region_name="us-east-1", aws_access_key_id="testing",
                  aws_secret_access_key=SecretStr("testing")).save(f"batch-{tag}", overwrite=True)
    deployment = _deploy(prefect_api)
    workers = [start_worker(prefect_server, POOL, prefect_server.logs_dir, name=f"shard-w{i}",
                            extra_args=["--limit", "1"]) for i in range(2)]
    try:
        manifest = [{"id": f"item-{i}", "prompt": f"shard test {tag} {i}", "size": "1K",
                     "aspect_ratio": "1:1"} for i in range(12)]
        state = generate_batch(manifest, credentials=f"batch-{tag}",
                               destination=f"batch-{tag}", shards=2, deployment=deployment,
                               max_in_flight=2, return_state=True)
        data = state.result(raise_on_failure=False)
        if isinstance(data, BaseException):
            logs = "\n".join(w.logs()[-3000:] for w in workers)
            detail = data.result.summary() if isinstance(data, BatchItemsFailed) and data.result \
                else repr(data)
            pytest.fail(f"batch ended {state.name}: {detail}\n{logs}")
        assert [i.status for i in data.items] == ["succeeded"] * 12

        children = [r for r in prefect_api.read_flow_runs()
                    if r.name and r.name.startswith("shard-")
                    and r.parent_task_run_id is not None
                    and (r.parameters or {}).get("destination") == f"batch-{tag}"]
        assert len(children) == 2 and all(c.state.is_completed() for c in children)
        took = [[str(c.id) for c in children if _ran(w.logs(), str(c.id))] for w in workers]
        wait_for(lambda: all(took), 1, f"both workers to take a shard: {took}")
        assert sorted(len(t) for t in took) == [1, 1]

        made = [p for p in e2e_sandbox.predictions() if tag in p["input"]["prompt"]]
        assert len(made) == 12
        assert max(Counter(p["input"]["prompt"] for p in made).values()) == 1
        pages = s3_client.get_paginator("list_objects_v2").paginate(
            Bucket=e2e_bucket, Prefix=f"shards-{tag}/batch/")
        stored = [o["Key"] for page in pages for o in page.get("Contents", [])]
        assert sum(k.endswith("/result.json") for k in stored) == 12
        assert sum(k.endswith(".jpg") for k in stored) == 12
    finally:
        for worker in workers:
            worker.stop(timeout=15)
