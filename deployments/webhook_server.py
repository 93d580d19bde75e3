"""The webhook receiver's HTTP stack: a starlette app served by uvicorn, with limits.

Nothing here knows about Replicate: the app hands `(headers, body)` to a handler's
`handle()` and answers what it returns. What the stack guarantees, whoever is on the other end:

- request line and headers must arrive within `header_timeout`, a body within `read_timeout`
  (a client that announces 1 MB and sends one byte is answered 408 and disconnected); an idle
  keep-alive connection is closed after `idle_timeout`;
- at most `max_connections` connections at once (uvicorn's `limit_concurrency`: past it a
  request is answered 503, which Replicate retries) and a listen backlog of `backlog`; waiting
  connections cost a socket each, not a thread;
- Content-Length is parsed by h11: anything but up to 20 ASCII digits (`²`, 5000 digits) is
  answered 400 and the connection closed; no Content-Length is 411, a body over
  `max_body_bytes` 413;
- a body is always consumed or the connection closed: an answer given before the body was read
  (404, 405, 408, 411, 413) carries `Connection: close`, and h11 frames every request, so body
  bytes are never parsed as a second request.

The handler runs in a worker thread (it may block on the Prefect API), at most
`handler_threads` at a time.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol


class DeliveryHandler(Protocol):
    """What the app serves: `handle(headers, body) -> (status, JSON answer)`."""

    def handle(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        ...


@dataclass(frozen=True)
class ServerLimits:
    """Timeouts and bounds of the receiver's HTTP server.

    Attributes:
        max_body_bytes: Largest accepted body (Replicate's prediction JSON is a few kB).
        header_timeout: Seconds a connection has to send a request line and its headers.
        read_timeout: Seconds a request has to send its whole body.
        idle_timeout: Seconds an idle keep-alive connection is kept open.
        max_connections: Connections served at once; past it requests are answered 503.
        backlog: Listen backlog: connections the kernel queues before they are accepted.
        handler_threads: Deliveries handled at once (each may wait on the Prefect API).
    """

    max_body_bytes: int = 1024 * 1024
    header_timeout: float = 10.0
    read_timeout: float = 10.0
    idle_timeout: int = 5
    max_connections: int = 1000
    backlog: int = 2048
    handler_threads: int = 16


def _answer(status: int, answer: dict[str, Any], *, close: bool = False) -> Response:
    return JSONResponse(answer, status_code=status,
                        headers={"Connection": "close"} if close else None)


def make_app(handler: DeliveryHandler, path: str = "/replicate",
             limits: ServerLimits = ServerLimits()) -> Starlette:
    """The ASGI app: `POST path` goes to `handler`, `GET /healthz` answers 200."""
    limiters: list[anyio.CapacityLimiter] = []  # made on first use, inside the event loop

    async def deliver(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is None:
            return _answer(411, {"error": "Content-Length required"}, close=True)
        if not (length.isascii() and length.isdigit()):  # h11 refuses these before us
            return _answer(400, {"error": "bad Content-Length"}, close=True)
        if int(length) > limits.max_body_bytes:
            return _answer(413, {"error": "body too large"}, close=True)
        chunks: list[bytes] = []
        size = 0
        try:
            with anyio.fail_after(limits.read_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limits.max_body_bytes:
                        return _answer(413, {"error": "body too large"}, close=True)
                    chunks.append(chunk)
        except TimeoutError:
            return _answer(408, {"error": "the body did not arrive in time"}, close=True)
        except ClientDisconnect:
            return _answer(400, {"error": "the client went away"}, close=True)
        if not limiters:
            limiters.append(anyio.CapacityLimiter(limits.handler_threads))
        status, answer = await anyio.to_thread.run_sync(
            handler.handle, dict(request.headers), b"".join(chunks), limiter=limiters[0])
        return _answer(status, answer)

    async def healthz(request: Request) -> Response:
        return _answer(200, {"status": "ok"})

    async def refused(request: Request, exc: Exception) -> Response:
        # 404 / 405 before the body was read: close rather than leave it in the stream.
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return _answer(status, {"error": "not found" if status == 404 else "refused"},
                       close=True)

    return Starlette(
        routes=[Route(path, deliver, methods=["POST"]),
                Route("/healthz", healthz, methods=["GET"])],
        exception_handlers={404: refused, 405: refused},
    )


class _DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request line and its headers.

    uvicorn resets its keep-alive timer on every byte, so a client sending one header byte a
    second would hold its connection forever; this deadline is absolute.
    """

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        cycle = self.cycle

        def expire() -> None:
            waiting = self.cycle is cycle and (cycle is None or cycle.response_complete)
            if waiting and not self.transport.is_closing():
                self.transport.close()  # no request started since: its headers never came

        self._header_timer = self.loop.call_later(self.header_timeout, expire)


class WebhookServer:
    """A bound socket and the uvicorn server for an app, started or stopped from any thread.

    Bound on creation (so `port=0` has its port at once); `serve_forever()` blocks,
    `start()` serves from a daemon thread, `shutdown()` stops and waits, `server_close()` closes
    the socket. Usable as a context manager (started on enter, stopped on exit).
    """

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0,
                 limits: ServerLimits = ServerLimits()) -> None:
        self.limits = limits
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=limits.backlog)
        protocol = type("WebhookH11Protocol", (_DeadlineH11Protocol,),
                        {"header_timeout": limits.header_timeout})
        config = uvicorn.Config(
            app, http=protocol, lifespan="off", log_config=None, access_log=False,
            server_header=False, limit_concurrency=limits.max_connections,
            backlog=limits.backlog, timeout_keep_alive=limits.idle_timeout,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._serving = False

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return len(self._server.server_state.connections)

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until `shutdown()` (or SIGINT/SIGTERM in the main thread)."""
        self._serving = True
        try:
            asyncio.run(self._server.serve(sockets=[self.socket]))
        finally:
            self._stopped.set()

    def start(self, timeout: float = 10.0) -> WebhookServer:
        """Serve from a daemon thread; return once the server accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, name="webhook-server",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._stopped.is_set() or time.monotonic() > deadline:
                raise RuntimeError("the webhook server did not start")
            time.sleep(0.01)
        return self

    def shutdown(self) -> None:
        """Stop serving and wait for the server to finish (open requests get 5 s)."""
        self._server.should_exit = True
        if self._serving:
            self._stopped.wait()
        if self._thread is not None:
            self._thread.join()

    def server_close(self) -> None:
        self.socket.close()

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()


__all__ = ["DeliveryHandler", "ServerLimits", "WebhookServer", "make_app"]
