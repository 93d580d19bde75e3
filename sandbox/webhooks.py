"""Webhook signing and delivery, like Replicate's (Standard Webhooks headers, retries).

Deliveries run on a few worker threads so they never block the API. Messages of one
prediction always go to the same worker, so they arrive in order.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import queue
import secrets
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import httpx

WEBHOOK_EVENTS = frozenset({"start", "output", "logs", "completed"})
DEFAULT_EVENTS = frozenset({"output", "completed"})


def new_secret() -> str:
    """A fresh signing secret, `whsec_` plus 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header value for one delivery.

    Args:
        secret: The `whsec_...` secret.
        message_id: The `webhook-id` header.
        timestamp: The `webhook-timestamp` header (unix seconds).
        body: The raw request body.

    Returns:
        `v1,<base64 HMAC-SHA256>`.
    """
    key = base64.b64decode(secret.split("_", 1)[1])
    content = f"{message_id}.{timestamp}.{body}".encode()
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@dataclass(frozen=True)
class WebhookMessage:
    """One message to deliver (retries reuse its `message_id`).

    Attributes:
        prediction_id: The prediction the body describes.
        url: Receiver URL.
        body: JSON body, exactly as signed and sent.
        message_id: The `webhook-id` header.
        generation: Sandbox generation; messages from before a reset are dropped.
    """

    prediction_id: str
    url: str
    body: str
    message_id: str
    generation: int


Settings = Callable[[], tuple[str, int, float, float]]
Report = Callable[[str, str, int], None]


class WebhookDispatcher:
    """Delivers messages on background threads, retrying failures with backoff.

    Args:
        settings: Returns (secret, attempts, backoff seconds, timeout seconds) at send time.
        report: Called as `report(event, prediction_id, generation)` with event
            `delivered`, `failed` (one attempt) or `given_up` (all attempts failed).
        workers: Worker threads.
    """

    def __init__(self, settings: Settings, report: Report, workers: int = 4) -> None:
        self._settings = settings
        self._report = report
        self._queues: list[queue.Queue[WebhookMessage | None]] = [
            queue.Queue() for _ in range(workers)
        ]
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._pending = 0

    def start(self) -> None:
        """Start the worker threads."""
        for n, q in enumerate(self._queues):
            thread = threading.Thread(target=self._run, args=(q,), name=f"sandbox-webhook-{n}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop the workers after their current attempt."""
        self._stopping.set()
        for q in self._queues:
            q.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def submit(self, message: WebhookMessage) -> None:
        """Queue a message for delivery."""
        with self._idle:
            self._pending += 1
        shard = zlib.crc32(message.prediction_id.encode()) % len(self._queues)
        self._queues[shard].put(message)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no message is queued or being delivered; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def _run(self, q: queue.Queue[WebhookMessage | None]) -> None:
        with httpx.Client(trust_env=False, follow_redirects=False) as client:
            while True:
                message = q.get()
                if message is None:
                    return
                try:
                    self._deliver(client, message)
                finally:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()

    def _deliver(self, client: httpx.Client, message: WebhookMessage) -> None:
        secret, attempts, backoff, timeout = self._settings()
        for attempt in range(attempts):
            if self._stopping.is_set():
                return
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "user-agent": "replicate-sandbox-webhooks/1.0",
                "webhook-id": message.message_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(secret, message.message_id, timestamp, message.body),
            }
            try:
                response = client.post(message.url, content=message.body.encode(),
                                       headers=headers, timeout=timeout)
                ok = response.is_success
            except httpx.HTTPError:
                ok = False
            if ok:
                self._report("delivered", message.prediction_id, message.generation)
                return
            self._report("failed", message.prediction_id, message.generation)
            if attempt + 1 < attempts:
                self._stopping.wait(backoff * (2**attempt))
        self._report("given_up", message.prediction_id, message.generation)
