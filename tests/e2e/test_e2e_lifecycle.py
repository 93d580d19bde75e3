"""Never left running, on a real server: a flow run cancelled through the API (as the UI does),
a flow-run process that crashes, and a runner killed outright. The first two are caught by the
run's hooks in the runner process; the last by the server-side Cancel-After deadline alone."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Stack, start_serve, wait_for, wait_for_final_state

pytestmark = pytest.mark.server

HERE = Path(__file__).parent


@pytest.fixture
def runner(seedream_stack: Stack, prefect_api: Any) -> Any:
    """`generate_images.serve(...)` in its own process; Cancel-After = timeout exactly."""
    process = _serve(seedream_stack, prefect_api, "lifecycle")
    yield process
    process.stop()


def _serve(stack: Stack, client: Any, name: str) -> Any:
    process = start_serve(stack.server, [str(HERE / "serve_generate.py"), name],
                          stack.server.logs_dir, name=f"serve-{name}",
                          env={"SEEDREAM_CANCEL_AFTER_MARGIN_SECONDS": "0"})
    wait_for(lambda: _deployment(client, name), 60, lambda: process.logs()[-3000:])
    return process


def _deployment(client: Any, name: str) -> Any:
    try:
        return client.read_deployment_by_name(f"generate-images/{name}")
    except Exception:
        return None


def _start(client: Any, sandbox: Any, timeout_seconds: float,
           name: str = "lifecycle") -> tuple[Any, dict[str, Any]]:
    """Start a slow generation and wait until its prediction is running on the sandbox."""
    prompt = f"a very slow sunrise {uuid.uuid4().hex[:8]}"
    deployment = _deployment(client, name)
    run = client.create_flow_run_from_deployment(deployment.id, parameters={
        "prompt": prompt, "size": "1K", "credentials": "seedream-replicate",
        "destination": "seedream-images", "timeout_seconds": timeout_seconds,
    })

    def running() -> dict[str, Any] | None:
        found = [p for p in sandbox.predictions() if p["input"].get("prompt") == prompt]
        return found[0] if found and found[0]["status"] == "processing" else None

    prediction = wait_for(running, 60, "the served flow run to create its prediction")
    time.sleep(1.5)  # let it settle into polling
    return run, prediction


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (the runner spawns one process per flow run)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _status_soon(sandbox: Any, prediction_id: str, timeout: float) -> str:
    wait_for(lambda: sandbox.prediction(prediction_id)["status"] not in ("starting",
                                                                          "processing"),
             timeout, f"prediction {prediction_id} to stop")
    return str(sandbox.prediction(prediction_id)["status"])


@pytest.fixture
def slow_sandbox(seedream_stack: Stack) -> Any:
    sandbox = seedream_stack.sandbox
    sandbox.configure(run_seconds=120)
    yield sandbox
    sandbox.configure(run_seconds=0.3)


def test_cancelling_the_flow_run_cancels_the_prediction(
    runner: Any, slow_sandbox: Any, prefect_api: Any, record_outcome: Any,
) -> None:
    from prefect.states import Cancelling

    run, prediction = _start(prefect_api, slow_sandbox, timeout_seconds=600)
    prefect_api.set_flow_run_state(run.id, Cancelling(), force=True)
    final = wait_for_final_state(prefect_api, run.id, 60, lambda: runner.logs()[-3000:])
    status = _status_soon(slow_sandbox, prediction["id"], 30)
    record_outcome("flow run cancelled from the UI/API (served by a runner)",
                   "cancelled the prediction as the run stopped", created=1,
                   left_running=int(status in ("starting", "processing")))
    assert final.state.is_cancelled()
    assert status == "canceled"


def test_a_crashed_flow_run_process_gets_its_prediction_cancelled(
    runner: Any, slow_sandbox: Any, prefect_api: Any, record_outcome: Any,
) -> None:
    run, prediction = _start(prefect_api, slow_sandbox, timeout_seconds=600)
    (flow_process,) = [pid for pid in _children(runner.process.pid)  # not its resource tracker
                       if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    os.kill(flow_process, signal.SIGKILL)
    final = wait_for_final_state(prefect_api, run.id, 60, lambda: runner.logs()[-3000:])
    status = _status_soon(slow_sandbox, prediction["id"], 30)
    record_outcome("flow-run process killed (crash)",
                   "runner marked it Crashed; its on_crashed hook cancelled the prediction",
                   created=1, left_running=int(status in ("starting", "processing")))
    assert final.state.is_crashed()
    assert status == "canceled"


def test_a_killed_runner_leaves_the_server_side_deadline_to_cancel(
    seedream_stack: Stack, slow_sandbox: Any, prefect_api: Any, record_outcome: Any,
) -> None:
    process = _serve(seedream_stack, prefect_api, "doomed")
    try:
        _, prediction = _start(prefect_api, slow_sandbox, timeout_seconds=12, name="doomed")
        os.killpg(process.process.pid, signal.SIGKILL)  # runner and flow process, no hooks
        status = _status_soon(slow_sandbox, prediction["id"], 30)
    finally:
        process.stop()
    record_outcome("runner (worker) and flow process SIGKILLed",
                   "nothing local can act; Cancel-After (sent on create) cancelled it",
                   created=1, left_running=int(status in ("starting", "processing")))
    assert slow_sandbox.prediction(prediction["id"])["deadline"] is not None
    assert status == "canceled"


def test_cancelling_a_process_worker_run_cancels_the_prediction(
    seedream_stack: Stack, slow_sandbox: Any, prefect_api: Any, record_outcome: Any,
) -> None:
    from prefect.states import Cancelling

    run, prediction = _start(prefect_api, slow_sandbox, timeout_seconds=600, name="on-request")
    prefect_api.set_flow_run_state(run.id, Cancelling(), force=True)
    final = wait_for_final_state(prefect_api, run.id, 90, seedream_stack.diagnostics)
    status = _status_soon(slow_sandbox, prediction["id"], 30)
    record_outcome("flow run cancelled from the UI/API (process worker)",
                   "cancelled the prediction as the run stopped", created=1,
                   left_running=int(status in ("starting", "processing")))
    assert final.state.is_cancelled()
    assert status == "canceled"
