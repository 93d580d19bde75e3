"""The webhook receiver against hostile clients, over real sockets: slow-loris bodies and
headers, a burst of connects, malformed Content-Length, bodies left unread (request smuggling),
replays. The receiver publishes into a list; `created` is the sandbox's prediction count (the
receiver never creates any), `internal_requests` the events a hostile request made it publish.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from prefect_seedream.deployments.webhook_receiver import WebhookReceiver, make_server
from prefect_seedream.deployments.webhook_server import ServerLimits, WebhookServer
from prefect_seedream.tasks.webhooks import WebhookVerifier, sign_delivery

SECRET = "whsec_" + "c2VlZHJlYW0tdGVzdC1zZWNyZXQ="
#: Short deadlines, so the test sees them act; generous socket timeouts only bound the test.
LIMITS = ServerLimits(header_timeout=2.0, read_timeout=2.0, idle_timeout=2)
BOUND = 30.0


class Receiver:
    def __init__(self, limits: ServerLimits = LIMITS) -> None:
        self.published: list[Any] = []
        self.server: WebhookServer = make_server(
            WebhookReceiver(WebhookVerifier(SECRET), publish=self.published.append),
            limits=limits).start()
        self.host, self.port = self.server.server_address
        self.url = f"http://{self.host}:{self.port}/replicate"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=BOUND)
        return sock


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    try:
        yield running
    finally:
        running.close()


def signed_delivery(webhook_id: str, prediction_id: str = "p1",
                    status: str = "succeeded") -> tuple[dict[str, str], bytes]:
    body = json.dumps({"id": prediction_id, "status": status, "model": "bytedance/seedream-4"})
    stamp = int(time.time())
    return ({"content-type": "application/json", "webhook-id": webhook_id,
             "webhook-timestamp": str(stamp),
             "webhook-signature": sign_delivery(SECRET, webhook_id, stamp, body)},
            body.encode())


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by BOUND)."""
    sock.settimeout(BOUND)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    sock.close()
    return data


def statuses(raw: bytes) -> list[int]:
    """The status codes of the HTTP responses in `raw`, in order (framed by Content-Length)."""
    found = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 "), raw[:200]
        lines = head.split(b"\r\n")
        found.append(int(lines[0][9:12]))
        lengths = [int(line.split(b":", 1)[1]) for line in lines[1:]
                   if line.lower().startswith(b"content-length:")]
        raw = rest[lengths[0]:] if lengths else b""  # no length: the body runs to the close
    return found


def test_slow_loris_clients_are_cut_off_and_others_still_answered(
    receiver: Receiver, seedream_sandbox: Any, record_hostile: Any,
) -> None:
    slow_bodies = []
    for _ in range(300):  # announce 1 MB, send one byte, wait
        sock = receiver.connect()
        sock.sendall(b"POST /replicate HTTP/1.1\r\nHost: receiver\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{")
        slow_bodies.append(sock)
    slow_headers = []
    for _ in range(50):  # the classic slow loris: headers that never end
        sock = receiver.connect()
        sock.sendall(b"POST /replicate HTTP/1.1\r\nHost: receiver\r\nX-Slow: 1")
        slow_headers.append(sock)
    # While all 350 are held open, a real delivery is answered.
    headers, body = signed_delivery("msg_during_loris")
    answer = httpx.post(receiver.url, content=body, headers=headers, timeout=BOUND)
    assert (answer.status_code, answer.json()["result"]) == (200, "accepted")
    assert httpx.get(f"http://{receiver.host}:{receiver.port}/healthz",
                     timeout=BOUND).status_code == 200
    # Then every slow client is answered 408 (body) or disconnected (headers), not held.
    body_answers = [statuses(read_until_closed(sock)) for sock in slow_bodies]
    header_answers = [read_until_closed(sock) for sock in slow_headers]
    assert body_answers == [[408]] * 300
    assert header_answers == [b""] * 50
    deadline = time.monotonic() + BOUND
    while receiver.server.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert receiver.server.connections == 0
    assert len(receiver.published) == 1
    record_hostile(
        "300 clients announcing a 1 MB webhook body and sending 1 byte, 50 sending headers "
        "that never end",
        "each body cut off with 408 after the read timeout, each header-less connection "
        "closed; a signed delivery sent meanwhile answered 200 (uvicorn: no thread per client)",
        created=len(seedream_sandbox.predictions()),
        internal_requests=len(receiver.published) - 1)


def test_connections_are_bounded_and_a_burst_is_queued_not_refused(
    seedream_sandbox: Any, record_hostile: Any,
) -> None:
    # uvicorn counts the new connection too: a limit of 21 serves 20 at once.
    small = Receiver(ServerLimits(header_timeout=2.0, read_timeout=2.0, idle_timeout=2,
                                  max_connections=21))
    try:
        held = []
        for _ in range(20):
            sock = small.connect()
            sock.sendall(b"POST /replicate HTTP/1.1\r\nHost: r\r\nContent-Length: 10\r\n\r\n{")
            held.append(sock)
        deadline = time.monotonic() + BOUND
        while small.server.connections < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        # At the limit a request is answered 503 at once (Replicate retries), not queued.
        headers, body = signed_delivery("msg_at_limit")
        assert httpx.post(small.url, content=body, headers=headers,
                          timeout=BOUND).status_code == 503
        assert [statuses(read_until_closed(sock)) for sock in held] == [[408]] * 20
        assert httpx.post(small.url, content=body, headers=headers,
                          timeout=BOUND).json()["result"] == "accepted"
        published = len(small.published)
    finally:
        small.close()
    burst = Receiver()
    try:  # 438 connects at once: a 2048 backlog queues them all
        refused, opened = 0, []
        for _ in range(438):
            try:
                opened.append(burst.connect())
            except OSError:
                refused += 1
        for sock in opened[:5]:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
        answered = [statuses(read_until_closed(sock)) for sock in opened[:5]]
        for sock in opened[5:]:
            sock.close()
    finally:
        burst.close()
    assert (refused, len(opened), answered) == (0, 438, [[200]] * 5)
    assert published == 1
    record_hostile(
        "more webhook connections than the limit (20 held open), then 438 connects at once",
        "past the limit 503 at once (Replicate retries); the 438 connects all queued by a "
        "2048 backlog, none refused",
        created=len(seedream_sandbox.predictions()), internal_requests=published - 1)


@pytest.mark.parametrize("value", [b"\xc2\xb2", b"9" * 5000, b"-1", b"1e3", b"12, 13", b""],
                         ids=["superscript-two", "5000-digits", "negative", "float", "list",
                              "empty"])
def test_a_malformed_content_length_is_400_and_the_connection_closed(
    value: bytes, receiver: Receiver, seedream_sandbox: Any, record_hostile: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers, body = signed_delivery("msg_bad_length")
    sock = receiver.connect()
    sock.sendall(b"POST /replicate HTTP/1.1\r\nHost: r\r\nContent-Length: " + value + b"\r\n"
                 + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
                 + b"\r\n" + body + b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")
    with caplog.at_level(logging.WARNING):
        raw = read_until_closed(sock)
    assert statuses(raw) == [400]  # one answer; the bytes after it were never a request
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert httpx.get(f"http://{receiver.host}:{receiver.port}/healthz",
                     timeout=BOUND).status_code == 200
    assert receiver.published == []
    record_hostile(
        f"a webhook with Content-Length: {value[:12].decode('utf-8', 'replace')!r}"
        f"{'...' if len(value) > 12 else ''} ({len(value)} bytes)",
        "400 and the connection closed; no traceback, the server keeps serving",
        created=len(seedream_sandbox.predictions()),
        internal_requests=len(receiver.published))


SMUGGLED = b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n"
UNREAD = {
    "POST to another path": (b"POST /other HTTP/1.1\r\nHost: r\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED, 404),
    "GET with a body": (b"GET /replicate HTTP/1.1\r\nHost: r\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED, 405),
    "chunked, no Content-Length (411)": (
        b"POST /replicate HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n", 411),
    "a body over 1 MiB (413)": (
        b"POST /replicate HTTP/1.1\r\nHost: r\r\nContent-Length: 2000000\r\n\r\n" + SMUGGLED,
        413),
}


@pytest.mark.parametrize("case", list(UNREAD))
def test_a_body_left_unread_is_never_parsed_as_a_second_request(
    case: str, receiver: Receiver, seedream_sandbox: Any, record_hostile: Any,
) -> None:
    request, expected = UNREAD[case]
    sock = receiver.connect()
    sock.sendall(request)
    raw = read_until_closed(sock)
    assert statuses(raw) == [expected]  # the smuggled GET /healthz was never answered
    assert b'"status":"ok"' not in raw
    assert receiver.published == []
    record_hostile(
        f"a webhook request whose body hides a second request: {case}",
        f"{expected} with Connection: close; the hidden request never parsed",
        created=len(seedream_sandbox.predictions()),
        internal_requests=len(receiver.published))


def test_a_framed_body_is_consumed_and_the_next_request_served(
    receiver: Receiver, seedream_sandbox: Any, record_hostile: Any,
) -> None:
    sock = receiver.connect()
    unsigned = SMUGGLED  # a body that looks like a request, correctly framed
    sock.sendall(b"POST /replicate HTTP/1.1\r\nHost: r\r\nContent-Length: %d\r\n\r\n"
                 % len(unsigned) + unsigned
                 + b"GET /healthz HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
    raw = read_until_closed(sock)
    assert statuses(raw) == [400, 200]  # the body refused as unsigned, then the real GET
    assert receiver.published == []
    record_hostile(
        "an unsigned webhook whose body is an HTTP request, then a real request on the "
        "same connection",
        "400 for the body (read whole, as framed), 200 for the next request: exactly two answers",
        created=len(seedream_sandbox.predictions()),
        internal_requests=len(receiver.published))


def test_replays_tampering_and_stale_deliveries_are_refused_a_signed_one_accepted(
    receiver: Receiver, seedream_sandbox: Any, record_hostile: Any,
) -> None:
    headers, body = signed_delivery("msg_once")

    def post(content: bytes, extra: dict[str, str]) -> httpx.Response:
        return httpx.post(receiver.url, content=content, headers=extra, timeout=BOUND)

    first = post(body, headers)
    assert (first.status_code, first.json()["result"]) == (200, "accepted")
    answers = [post(body, headers) for _ in range(5)]
    assert [(a.status_code, a.json()["result"]) for a in answers] == [(200, "duplicate")] * 5
    assert post(body.replace(b"succeeded", b"failed"), headers).status_code == 401
    stale = {**headers, "webhook-timestamp": str(int(time.time()) - 3600)}
    stale["webhook-signature"] = sign_delivery(SECRET, "msg_stale", int(stale["webhook-timestamp"]),
                                               body)
    stale["webhook-id"] = "msg_stale"
    assert post(body, stale).status_code == 401
    assert post(body, {"content-type": "application/json"}).status_code == 400
    assert len(receiver.published) == 1
    assert receiver.published[0].payload["webhook_id"] == "msg_once"
    record_hostile(
        "a signed webhook replayed 5 times, tampered, re-signed an hour old, unsigned",
        "the first 200 accepted (one event); replays 200 duplicate with no event; tampered "
        "and stale 401, unsigned 400",
        created=len(seedream_sandbox.predictions()),
        internal_requests=len(receiver.published) - 1)
