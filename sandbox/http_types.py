"""The request and response values passed between the HTTP server and the route handlers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request.

    Attributes:
        method: Upper-case HTTP method.
        path: URL path without the query string.
        query: Query parameters, each with every value given.
        headers: Header values by lower-case name.
        body: Raw request body.
        client_host: IP address of the peer.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""
    client_host: str = "127.0.0.1"

    def param(self, name: str) -> str | None:
        """The first value of a query parameter, or None."""
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Response:
    """What to send back.

    Attributes:
        status: HTTP status code.
        body: Response body.
        content_type: Content-Type header.
        headers: Extra headers.
        drop: Close the connection without answering (a lost response).
        bytes_per_second: Throttle for sending the body, or None.
        on_sent: Called with the number of body bytes actually sent.
    """

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    bytes_per_second: float | None = None
    on_sent: Callable[[int], None] | None = None


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response."""
    return Response(status, json.dumps(payload).encode(), headers=dict(headers or {}))


def problem(
    status: int, detail: str, title: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """An RFC 7807 problem response (`application/problem+json`).

    Args:
        status: HTTP status code.
        detail: What went wrong and what to do.
        title: Short summary; the status phrase when None.
        headers: Extra headers such as `Retry-After`.
    """
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    payload = {
        "type": f"https://replicate.com/docs/reference/http#{status}",
        "title": title or phrase,
        "status": status,
        "detail": detail,
    }
    return Response(status, json.dumps(payload).encode(), "application/problem+json",
                    dict(headers or {}))
