"""End-to-end fixtures: one real `prefect server start` per session and the processes around it.

Everything is real and on loopback: the Prefect server (SQLite in a temporary PREFECT_HOME), a
process worker running the deployments of `prefect.yaml`, the project's webhook receiver, the
sandbox (Replicate) and moto's S3 server. Nothing is patched. Tests here are marked
`@pytest.mark.server`; the folder runs in about two minutes on two cores.

Session fixtures
    prefect_server   `PrefectServer`: `.api_url`, `.env()` (the environment a process needs to
                     talk to it: API URL, its own PREFECT_HOME, fast worker/runner polling), and
                     `.logs()`. Started with `PREFECT_SERVER_ANALYTICS_ENABLED=false`, the UI off
                     and a 0.5 s event-persister flush, so events are readable almost at once.
    e2e_sandbox      A `Sandbox` of its own (never reset: background runs may still use it).
    e2e_bucket       A bucket on the session's moto server (`s3_endpoint`).
    seedream_stack   `Stack`: the server after
                     `python -m prefect_seedream.deployments.bootstrap` (pool, blocks,
                     webhook secret) and `prefect --no-prompt deploy --all`, with a process worker
                     (`.worker`) and the webhook receiver (`.receiver_url`) running.

Function fixtures
    prefect_api      A sync `PrefectClient` on the server; also points in-process Prefect calls
                     at it (temporary settings) for the test's duration.

Helpers (`from e2e_support import ...`; this folder is on sys.path while its tests run)
    start_process(name, args, env, logs_dir)   a `ManagedProcess` (own process group, log file,
                                               `.stop()` = SIGTERM then SIGKILL of the group)
    start_worker(server, pool, logs_dir, env=..., extra_args=...)  a process worker
    start_serve(server, args, logs_dir, env=...)                   `python <args>` that serves
    wait_for(predicate, timeout, message)           poll until truthy, else fail with `message`
    wait_for_final_state(client, flow_run_id, timeout)             the run once `is_final()`
    wait_for_flow_runs(client, deployment, where, timeout, count)  runs of a deployment whose
                                                                   parameters match `where`
    read_events(client, name, resource_id)          events from the server's event store
    emit_by_rest(api_url, event, resource, payload)  POST /api/events, as any HTTP client can

Later lifecycle tests (cancel through the runner, crashed run, killed worker) can start their
own worker or `serve` with `start_worker`/`start_serve` and `prefect_server.env()`; remember
`PREFECT_WORKER_ENABLE_CANCELLATION=true` for worker-side cancellation.

Never call `emit_event` or run a flow in the test process here: Prefect's in-process events
worker keeps the first server it sees for the whole session, which other test files' harness
needs. Emit by REST (`emit_by_rest`) or in a subprocess instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2e_support import (
    PREFECT,
    PYTHON,
    WORK_POOL,
    PrefectServer,
    Stack,
    base_env,
    free_port,
    run_command,
    start_prefect_server,
    start_process,
    start_worker,
    wait_for,
)

from prefect_seedream.sandbox import Sandbox, SandboxConfig

E2E_TOKEN = "r8_sandbox_e2e_token"


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real `prefect server start` on a free loopback port, SQLite in a temporary home."""
    base = tmp_path_factory.mktemp("prefect-e2e")
    home, client_home, logs_dir = base / "server-home", base / "client-home", base / "logs"
    for path in (home, client_home, logs_dir):
        path.mkdir()
    port = free_port()
    env = base_env()
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.5",
        "PREFECT_LOGGING_SERVER_LEVEL": "WARNING",
    })
    process = start_prefect_server("prefect-server", port, env, logs_dir)
    try:
        yield PrefectServer(f"http://127.0.0.1:{port}/api", home, client_home, logs_dir, process)
    finally:
        process.stop()


@pytest.fixture
def prefect_api(prefect_server: PrefectServer) -> Iterator[Any]:
    """A sync client on the e2e server; in-process Prefect calls go there during the test."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}), \
            get_client(sync_client=True) as client:
        yield client


@pytest.fixture(scope="session")
def e2e_sandbox() -> Iterator[Sandbox]:
    config = SandboxConfig().replace(queue_seconds=0.0, run_seconds=0.3, webhook_attempts=5,
                                     webhook_backoff_seconds=0.2)
    with Sandbox(api_token=E2E_TOKEN, config=config) as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
def e2e_bucket(s3_client: Any) -> str:
    name = f"seedream-e2e-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def seedream_stack(prefect_server: PrefectServer, e2e_sandbox: Sandbox, e2e_bucket: str,
                   s3_endpoint: str) -> Iterator[Stack]:
    """Bootstrap, deploy prefect.yaml, start a worker and the webhook receiver."""
    env = prefect_server.env(REPLICATE_API_TOKEN=e2e_sandbox.api_token,
                             REPLICATE_WEBHOOK_SECRET=e2e_sandbox.webhook_secret)
    # A different budget than prefect.yaml's, so the test sees the deploy step set it.
    run_command([PYTHON, "-m", "prefect_seedream.deployments.bootstrap", "--bucket", e2e_bucket,
                 "--endpoint-url", s3_endpoint, "--region", "us-east-1",
                 "--base-url", e2e_sandbox.base_url, "--creates-per-minute", "1200"], env)
    logs_dir = prefect_server.logs_dir
    port = free_port()
    receiver = start_process("webhook-receiver", [
        PYTHON, "-m", "prefect_seedream.deployments.webhook_receiver", "--port", str(port),
        "--secret-block", "replicate-webhook-secret"], prefect_server.env(), logs_dir)
    worker = start_worker(prefect_server, WORK_POOL, logs_dir)
    try:
        run_command([PREFECT, "--no-prompt", "deploy", "--all"], prefect_server.env())

        def receiver_up() -> bool:
            if not receiver.alive():
                pytest.fail(f"webhook receiver exited:\n{receiver.logs()[-3000:]}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_for(receiver_up, 60, "the webhook receiver to answer")
        yield Stack(prefect_server, e2e_sandbox, e2e_bucket, s3_endpoint, worker, receiver,
                    f"http://127.0.0.1:{port}/replicate")
    finally:
        worker.stop(timeout=15)
        receiver.stop()
