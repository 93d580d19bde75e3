"""The one place that talks HTTP to Replicate, through the `replicate` client's own httpx clients.

`ReplicateApi.run` (sync) and `ReplicateApi.arun` (async) drive the protocols in
`prefect_seedream.tasks.replicate_client.protocol`; both send exactly the same requests and make the
same decisions.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from prefect_seedream.tasks.replicate_client.prediction import Prediction
from prefect_seedream.tasks.replicate_client.protocol import (
    Note,
    Protocol,
    SendFailed,
    Sleep,
    Update,
)
from prefect_seedream.tasks.replicate_client.request_builders import ApiRequest, ApiResponse
from prefect_seedream.tasks.tls import tls_context

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)

logger = logging.getLogger("prefect_seedream.replicate")

OnUpdate = Callable[[Prediction], None]
OnNote = Callable[[str], None]


def _response(raw: httpx.Response) -> ApiResponse:
    try:
        body: Any = raw.json() if raw.content else None
    except ValueError:
        body = None
    headers = {k.lower(): v for k, v in raw.headers.items()}
    return ApiResponse(raw.status_code, headers, body)


def _send_failed(exc: httpx.TransportError) -> SendFailed:
    # The exception text names the host at most; it never carries headers or the token.
    return SendFailed(type(exc).__name__, maybe_sent=not isinstance(exc, _NOT_SENT))


def _timeout(request: ApiRequest) -> httpx.Timeout | None:
    if request.read_timeout is None:
        return None
    return httpx.Timeout(10.0, read=request.read_timeout)


#: Connections per client: room for several hundred creates held open in sync mode at once.
POOL_LIMITS = httpx.Limits(max_connections=1024, max_keepalive_connections=256)


def _bare(http: Any) -> Any:
    """An httpx client like `http` (base URL, token, user agent, timeouts) without the
    `replicate` client's `RetryTransport`, which retries GETs on 429/503/504 and transport
    errors up to 10 times out of our sight: our protocol's retry counts and deadlines must be
    the only ones.

    Its pool is sized for sync mode: each create holds its connection open until the
    prediction ends (up to 60 s), so httpx's default of 100 connections capped one process at
    100 predictions in flight (300 creates/min at 20 s latency, half Replicate's limit).
    The callers (`max_in_flight`, the global rate limit) bound how many are open."""
    kind = httpx.AsyncClient if isinstance(http, httpx.AsyncClient) else httpx.Client
    return _like(http, kind)


def _like(http: Any, kind: Any) -> Any:
    """A `kind` client with `http`'s base URL, headers and timeouts, the process's one TLS
    context and a pool sized for sync mode."""
    return kind(base_url=http.base_url, headers=http.headers, timeout=http.timeout,
                limits=POOL_LIMITS, verify=tls_context())


class ReplicateApi:
    """Sends requests with httpx clients built from a `replicate.Client`'s settings.

    Taking the client's base URL, token and user agent keeps it the one source of those, while
    giving this plugin the response headers (`Retry-After`) and raw JSON (`aborted`, `deadline`,
    `data_removed`) that replicate 1.0.7 drops; its retrying transport is left out (`_bare`).

    Example:
        ```python
        import replicate
        from prefect_seedream.tasks.replicate_client.api import ReplicateApi
        from prefect_seedream.tasks.replicate_client import protocol

        api = ReplicateApi(replicate.Client(api_token="r8_...", base_url="http://127.0.0.1:8787"))
        prediction = api.run(protocol.get("abc123", policy=protocol.RetryPolicy()))
        ```
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._http = _bare(client._client)
        # httpx's async pool belongs to one event loop; Prefect runs each async flow run on its
        # own loop, so each loop gets its own client (weakly keyed: closed loops drop out),
        # built from the sync one's settings: building `replicate`'s own async client first
        # would load a CA bundle on the event loop (~30 ms with nothing else running).
        self._loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def send(self, request: ApiRequest) -> ApiResponse:
        kwargs: dict[str, Any] = {"json": request.json, "headers": request.headers}
        if (timeout := _timeout(request)) is not None:
            kwargs["timeout"] = timeout
        raw = self._http.request(request.method, request.path, **kwargs)
        return _response(raw)

    async def asend(self, request: ApiRequest) -> ApiResponse:
        kwargs: dict[str, Any] = {"json": request.json, "headers": request.headers}
        if (timeout := _timeout(request)) is not None:
            kwargs["timeout"] = timeout
        raw = await self._async_http().request(request.method, request.path, **kwargs)
        return _response(raw)

    def _async_http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._loop_clients.get(loop)
        if client is None:
            client = self._loop_clients[loop] = _like(self._http, httpx.AsyncClient)
        return client  # type: ignore[no-any-return]

    def run(
        self,
        protocol: Protocol,
        *,
        on_update: OnUpdate | None = None,
        on_note: OnNote | None = None,
    ) -> Any:
        """Drive a protocol with blocking I/O and return its result."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = protocol.throw(error) if error is not None else protocol.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            if isinstance(op, ApiRequest):
                try:
                    reply = self.send(op)
                except httpx.TransportError as exc:
                    error = _send_failed(exc)
            elif isinstance(op, Sleep):
                time.sleep(max(0.0, op.seconds))
            else:
                _emit(op, on_update, on_note)

    async def arun(
        self,
        protocol: Protocol,
        *,
        on_update: OnUpdate | None = None,
        on_note: OnNote | None = None,
    ) -> Any:
        """Drive a protocol on the event loop; never blocks it."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = protocol.throw(error) if error is not None else protocol.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            if isinstance(op, ApiRequest):
                try:
                    reply = await self.asend(op)
                except httpx.TransportError as exc:
                    error = _send_failed(exc)
            elif isinstance(op, Sleep):
                await anyio.sleep(max(0.0, op.seconds))
            else:
                _emit(op, on_update, on_note)


def _emit(op: Update | Note, on_update: OnUpdate | None, on_note: OnNote | None) -> None:
    if isinstance(op, Update):
        if on_update is not None:
            on_update(op.prediction)
    elif on_note is not None:
        on_note(op.message)
    else:
        logger.info(op.message)
