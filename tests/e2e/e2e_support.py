"""Helpers for the end-to-end tests (see conftest.py for what each one is for)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from prefect_seedream.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
PREFECT = str(Path(sys.executable).with_name("prefect"))
WORK_POOL = "seedream-process"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout: float, message: str | Callable[[], str],
             interval: float = 0.25) -> T:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` s
    with `message` (a callable is called then, to gather diagnostics)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout:.0f}s: {text}")
        time.sleep(interval)


@dataclass
class ManagedProcess:
    """A subprocess in its own process group, with its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log_file: Any = field(repr=False)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the group (the process and, for a worker, its flow runs), then SIGKILL."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log_file.close()


def start_process(name: str, args: list[str], env: Mapping[str, str], logs_dir: Path,
                  cwd: Path = ROOT) -> ManagedProcess:
    log_path = logs_dir / f"{name}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(args, cwd=cwd, env=dict(env), stdout=log_file,
                               stderr=subprocess.STDOUT, start_new_session=True)
    return ManagedProcess(name, process, log_path, log_file)


def start_prefect_server(name: str, port: int, env: Mapping[str, str], logs_dir: Path,
                         timeout: float = 90) -> ManagedProcess:
    """`prefect server start` on loopback `port`, once `/api/health` answers; the test fails
    with the server's log if it exits first or never answers. The caller stops it."""
    process = start_process(name, [PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                                   str(port)], env, logs_dir)

    def healthy() -> bool:
        if not process.alive():
            pytest.fail(f"prefect server exited:\n{process.logs()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout, f"{name} to become healthy")
    except BaseException:
        process.stop()
        raise
    return process


def run_command(args: list[str], env: Mapping[str, str], timeout: float = 120) -> str:
    """Run a command to completion; fail the test with its output if it fails."""
    result = subprocess.run(args, cwd=ROOT, env=dict(env), capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args[:4])} failed ({result.returncode}):\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "PYTEST_", "SEEDREAM_", "REPLICATE_"))}
    env.update({
        "PYTHONUNBUFFERED": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    return env


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    client_home: Path
    logs_dir: Path
    process: ManagedProcess

    def env(self, **extra: str) -> dict[str, str]:
        """What a process needs to use this server (and to poll it quickly)."""
        env = base_env()
        env.update({
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.client_home),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
        })
        env.update(extra)
        return env

    def logs(self) -> str:
        return self.process.logs()


def start_worker(server: PrefectServer, pool: str, logs_dir: Path, *, name: str = "worker",
                 env: Mapping[str, str] | None = None,
                 extra_args: list[str] | None = None) -> ManagedProcess:
    """`prefect worker start --pool <pool>` polling every second."""
    args = [PREFECT, "worker", "start", "--pool", pool, "--type", "process",
            "--name", f"{name}-{uuid.uuid4().hex[:6]}", *(extra_args or [])]
    return start_process(name, args, {**server.env(), **(env or {})}, logs_dir)


def start_serve(server: PrefectServer, args: list[str], logs_dir: Path, *, name: str = "serve",
                env: Mapping[str, str] | None = None) -> ManagedProcess:
    """`python <args>` (a script or `-m module` that calls `serve`), polling every second."""
    return start_process(name, [PYTHON, *args], {**server.env(), **(env or {})}, logs_dir)


@dataclass
class Stack:
    server: PrefectServer
    sandbox: Sandbox
    bucket: str
    s3_endpoint: str
    worker: ManagedProcess
    receiver: ManagedProcess
    receiver_url: str

    def diagnostics(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.logs()[-4000:]}"
                         for p in (self.worker, self.receiver))


# ---- reading the server ------------------------------------------------------------------


def wait_for_final_state(client: Any, flow_run_id: Any, timeout: float = 60,
                         diagnostics: Callable[[], str] | None = None) -> Any:
    """The flow run once its state is final; fails with the processes' logs on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > deadline:
            pytest.fail(f"flow run {flow_run_id} still {run.state and run.state.name} after "
                        f"{timeout:.0f}s\n{diagnostics() if diagnostics else ''}")
        time.sleep(0.5)


def deployment_runs(client: Any, deployment: str) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    dep = client.read_deployment_by_name(deployment)
    return list(client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])), limit=200))


def wait_for_flow_runs(client: Any, deployment: str, where: Mapping[str, Any],
                       timeout: float = 60, count: int = 1, final: bool = True,
                       diagnostics: Callable[[], str] | None = None) -> list[Any]:
    """Runs of `deployment` whose parameters include `where`, once `count` exist (and are final)."""

    def matching() -> list[Any]:
        return [run for run in deployment_runs(client, deployment)
                if all(run.parameters.get(k) == v for k, v in where.items())]

    deadline = time.monotonic() + timeout
    while True:
        runs = matching()
        if len(runs) >= count and (not final or all(r.state and r.state.is_final() for r in runs)):
            return runs
        if time.monotonic() > deadline:
            states = [(str(r.id), r.state and r.state.name) for r in runs]
            pytest.fail(f"expected {count} final run(s) of {deployment} with {dict(where)}, "
                        f"found {states} after {timeout:.0f}s\n"
                        f"{diagnostics() if diagnostics else ''}")
        time.sleep(0.5)


def read_events(client: Any, name: str, resource_id: str | None = None,
                since_minutes: float = 30) -> list[dict[str, Any]]:
    """Events named `name` (optionally of one resource id) from the server's event store."""
    from datetime import datetime, timedelta, timezone

    body: dict[str, Any] = {"filter": {
        "event": {"name": [name]},
        "occurred": {"since": (datetime.now(timezone.utc)
                               - timedelta(minutes=since_minutes)).isoformat(),
                     "until": (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()},
    }, "limit": 50}
    if resource_id:
        body["filter"]["resource"] = {"id": [resource_id]}
    response = client.request("POST", "/events/filter", json=body)
    return list(response.json()["events"])


def event_summary(client: Any) -> str:
    """Names and resources of recent events, for failure messages."""
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    body = {"filter": {"occurred": {"since": (now - timedelta(minutes=30)).isoformat(),
                                    "until": (now + timedelta(minutes=5)).isoformat()}},
            "limit": 50}
    events = client.request("POST", "/events/filter", json=body).json()["events"]
    return "\n".join(f"{e['occurred']} {e['event']} {e['resource']['prefect.resource.id']}"
                     for e in events if not e["event"].startswith("prefect.flow-run."))


def emit_by_rest(api_url: str, event: str, resource: Mapping[str, str],
                 payload: Mapping[str, Any] | None = None,
                 related: list[Mapping[str, str]] | None = None) -> str:
    """POST one event to the server's `/events` (what any HTTP-capable system can do)."""
    from datetime import datetime, timezone

    event_id = str(uuid.uuid4())
    body = [{"id": event_id, "event": event, "resource": dict(resource),
             "related": list(related or []), "payload": dict(payload or {}),
             "occurred": datetime.now(timezone.utc).isoformat()}]
    response = httpx.post(f"{api_url}/events", content=json.dumps(body),
                          headers={"Content-Type": "application/json"}, timeout=10)
    response.raise_for_status()
    return event_id


class CaptureServer:
    """A local HTTP endpoint that records raw deliveries (headers, body bytes) and answers 200."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                capture.deliveries.append(({k.lower(): v for k, v in self.headers.items()},
                                           body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
