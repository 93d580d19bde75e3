"""The HTTP server (stdlib, HTTP/1.1 keep-alive) and `Sandbox`, the public handle on it."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from prefect_seedream.sandbox.app import SandboxApp
from prefect_seedream.sandbox.config import DEFAULT_TOKEN, SandboxConfig
from prefect_seedream.sandbox.faults import Faults
from prefect_seedream.sandbox.http_types import Request, Response, problem

logger = logging.getLogger("prefect_seedream.sandbox")
_CHUNK = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ReplicateSandbox/1.0"
    timeout = 60  # idle keep-alive connections close after this many seconds
    disable_nagle_algorithm = True  # headers and body are separate writes
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _serve(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(
            method=self.command,
            path=url.path,
            query=urllib.parse.parse_qs(url.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
            client_host=self.client_address[0],
        )
        try:
            response = self.server.app.handle(request)
        except Exception:
            logger.exception("sandbox failed on %s %s", self.command, url.path)
            response = problem(500, "The sandbox itself failed; see its log")
        if response.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self._write_body(response)

    def _write_body(self, response: Response) -> None:
        body, rate = response.body, response.bytes_per_second
        chunk = _CHUNK if rate is None else max(256, min(_CHUNK, int(rate / 20)))
        sent = 0
        try:
            while sent < len(body):
                piece = body[sent:sent + chunk]
                self.wfile.write(piece)
                sent += len(piece)
                if rate is not None:
                    self.wfile.flush()
                    time.sleep(len(piece) / rate)
        except OSError:
            self.close_connection = True
        finally:
            if response.on_sent is not None:
                response.on_sent(sent)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], app: SandboxApp) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class Sandbox:
    """A local Replicate-compatible server for Seedream 4, for tests, demos and benchmarks.

    Point the real client at it with `replicate.Client(api_token=sb.api_token,
    base_url=sb.base_url)`.

    Args:
        api_token: The only token /v1 accepts.
        config: Initial settings; defaults to `SandboxConfig()`.
        host: Interface to bind.
        port: Port to bind; 0 picks a free one.

    Example:
        ```python
        import replicate
        from prefect_seedream.sandbox import Sandbox, SandboxConfig

        with Sandbox(config=SandboxConfig(run_seconds=0.2)) as sb:
            client = replicate.Client(api_token=sb.api_token, base_url=sb.base_url)
            prediction = client.models.predictions.create(
                model="bytedance/seedream-4",
                input={"prompt": "a red fox in snow", "aspect_ratio": "4:3"},
                wait=True,
            )
            print(prediction.output)
        ```
    """

    def __init__(
        self,
        api_token: str = DEFAULT_TOKEN,
        config: SandboxConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._app = SandboxApp(api_token, config or SandboxConfig())
        self._host, self._port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Sandbox:
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), self._app)
        port = server.server_address[1]
        shown = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        self._app.base_url = f"http://{shown}:{port}"
        self._app.start()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name="sandbox-server", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and stop the background threads."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._app.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """Root URL such as `http://127.0.0.1:PORT` (no `/v1`); set once started."""
        if self._server is None:
            raise RuntimeError("the sandbox is not running; call start() first")
        return self._app.base_url

    @property
    def api_token(self) -> str:
        """The bearer token the sandbox accepts."""
        return self._app.api_token

    @property
    def config(self) -> SandboxConfig:
        """The current settings (read-only; change them with `configure`)."""
        return self._app.config

    @property
    def faults(self) -> Faults:
        """Fault switches: `rate_limit_creates`, `fail_next`, `error_share`, and so on."""
        return self._app.faults

    @property
    def webhook_secret(self) -> str:
        """The `whsec_...` secret webhooks are signed with."""
        return self._app.webhook_secret

    def configure(self, **changes: Any) -> SandboxConfig:
        """Change any `SandboxConfig` field at run time; returns the new config."""
        return self._app.configure(**changes)

    def counters(self) -> dict[str, Any]:
        """A snapshot of every counter, global and under `per_prediction`."""
        return self._app.counters.snapshot()

    def prediction(self, prediction_id: str) -> dict[str, Any]:
        """The prediction as the API returns it now.

        Raises:
            KeyError: No prediction has this id.
        """
        record = self._app.store.get(prediction_id)
        if record is None:
            raise KeyError(prediction_id)
        return self._app.prediction_json(record)

    def predictions(self) -> list[dict[str, Any]]:
        """Every prediction, newest first."""
        return [self._app.prediction_json(r) for r in self._app.store.all()]

    def model_schema(self, model: str) -> dict[str, Any]:
        """The OpenAPI document the sandbox serves as `model`'s latest version."""
        return self._app.models.schema(model)

    def set_model_schema(self, model: str, schema: dict[str, Any]) -> str:
        """Serve `schema` as `model`'s new latest version (until `reset`); returns its id."""
        return self._app.models.set_schema(model, schema)

    def wait_for_webhooks(self, timeout: float = 5.0) -> bool:
        """Block until every due webhook was delivered or given up; False on timeout."""
        self._app.tick()
        return self._app.dispatcher.wait_idle(timeout)

    def reset(self) -> None:
        """Forget predictions, counters and faults, and serve the default model schemas again
        (config and secret stay)."""
        self._app.reset()
