"""The fault matrix: every entry point x every fault, each cell a test that drives the entry point
through the real path (the sandbox for Replicate, moto's S3 server, the session's Prefect API)
with the fault injected, and measures what a user pays for and keeps:

- created per request: predictions the sandbox made, per logical request;
- left running: sandbox predictions still `starting`/`processing` when the entry point is done;
- outputs lost: outputs of succeeded predictions with no object in the bucket (an image at its
  key or a copy under `_quarantine/`, found by its `prediction-id`/`index` metadata; the
  `_ledger/` records are not images).

A cell that does not apply still appears, recorded with the reason (`NOT_APPLICABLE`). This file
holds the matrix, the drivers and the scenarios, and runs the two task columns;
`test_fault_matrix_flows.py` and `test_fault_matrix_batch_cli.py` run the other in-process
columns (xdist's `loadfile` spreads the files over workers) and
`e2e/test_fault_matrix_deployment.py` the deployment column. `make reliability` renders
RELIABILITY.md's first section from what the cells recorded.

Faults that need the run to be run again use what Prefect itself does: a flow retry
(`retries=1`), a task retry (`retries=1`), or a re-run of the same flow run (the UI's "Retry":
the run is put back to `AwaitingRetry` and run again under its id). A crash is simulated as
`tests/test_lifecycle.py::_died_while_sending` does: the ledger's own code writes what the dead
attempt left (a `sending` record, or a `created` one once the id was known) and the create is sent
with the plain `replicate` client; nothing of ours is patched.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image
from prefect import flow

from prefect_seedream import (
    SeedreamInput,
    aawait_prediction,
    acreate_prediction,
    astore_outputs,
    await_prediction,
    create_prediction,
    store_outputs,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")

# --- the matrix -----------------------------------------------------------------------------------

#: Columns, in order: key -> heading in RELIABILITY.md.
ENTRIES: dict[str, str] = {
    "tasks": "tasks (sync)",
    "atasks": "tasks (async)",
    "generate": "generate_images",
    "agenerate": "agenerate_images",
    "edit": "edit_image",
    "aedit": "aedit_image",
    "batch": "generate_batch",
    "cli": "CLI",
    "deployment": "deployment run",
}

#: Rows, in order: key -> what was injected.
FAULTS: dict[str, str] = {
    "429": "429 storm on create",
    "5xx-create": "5xx on create",
    "5xx-get": "5xx on status polls (get)",
    "5xx-list": "5xx on list (while finding a lost create)",
    "5xx-cancel": "5xx on cancel (after our timeout)",
    "5xx-files": "5xx on output download",
    "lost-list-up": "create answer lost, list up",
    "lost-list-down": "create answer lost, list down",
    "crash-before-id": "crash before the id is known",
    "crash-after-id": "crash after the id is known",
    "task-retry": "task retry",
    "flow-retry": "flow retry",
    "rerun": "re-run of the flow run",
    "concurrent": "two concurrent runs of one request",
    "s3-outage": "S3 outage while storing",
    "size-drift": "size drift (off the size table)",
    "corrupt": "corrupt output (not an image)",
}

_FLOW_TASK_RETRY = (
    "a flow has no task retries of its own: its tasks (create/await/store) are the tasks "
    "columns, and a retry of the run is the flow retry row")
_CLI_SAME_FLOW = (
    "covered by the generate_images column: `seedream generate` runs that same flow "
    "in-process (prefect_seedream/cli.py `_run`) and adds argument checks and exit codes only; "
    "the CLI cells here are those where a second process is the point (a re-run, two runs of "
    "one --request-id)")
_CLI_NO_RETRY = ("the command runs its flow once and has no retries; running it again is the "
                 "re-run row")
_DEPLOYMENT_SAME_FLOW = (
    "covered by the generate_images column: a deployment run executes that same flow in a "
    "worker's subprocess; the process boundary is what the deployment adds, measured by the "
    "deployment cells here and tests/e2e/test_e2e_lifecycle.py (cancel, crash, killed runner)")

_EDIT_SAME_PATH = (
    "covered by the generate_images/agenerate_images column: an edit differs only in building "
    "its request (sources presigned, named by URI + ETag); this fault is met after that, in the "
    "create/await/store both flows share (`run_prediction`), with the same request on every try. "
    "The edit cells measured are those where its sources matter: a retry, re-run or crash "
    "recovery presigns them again, and match_input_image sets the size to expect")
_EDIT_SHARED = ("429", "5xx-create", "5xx-get", "5xx-list", "5xx-cancel", "5xx-files",
                "lost-list-up", "s3-outage", "corrupt")

_ASYNC_SAME_PROTOCOL = (
    "covered by the sync twin's cell in this row and tests/test_lifecycle.py's [async] rows "
    "(measured in the detail table below): the async driver runs the same sans-IO protocol "
    "(tasks/replicate_client/protocol.py), so it makes the same requests and decisions")
_ASYNC_SHARED = ("429", "5xx-create", "5xx-get", "lost-list-up")

#: (entry, fault) -> why the cell is not measured.
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    **{(entry, fault): _ASYNC_SAME_PROTOCOL for entry in ("atasks", "agenerate")
       for fault in _ASYNC_SHARED},
    **{(entry, fault): _EDIT_SAME_PATH for entry in ("edit", "aedit") for fault in _EDIT_SHARED},
    **{(entry, "task-retry"): _FLOW_TASK_RETRY for entry in ("generate", "edit")},
    ("batch", "task-retry"): (
        "batch items run as tasks without retries (`item_retries` replaces a prediction the "
        "model interrupted, not a fault of this matrix); a failed item is picked up by the "
        "flow retry and re-run rows"),
    **{("cli", fault): _CLI_SAME_FLOW for fault in (
        "429", "5xx-create", "5xx-get", "5xx-list", "5xx-cancel", "5xx-files", "lost-list-up",
        "crash-before-id", "crash-after-id", "s3-outage", "size-drift", "corrupt")},
    ("cli", "rerun"): (
        "covered by this column's \"create answer lost, list down\" cell, whose second "
        "command is a failed command run again with the same --request-id (it settles the first "
        "one's record); re-attaching from a new process to a recorded prediction is the "
        "deployment column's re-run cell"),
    **{("cli", fault): _CLI_NO_RETRY for fault in ("task-retry", "flow-retry")},
    **{("deployment", fault): _DEPLOYMENT_SAME_FLOW for fault in FAULTS
       if fault not in ("rerun", "concurrent")},
}

TASK_ENTRIES = ("tasks", "atasks")
FLOW_ENTRIES = ("generate", "agenerate", "edit", "aedit")
BATCH_CLI_ENTRIES = ("batch", "cli")


def cells(*entries: str) -> list[Any]:
    """The cells of these columns, as pytest params (`entry-fault` ids)."""
    return [pytest.param(entry, fault, id=f"{entry}-{fault}")
            for entry in entries for fault in FAULTS]


# --- measuring ------------------------------------------------------------------------------------

RUNNING = ("starting", "processing")


def running(sandbox: Any) -> list[str]:
    return [p["id"] for p in sandbox.predictions() if p["status"] in RUNNING]


def stored_outputs(s3_client: Any, bucket: str) -> set[tuple[str, str]]:
    """(prediction id, index) of every object holding an output: images and quarantined copies
    (`_ledger/` records, sources and result files carry no output metadata)."""
    found: set[tuple[str, str]] = set()
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if "_ledger/" in key:
                continue
            meta = s3_client.head_object(Bucket=bucket, Key=key).get("Metadata", {})
            if meta.get("prediction-id"):
                index = meta.get("index") or key.rsplit("/", 1)[-1].split(".", 1)[0]
                found.add((meta["prediction-id"], str(index)))
    return found


def lost_outputs(sandbox: Any, s3_client: Any, bucket: str) -> int:
    kept = stored_outputs(s3_client, bucket)
    return sum(1 for p in sandbox.predictions() if p["status"] == "succeeded"
               for index, _ in enumerate(p.get("output") or [])
               if (p["id"], str(index)) not in kept)


# --- the cell's context ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """How a run of an entry point ended."""

    ok: bool
    value: Any = None
    error: BaseException | str | None = None
    flow_run_id: str | None = None

    def error_text(self) -> str:
        return str(self.error) if self.error is not None else ""


@dataclass
class Cell:
    entry: str
    fault: str
    sandbox: Any
    credentials: Any
    destination: Any
    s3_client: Any
    s3_endpoint: str
    monkeypatch: pytest.MonkeyPatch
    tmp_path: Path
    shell: dict[str, str] = field(default_factory=dict)
    source_uri: str = ""

    @property
    def bucket(self) -> str:
        return str(self.destination.bucket)

    def driver(self, **options: Any) -> Driver:
        return DRIVERS[self.entry](self, **options)


@pytest.fixture
def cell_context(request: pytest.FixtureRequest, seedream_sandbox: Any, credentials: Any,
                 destination: Any, s3_client: Any, s3_endpoint: str,
                 monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str, str], Cell]:
    def make(entry: str, fault: str) -> Cell:
        seedream_sandbox.configure(run_seconds=0.1)
        cell = Cell(entry, fault, seedream_sandbox, credentials, destination, s3_client,
                    s3_endpoint, monkeypatch, tmp_path)
        if entry in ("edit", "aedit"):
            image = io.BytesIO()
            Image.new("RGB", (1024, 768), (40, 110, 170)).save(image, format="JPEG")
            s3_client.put_object(Bucket=cell.bucket, Key="inputs/src.jpg", Body=image.getvalue())
            cell.source_uri = f"s3://{cell.bucket}/inputs/src.jpg"
        if entry == "cli":
            from prefect.settings import PREFECT_API_URL

            cell.shell = {name: value for name, value in os.environ.items()
                          if not name.startswith(("SEEDREAM_", "REPLICATE_", "PREFECT_API_URL"))}
            cell.shell.update(PREFECT_API_URL=str(PREFECT_API_URL.value()),
                              REPLICATE_API_TOKEN=seedream_sandbox.api_token,
                              REPLICATE_BASE_URL=seedream_sandbox.base_url)
        return cell

    return make


# --- drivers: one per entry point -----------------------------------------------------------------

PROMPT = "a paper boat on a pond"
INSTRUCTION = "make the water green"
REQUEST = SeedreamInput(prompt=PROMPT, size="1K", aspect_ratio="1:1")


def _prefect_client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _finish(state: Any) -> Outcome:
    """An Outcome from a flow run's final state."""
    flow_run_id = str(state.state_details.flow_run_id)
    if state.is_completed():
        return Outcome(True, state.result(), flow_run_id=flow_run_id)
    try:
        error: BaseException | str = state.result(raise_on_failure=False)
    except BaseException as exc:  # an exception the result could not be read back as
        error = exc
    return Outcome(False, error=error, flow_run_id=flow_run_id)


class Driver:
    """Runs one entry point the way a user does; `options` apply to every run it makes:
    `timeout_seconds`, `request_id`, `flow_retries`, `task_retries`, `retry_condition`."""

    stores = True

    def __init__(self, cell: Cell, **options: Any) -> None:
        self.cell, self.options = cell, options
        self.flow_run_id: str | None = None

    # Flow-run based drivers build a flow and run it under a flow run made in advance, so a
    # crash can be simulated under its id and the run re-run (the UI's "Retry").
    def build_flow(self) -> Any:
        raise NotImplementedError

    def parameters(self) -> dict[str, Any]:
        return {}

    def prepare(self) -> str:
        """Make the flow run (Scheduled) and return its id."""
        self._flow = self.build_flow()
        with _prefect_client() as client:
            self.flow_run_id = str(client.create_flow_run(self._flow, parameters={}).id)
        return self.flow_run_id

    def run(self) -> Outcome:
        from prefect.flow_engine import run_flow

        if self.flow_run_id is None:
            self.prepare()
        with _prefect_client() as client:
            flow_run = client.read_flow_run(self.flow_run_id)
        state = run_flow(self._flow, flow_run=flow_run, parameters=self.parameters(),
                         return_type="state")
        if asyncio.iscoroutine(state):
            state = asyncio.run(state)
        return _finish(state)

    def rerun(self) -> Outcome:
        """Run the same flow run again, as the UI's "Retry" does."""
        from prefect.states import AwaitingRetry

        with _prefect_client() as client:
            client.set_flow_run_state(self.flow_run_id, AwaitingRetry(), force=True)
        return self.run()

    # What the crashed attempt of this flow run had asked for, for the simulations.
    def request_body(self) -> tuple[dict[str, Any], list[str] | None]:
        return REQUEST.to_request(), None

    def ledger_place(self) -> tuple[str, str]:
        """(scope, key) of this driver's request in the ledger."""
        from prefect_seedream.tasks import prediction_ledger as ledger
        from prefect_seedream.tasks.seedream_input import MODEL_SLUG

        body, sources = self.request_body()
        assert self.flow_run_id
        return ledger.run_scope(self.flow_run_id), ledger.request_key(MODEL_SLUG, body, None,
                                                                      sources)


class TasksDriver(Driver):
    """`create_prediction` -> `await_prediction` -> `store_outputs` in a user's flow (the
    README's building blocks), or their async twins in an async flow."""

    def __init__(self, cell: Cell, *, mode: str, **options: Any) -> None:
        super().__init__(cell, **options)
        self.mode = mode

    def build_flow(self) -> Any:
        cell, options = self.cell, self.options
        create, wait, store = ((create_prediction, await_prediction, store_outputs)
                               if self.mode == "sync"
                               else (acreate_prediction, aawait_prediction, astore_outputs))
        if options.get("task_retries"):
            create = create.with_options(retries=options["task_retries"], retry_delay_seconds=0,
                                         retry_condition_fn=options.get("retry_condition"))
        fail_first = options.get("fail_after_create")
        runs: list[str] = []
        create_kwargs: dict[str, Any] = {"credentials": cell.credentials,
                                         "ledger": cell.destination}
        if options.get("request_id"):
            create_kwargs["request_id"] = options["request_id"]
        timeout = options.get("timeout_seconds", 60)

        def check(prediction: Any) -> None:
            runs.append(prediction.id)
            if fail_first and len(runs) == 1:
                raise RuntimeError("the user's next step failed after the create was paid for")

        retries = options.get("flow_retries", 0)
        if self.mode == "sync":
            @flow(name="user-pipeline", retries=retries, retry_delay_seconds=0)
            def pipeline() -> list[Any]:
                prediction = create(REQUEST, **create_kwargs)
                check(prediction)
                finished = wait(prediction, credentials=cell.credentials,
                                timeout_seconds=timeout)
                return store(finished, cell.destination)  # type: ignore[no-any-return]

            return pipeline

        @flow(name="user-async-pipeline", retries=retries, retry_delay_seconds=0)
        async def apipeline() -> list[Any]:
            prediction = await create(REQUEST, **create_kwargs)
            check(prediction)
            finished = await wait(prediction, credentials=cell.credentials,
                                  timeout_seconds=timeout)
            return await store(finished, cell.destination)  # type: ignore[no-any-return]

        return apipeline


class ImageFlowDriver(Driver):
    """`generate_images`/`edit_image` called as a flow, or `agenerate_images`/`aedit_image`
    awaited in a user's async flow."""

    def __init__(self, cell: Cell, *, kind: str, mode: str, **options: Any) -> None:
        super().__init__(cell, **options)
        self.kind, self.mode = kind, mode

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        cell, options = self.cell, self.options
        kwargs: dict[str, Any] = {
            "size": "1K", "credentials": cell.credentials, "destination": cell.destination,
            "timeout_seconds": options.get("timeout_seconds", 60),
        }
        if options.get("request_id"):
            kwargs["request_id"] = options["request_id"]
        if self.kind == "generate":
            return (PROMPT,), {**kwargs, "aspect_ratio": "1:1"}
        return (INSTRUCTION, [cell.source_uri]), kwargs

    def _target(self) -> Any:
        from prefect_seedream import aedit_image, agenerate_images, edit_image, generate_images

        return {("generate", "sync"): generate_images, ("edit", "sync"): edit_image,
                ("generate", "async"): agenerate_images,
                ("edit", "async"): aedit_image}[(self.kind, self.mode)]

    def build_flow(self) -> Any:
        target, options = self._target(), self.options
        if self.mode == "sync":
            return target.with_options(retries=options.get("flow_retries", 0),
                                       retry_delay_seconds=0)
        if options.get("task_retries"):
            target = target.with_options(retries=options["task_retries"], retry_delay_seconds=0)
        args, kwargs = self.arguments()

        @flow(name="user-async-flow", retries=options.get("flow_retries", 0),
              retry_delay_seconds=0)
        async def users_async_flow() -> Any:
            return await target(*args, **kwargs)

        return users_async_flow

    def parameters(self) -> dict[str, Any]:
        if self.mode == "async":
            return {}
        args, kwargs = self.arguments()
        names = ("prompt",) if self.kind == "generate" else ("instruction", "images")
        return {**dict(zip(names, args, strict=True)), **kwargs}

    def request_body(self) -> tuple[dict[str, Any], list[str] | None]:
        from prefect_seedream.flows.flow_support import build_request, prepare_edit

        _, kwargs = self.arguments()
        if self.kind == "generate":
            return build_request(PROMPT, size="1K", aspect_ratio="1:1", width=None, height=None,
                                 max_images=1, enhance_prompt=None).to_request(), None
        edit = prepare_edit(INSTRUCTION, [self.cell.source_uri], self.cell.destination,
                            timeout_seconds=kwargs["timeout_seconds"], size="1K",
                            aspect_ratio="match_input_image", width=None, height=None,
                            max_images=1, enhance_prompt=None)
        return edit.request.to_request(), edit.sources


BATCH_ROWS = [{"id": f"p{i}", "prompt": f"catalogue shot {i}", "size": "1K"} for i in range(2)]


class BatchDriver(Driver):
    """`generate_batch` over a two-row manifest; every run is a new flow run, as a schedule's."""

    requests = len(BATCH_ROWS)

    def build_flow(self) -> Any:
        from prefect_seedream import generate_batch

        return generate_batch.with_options(retries=self.options.get("flow_retries", 0),
                                           retry_delay_seconds=0)

    def parameters(self) -> dict[str, Any]:
        return {"manifest": BATCH_ROWS, "credentials": self.cell.credentials,
                "destination": self.cell.destination, "max_in_flight": 2,
                "timeout_seconds": self.options.get("timeout_seconds", 60)}

    def run(self) -> Outcome:
        from prefect_seedream.flows.batch.report import BatchItemsFailed

        outcome = super().run()
        self.flow_run_id = None  # the next run of the manifest is a new flow run
        data = outcome.value if outcome.ok else outcome.error
        result = data.result if isinstance(data, BatchItemsFailed) else data
        failed = [f"{i.id}: {i.error_type}: {i.error}" for i in getattr(result, "items", [])
                  if i.status == "failed"]
        return Outcome(outcome.ok and not failed, result, "; ".join(failed) or outcome.error,
                       outcome.flow_run_id)

    rerun = run  # a re-run of a batch is running its manifest again

    def ledger_place(self) -> tuple[str, str]:
        from prefect_seedream.flows.batch.keys import item_key
        from prefect_seedream.flows.batch.manifest import check_rows
        from prefect_seedream.tasks import prediction_ledger as ledger
        from prefect_seedream.tasks.seedream_input import MODEL_SLUG

        item = check_rows([BATCH_ROWS[0]])[0]
        return ledger.ITEMS, item_key(MODEL_SLUG, item, {})

    def request_body(self) -> tuple[dict[str, Any], list[str] | None]:
        return SeedreamInput(prompt=BATCH_ROWS[0]["prompt"], size="1K").to_request(), None


SEEDREAM = Path(sys.executable).with_name("seedream")


class CliDriver(Driver):
    """`seedream generate` in a subprocess, against the session's Prefect server."""

    def run(self) -> Outcome:
        cell, options = self.cell, self.options
        args = [str(SEEDREAM), "generate", PROMPT, "--size", "1K", "--bucket", cell.bucket,
                "--endpoint-url", cell.s3_endpoint, "--prefix", cell.destination.prefix,
                "--no-copies", "--timeout", str(options.get("timeout_seconds", 60))]
        if options.get("request_id"):
            args += ["--request-id", options["request_id"]]
        done = subprocess.run(args, env=cell.shell, capture_output=True, text=True, timeout=240,
                              check=False)
        return Outcome(done.returncode == 0, done, done.stderr[-3000:] or None)

    rerun = run  # running the command again

    def start(self) -> subprocess.Popen[str]:
        cell, options = self.cell, self.options
        args = [str(SEEDREAM), "generate", PROMPT, "--size", "1K", "--bucket", cell.bucket,
                "--endpoint-url", cell.s3_endpoint, "--prefix", cell.destination.prefix,
                "--no-copies", "--request-id", options["request_id"]]
        return subprocess.Popen(args, env=cell.shell, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


DRIVERS: dict[str, Callable[..., Driver]] = {
    "tasks": lambda cell, **o: TasksDriver(cell, mode="sync", **o),
    "atasks": lambda cell, **o: TasksDriver(cell, mode="async", **o),
    "generate": lambda cell, **o: ImageFlowDriver(cell, kind="generate", mode="sync", **o),
    "agenerate": lambda cell, **o: ImageFlowDriver(cell, kind="generate", mode="async", **o),
    "edit": lambda cell, **o: ImageFlowDriver(cell, kind="edit", mode="sync", **o),
    "aedit": lambda cell, **o: ImageFlowDriver(cell, kind="edit", mode="async", **o),
    "batch": BatchDriver,
    "cli": CliDriver,
}


# --- an S3 that fails writes on demand ------------------------------------------------------------


class FlakyS3(ThreadingHTTPServer):
    """Forwards to moto; answers 500 InternalError to the next `fail_writes` PUT/POSTs of objects
    outside `_ledger/` once `armed()` says so (the bucket check and claims before paying pass)."""

    daemon_threads = True

    def __init__(self, upstream: str, armed: Callable[[], bool]) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = urlsplit(upstream)
        self.armed = armed
        self.fail_writes = 0
        self.failed = 0
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass

    def should_fail(self, method: str, path: str) -> bool:
        parts = urlsplit(path).path.strip("/").split("/", 1)
        is_object_write = method in ("PUT", "POST") and len(parts) == 2 and parts[1]
        if not is_object_write or "_ledger/" in path or not self.armed():
            return False
        with self.lock:
            if self.fail_writes <= 0:
                return False
            self.fail_writes -= 1
            self.failed += 1
            return True


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FlakyS3

    def log_message(self, *args: Any) -> None:
        pass

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        if self.server.should_fail(self.command, self.path):
            payload = (b"<Error><Code>InternalError</Code><Message>We encountered an internal "
                       b"error. Please try again.</Message></Error>")
            self.send_response(500)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection(self.server.upstream.hostname,
                                              self.server.upstream.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in ("content-length", "transfer-encoding", "connection",
                                        "server", "date"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay


@pytest.fixture
def flaky_s3(s3_endpoint: str, seedream_sandbox: Any) -> Iterator[FlakyS3]:
    server = FlakyS3(s3_endpoint, armed=lambda: bool(seedream_sandbox.predictions()))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# --- crashes, simulated with the ledger's own code ------------------------------------------------


def leave_crashed_attempt(cell: Cell, driver: Driver, *, id_known: bool) -> str:
    """What an attempt that claimed its request, sent the create and died leaves behind: a
    `sending` record (or, `id_known`, a `created` one naming the prediction), written by the
    ledger's own code, and the prediction the create made. Returns its id."""
    import replicate

    from prefect_seedream.tasks import prediction_ledger as ledger
    from prefect_seedream.tasks.replicate_client.prediction import PredictionStatus
    from prefect_seedream.tasks.replicate_client.protocol import utcnow
    from prefect_seedream.tasks.replicate_client.request_builders import RequestMatch
    from prefect_seedream.tasks.seedream_input import MODEL_SLUG

    body, _ = driver.request_body()
    scope, key = driver.ledger_place()
    run = driver.flow_run_id or str(uuid.uuid4())
    claim = ledger.Claim(ledger.Ledger(cell.destination, cell.destination.prefix), scope, key,
                         run=run, token=ledger.new_token())
    assert claim.send(sent_at=utcnow(), match=RequestMatch.of(MODEL_SLUG, body).to_json(),
                      window=90, replace=False)
    client = replicate.Client(api_token=cell.sandbox.api_token, base_url=cell.sandbox.base_url)
    made = client.models.predictions.create(model=MODEL_SLUG, input=body)
    if id_known:
        assert claim.created(made.id, PredictionStatus(made.status))
    ledger.retire(claim.token)  # the attempt is gone
    return str(made.id)


# --- the scenarios: one per fault -----------------------------------------------------------------


@dataclass
class Measured:
    handling: str
    requests: int = 1


def _expect_ok(outcome: Outcome) -> None:
    assert outcome.ok, outcome.error_text()[-3000:]


def _expect_failed(outcome: Outcome, *words: str) -> None:
    assert not outcome.ok, "the run succeeded where the fault should have stopped it"
    text = outcome.error_text()
    for word in words:
        assert word in text, text[-3000:]


def _requests(driver: Driver) -> int:
    return getattr(driver, "requests", 1)


def _polling(cell: Cell) -> None:
    """Flows and the CLI hold the create open (sync mode); turn it off so they poll."""
    cell.monkeypatch.setenv("SEEDREAM_SYNC_WAIT_SECONDS", "0")
    cell.shell["SEEDREAM_SYNC_WAIT_SECONDS"] = "0"
    cell.sandbox.configure(run_seconds=0.3)


def _429(cell: Cell) -> Measured:
    cell.sandbox.faults.rate_limit_creates(2, retry_after=1)
    driver = cell.driver()
    _expect_ok(driver.run())
    assert cell.sandbox.counters()["rate_limited"] == 2
    return Measured("waited as Retry-After said, then created once", _requests(driver))


def _5xx_create(cell: Cell) -> Measured:
    cell.sandbox.faults.fail_next("create", 1, status=503)
    driver = cell.driver()
    _expect_ok(driver.run())
    assert cell.sandbox.counters()["requests"]["create"] >= 2
    return Measured("listed recent predictions, found none, created again", _requests(driver))


def _5xx_get(cell: Cell) -> Measured:
    _polling(cell)
    driver = cell.driver()
    cell.sandbox.faults.fail_next("get", 2, status=503)
    _expect_ok(driver.run())
    assert cell.sandbox.counters()["faults_injected"] == 2
    return Measured("kept polling with backoff; stored when it succeeded", _requests(driver))


def _5xx_list(cell: Cell) -> Measured:
    cell.sandbox.faults.drop_create_responses(1)
    cell.sandbox.faults.fail_next("list", 1, status=503)
    driver = cell.driver()
    _expect_ok(driver.run())
    counters = cell.sandbox.counters()
    assert counters["dropped_responses"] == 1 and counters["requests"]["list"] >= 2
    return Measured("retried the list within its bound, found the lost create, re-attached",
                    _requests(driver))


def _5xx_cancel(cell: Cell) -> Measured:
    cell.sandbox.configure(run_seconds=30)
    cell.sandbox.faults.fail_next("cancel", 1, status=503)
    driver = cell.driver(timeout_seconds=1)
    outcome = driver.run()
    _expect_failed(outcome)
    if cell.entry != "cli":
        assert "PredictionTimedOut" in repr(outcome.error) or "timed out" in outcome.error_text()
    assert cell.sandbox.counters()["requests"]["cancel"] >= 2
    return Measured("timed out, retried the cancel past the 503; the prediction canceled",
                    _requests(driver))


def _5xx_files(cell: Cell) -> Measured:
    cell.sandbox.faults.fail_next("files", 1, status=503)
    driver = cell.driver()
    _expect_ok(driver.run())
    assert cell.sandbox.counters()["faults_injected"] == 1
    return Measured("retried the download from the same prediction", _requests(driver))


def _lost_list_up(cell: Cell) -> Measured:
    cell.sandbox.faults.drop_create_responses(1)
    driver = cell.driver()
    _expect_ok(driver.run())
    assert cell.sandbox.counters()["lists"] >= 1
    return Measured("found it in the list of recent predictions and re-attached",
                    _requests(driver))


def _lost_list_down(cell: Cell) -> Measured:
    """Unknown means stop: the run fails naming the request; the re-run, with the list back,
    reconciles from the ledger instead of paying again."""
    driver = cell.driver(**_rerun_options(cell))
    cell.sandbox.faults.drop_create_responses(2)
    cell.sandbox.faults.error_share(1.0, status=503, routes=["list"])
    _expect_failed(driver.run(), "nothing was sent again")
    assert cell.sandbox.counters()["requests"]["create"] == _requests(driver)
    cell.sandbox.faults.clear()
    _expect_ok(driver.rerun())
    return Measured("CreateOutcomeUnknown naming the request, nothing re-sent; the re-run found "
                    "the prediction and stored it", _requests(driver))


def _crash(cell: Cell, *, id_known: bool) -> Measured:
    driver = cell.driver()
    if not isinstance(driver, BatchDriver):
        driver.prepare()
    made = leave_crashed_attempt(cell, driver, id_known=id_known)
    _expect_ok(driver.run())
    ids = {p["id"] for p in cell.sandbox.predictions()}
    assert made in ids
    how = ("the `created` record re-attached at once" if id_known else
           "the `sending` record made it look the create up first; found and reused")
    return Measured(f"the re-run: {how}", _requests(driver))


def _task_retry(cell: Cell) -> Measured:
    if cell.entry in TASK_ENTRIES:
        # Our own task retried: its first try ends CreateOutcomeUnknown (answer lost, list
        # down); the retry condition (a user's hook) sees the list come back first.
        def list_back(task: Any, task_run: Any, state: Any) -> bool:
            cell.sandbox.faults.error_share(0.0, status=503, routes=["list"])
            return True

        driver = cell.driver(task_retries=1, retry_condition=list_back)
        cell.sandbox.faults.drop_create_responses(2)
        cell.sandbox.faults.error_share(1.0, status=503, routes=["list"])
        _expect_ok(driver.run())
        assert cell.sandbox.counters()["requests"]["create"] == 1
        return Measured("create_prediction's retry reconciled from its `sending` record: "
                        "found the prediction, sent nothing again")
    driver = cell.driver(task_retries=1)
    cell.sandbox.faults.fail_next("files", 1, status=403)  # the first attempt fails after paying
    _expect_ok(driver.run())
    return Measured("the first attempt failed after paying (download refused); the task's "
                    "retry re-attached through the ledger and stored its images")


def _rerun_options(cell: Cell) -> dict[str, Any]:
    """A command run again is a new flow run: what makes it the same request is its
    --request-id. The first command's CreateOutcomeUnknown marked its record `unknown`, so the
    second process looks the create up at once instead of waiting out the claim window."""
    if cell.entry != "cli":
        return {}
    return {"request_id": f"order-{uuid.uuid4().hex[:8]}"}


def _fail_after_paying(cell: Cell, **options: Any) -> Driver:
    if cell.entry in TASK_ENTRIES:
        return cell.driver(fail_after_create=True, **options)
    cell.sandbox.faults.fail_next("files", 1, status=403)  # refused once: fails the attempt
    return cell.driver(**options)


def _flow_retry(cell: Cell) -> Measured:
    driver = _fail_after_paying(cell, flow_retries=1)
    _expect_ok(driver.run())
    return Measured("the first attempt failed after paying; the flow's retry re-attached "
                    "through the ledger", _requests(driver))


def _rerun(cell: Cell) -> Measured:
    driver = _fail_after_paying(cell, **_rerun_options(cell))
    _expect_failed(driver.run())
    _expect_ok(driver.rerun())
    what = {"batch": "the manifest run again", "cli": "the command run again (same --request-id)"
            }.get(cell.entry, "the same flow run re-run")
    return Measured(f"the run failed after paying; {what} re-attached through the ledger",
                    _requests(driver))


def _concurrent(cell: Cell) -> Measured:
    if cell.entry == "batch":
        drivers = [cell.driver(), cell.driver()]
        cell.sandbox.configure(run_seconds=1.0)
        outcomes = _at_once([d.run for d in drivers])
        for outcome in outcomes:
            _expect_ok(outcome)
        ids = [[i.prediction_id for i in o.value.items] for o in outcomes]
        assert ids[0] == ids[1]
        return Measured("each item claimed once in the ledger; the other run attached",
                        _requests(drivers[0]))
    request_id = f"order-{uuid.uuid4().hex[:8]}"
    cell.sandbox.configure(run_seconds=1.0)
    if cell.entry == "cli":
        driver = cell.driver(request_id=request_id)
        processes = [driver.start() for _ in range(2)]  # type: ignore[attr-defined]
        for process in processes:
            _, err = process.communicate(timeout=240)
            assert process.returncode == 0, err[-3000:]
        return Measured("one run claimed the request id; the other attached to its prediction")
    drivers = [cell.driver(request_id=request_id) for _ in range(2)]
    for driver in drivers:
        driver.prepare()
    for outcome in _at_once([d.run for d in drivers]):
        _expect_ok(outcome)
    return Measured("one run claimed the request id; the other attached to its prediction")


def _at_once(calls: list[Callable[[], Outcome]]) -> list[Outcome]:
    """Run the calls in threads started together (two runs, as two workers would)."""
    results: list[Outcome | None] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # reported below
            results[i] = Outcome(False, error=exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    return [r if r is not None else Outcome(False, error="did not finish") for r in results]


def _s3_outage(cell: Cell, flaky: FlakyS3) -> Measured:
    flaky.fail_writes = 6  # more than botocore's 5 attempts: our storage retry takes over
    cell.destination = cell.destination.model_copy(update={"endpoint_url": flaky.endpoint})
    driver = cell.driver()
    _expect_ok(driver.run())
    assert flaky.failed == 6
    return Measured("S3 answered 500 to 6 writes in a row; the upload was retried from the same "
                    "download, no new prediction", _requests(driver))


def _size_drift(cell: Cell) -> Measured:
    cell.sandbox.faults.size_drift(1, dx=16, dy=0)
    driver = cell.driver()
    outcome = driver.run()
    _expect_ok(outcome)
    if cell.entry != "cli":
        images = outcome.value.images if cell.entry == "batch" else outcome.value
        if cell.entry in TASK_ENTRIES:  # given no size to expect: stored as it came
            assert (images[0].width, images[0].height) == (1040, 1024)
        else:
            assert any(image.size_note for image in images), images
    return Measured("stored at its real size; the difference recorded beside it",
                    _requests(driver))


def _corrupt(cell: Cell) -> Measured:
    cell.sandbox.faults.corrupt_outputs(1, kind="html")
    driver = cell.driver()
    _expect_failed(driver.run(), "_quarantine/")
    return Measured("OutputInvalid naming the quarantined copy; the bytes kept",
                    _requests(driver))


SCENARIOS: dict[str, Callable[..., Measured]] = {
    "429": _429, "5xx-create": _5xx_create, "5xx-get": _5xx_get, "5xx-list": _5xx_list,
    "5xx-cancel": _5xx_cancel, "5xx-files": _5xx_files, "lost-list-up": _lost_list_up,
    "lost-list-down": _lost_list_down,
    "crash-before-id": lambda cell: _crash(cell, id_known=False),
    "crash-after-id": lambda cell: _crash(cell, id_known=True),
    "task-retry": _task_retry, "flow-retry": _flow_retry, "rerun": _rerun,
    "concurrent": _concurrent, "size-drift": _size_drift, "corrupt": _corrupt,
}

#: Cells measured off target: (entry, fault) -> what goes wrong. They stay honest xfails.
OFF_TARGET: dict[tuple[str, str], str] = {}


def _takes_request_id(entry: str) -> bool:
    import inspect

    import prefect_seedream as api

    if entry in ("batch", "cli"):  # two runs of one manifest; --request-id
        return True
    name = {"tasks": "create_prediction", "atasks": "acreate_prediction",
            "generate": "generate_images", "agenerate": "agenerate_images",
            "edit": "edit_image", "aedit": "aedit_image"}[entry]
    return "request_id" in inspect.signature(getattr(api, name).fn).parameters


def run_cell(entry: str, fault: str, request: pytest.FixtureRequest, record_cell: Any,
             record_na: Any, cell_context: Callable[[str, str], Cell]) -> None:
    """Drive one cell: record it as not applicable, or run its scenario and record (then check)
    what it measured."""
    if (entry, fault) in NOT_APPLICABLE:
        record_na(ENTRIES[entry], FAULTS[fault], NOT_APPLICABLE[(entry, fault)])
        return
    if fault == "concurrent" and not _takes_request_id(entry):
        record_na(ENTRIES[entry], FAULTS[fault], "pending: two runs share one prediction through "
                  "`request_id=`, which this entry point does not take yet")
        return
    if (entry, fault) in OFF_TARGET:
        request.applymarker(pytest.mark.xfail(reason=OFF_TARGET[(entry, fault)], strict=True))
    cell = cell_context(entry, fault)
    if fault == "s3-outage":
        measured = _s3_outage(cell, request.getfixturevalue("flaky_s3"))
    else:
        measured = SCENARIOS[fault](cell)
    created = len(cell.sandbox.predictions())
    left = len(running(cell.sandbox))
    lost = lost_outputs(cell.sandbox, cell.s3_client, cell.bucket)
    record_cell(ENTRIES[entry], FAULTS[fault], created=created, requests=measured.requests,
                left_running=left, outputs_lost=lost, handling=measured.handling)
    assert (created, left, lost) == (measured.requests, 0, 0), (
        f"created {created} for {measured.requests} request(s), {left} left running, "
        f"{lost} output(s) lost")


# --- the matrix is complete -----------------------------------------------------------------------


def test_every_cell_of_the_matrix_is_measured_or_says_why_not() -> None:
    here = Path(__file__).parent
    files = {
        TASK_ENTRIES: here / "test_fault_matrix.py",
        FLOW_ENTRIES: here / "test_fault_matrix_flows.py",
        BATCH_CLI_ENTRIES: here / "test_fault_matrix_batch_cli.py",
        ("deployment",): here / "e2e" / "test_fault_matrix_deployment.py",
    }
    columns = [entry for group in files for entry in group]
    assert sorted(columns) == sorted(ENTRIES)
    assert all(path.exists() for path in files.values())
    measured_here = {(e, f) for e in columns if e != "deployment" for f in FAULTS
                     if (e, f) not in NOT_APPLICABLE}
    assert all(f in SCENARIOS or f == "s3-outage" for _, f in measured_here)
    assert set(NOT_APPLICABLE) <= {(e, f) for e in ENTRIES for f in FAULTS}


@pytest.mark.parametrize(("entry", "fault"), cells(*TASK_ENTRIES))
def test_cell(entry: str, fault: str, request: pytest.FixtureRequest, record_cell: Any,
              record_na: Any, cell_context: Callable[[str, str], Cell]) -> None:
    run_cell(entry, fault, request, record_cell, record_na, cell_context)
