"""Verify Replicate's webhook deliveries: signature, timestamp window and replays.

Replicate signs each delivery the Standard Webhooks way: `webhook-signature` holds one or more
space-separated `v1,<base64 HMAC-SHA256>` entries over `f"{webhook-id}.{webhook-timestamp}.{body}"`,
keyed with the base64 part of the account's `whsec_...` secret (`GET /v1/webhooks/default/secret`).
The body must be the raw bytes as received: re-serialised JSON does not verify.

Pure code apart from the clock and the replay guard, both injectable. Every rejection is a typed
`WebhookRejected`; nothing here logs, and no error message quotes a signature or the secret.

Example:
    ```python
    from prefect_seedream.tasks.webhooks import WebhookRejected, WebhookVerifier

    verifier = WebhookVerifier("whsec_...")          # tolerance 300 s, in-memory replay guard
    try:
        delivery = verifier.verify(request_headers, raw_body)
    except WebhookRejected as exc:
        ...                                           # answer exc.status (400 or 401)
    print(delivery.prediction["id"], delivery.prediction["status"])
    ```
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prefect_seedream.tasks.errors import SeedreamError

#: Standard Webhooks' (and most receivers') window: five minutes either way.
DEFAULT_TOLERANCE_SECONDS = 300.0
SECRET_PREFIX = "whsec_"


class WebhookRejected(SeedreamError):
    """A delivery was refused: answer `status` and do nothing else with it.

    `prediction_id` stays None: nothing in a rejected body can be trusted.
    """

    #: HTTP status a receiver should answer.
    status = 401


class WebhookMalformed(WebhookRejected):
    """A `webhook-*` header is missing or unreadable (an unsigned request, not Replicate's)."""

    status = 400


class WebhookSignatureInvalid(WebhookRejected):
    """No `v1` signature matches: a tampered body, another sender, or the wrong secret."""


class WebhookTimestampInvalid(WebhookRejected):
    """The signed timestamp is outside the tolerance window (a stale or replayed delivery)."""


class WebhookReplayed(WebhookRejected):
    """This `webhook-id` was already accepted: a retry after a lost answer, or a replay.

    Correctly signed, so a receiver answers 2xx (Replicate stops retrying) and does nothing.
    """

    status = 200


class ReplayGuard(Protocol):
    """Remembers accepted `webhook-id`s. Share one store between receiver replicas (Redis, ...)."""

    def claim(self, webhook_id: str, timestamp: float) -> bool:
        """Record `webhook_id`; False if it was already recorded (atomically)."""
        ...

    def release(self, webhook_id: str) -> None:
        """Forget `webhook_id` (the delivery could not be handled; let its retry in)."""
        ...


class MemoryReplayGuard:
    """A bounded, thread-safe, in-process `ReplayGuard`.

    Ids are kept for `ttl_seconds` (twice the tolerance is enough: an older timestamp is refused
    anyway) and at most `max_entries` of them, oldest dropped first.
    """

    def __init__(self, max_entries: int = 10_000,
                 ttl_seconds: float = 2 * DEFAULT_TOLERANCE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max, self._ttl, self._clock = max_entries, ttl_seconds, clock
        self._lock = threading.Lock()

    def claim(self, webhook_id: str, timestamp: float) -> bool:
        now = self._clock()
        with self._lock:
            while self._seen:  # forget expired ids (the oldest come first)
                oldest, seen_at = next(iter(self._seen.items()))
                if now - seen_at <= self._ttl:
                    break
                del self._seen[oldest]
            if webhook_id in self._seen:
                return False
            while len(self._seen) >= self._max:  # full: drop the oldest
                self._seen.popitem(last=False)
            self._seen[webhook_id] = now
            return True

    def release(self, webhook_id: str) -> None:
        with self._lock:
            self._seen.pop(webhook_id, None)

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(frozen=True)
class WebhookDelivery:
    """A verified delivery.

    Attributes:
        webhook_id: The `webhook-id` header (the same across Replicate's retries of one message).
        timestamp: The signed `webhook-timestamp`, unix seconds.
        body: The raw body as text.
    """

    webhook_id: str
    timestamp: int
    body: str

    @property
    def prediction(self) -> dict[str, Any]:
        """The body as JSON: the prediction, as `GET /v1/predictions/{id}` returns it."""
        data = json.loads(self.body)
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise WebhookMalformed("the webhook body is not a prediction object")
        return data


def decode_secret(secret: str) -> bytes:
    """The HMAC key in a `whsec_<base64>` secret (the prefix is optional).

    Raises:
        ValueError: The secret is empty or not base64; a configuration error, not a rejection.
    """
    text = secret.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ValueError("the webhook secret is not a 'whsec_<base64>' key; copy it from "
                         "GET /v1/webhooks/default/secret")
    return key


def expected_signature(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> bytes:
    """The raw HMAC-SHA256 digest Replicate sends (base64) for this delivery."""
    content = webhook_id.encode() + b"." + timestamp.encode() + b"." + body
    return hmac.new(key, content, hashlib.sha256).digest()


def sign_delivery(secret: str, webhook_id: str, timestamp: int, body: str | bytes) -> str:
    """A `webhook-signature` header value, `v1,<base64>`: for tests and local senders."""
    raw = body.encode() if isinstance(body, str) else body
    digest = expected_signature(decode_secret(secret), webhook_id, str(timestamp), raw)
    return "v1," + base64.b64encode(digest).decode()


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value.strip()
    raise WebhookMalformed(f"the {name} header is missing; is this a Replicate webhook?")


def _signatures(header: str) -> list[bytes]:
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded:
            continue  # other schemes may be added later; one valid v1 entry is enough
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


class WebhookVerifier:
    """Checks deliveries against one secret.

    Args:
        secret: The `whsec_...` signing secret.
        tolerance_seconds: Largest accepted distance between the signed timestamp and now;
            None turns the check off (not recommended: replays are then only caught by the guard).
        replay_guard: Where accepted ids are remembered; None disables replay checks.
        clock: Returns unix seconds (tests pass a fixed clock).
    """

    def __init__(self, secret: str, *, tolerance_seconds: float | None = DEFAULT_TOLERANCE_SECONDS,
                 replay_guard: ReplayGuard | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = decode_secret(secret)
        self.tolerance_seconds = tolerance_seconds
        self.replay_guard: ReplayGuard | None = (
            replay_guard if replay_guard is not None else MemoryReplayGuard()
        )
        self._clock = clock

    def check_signature(self, headers: Mapping[str, str], body: bytes | str) -> WebhookDelivery:
        """Signature and timestamp only (no replay check); returns the delivery.

        Raises:
            WebhookMalformed: A `webhook-*` header is missing or unreadable.
            WebhookSignatureInvalid: No `v1` signature matches the body.
            WebhookTimestampInvalid: The timestamp is outside the tolerance window.
        """
        raw = body.encode() if isinstance(body, str) else bytes(body)
        webhook_id = _header(headers, "webhook-id")
        stamp = _header(headers, "webhook-timestamp")
        signatures = _signatures(_header(headers, "webhook-signature"))
        if not webhook_id or not stamp.isdigit():
            raise WebhookMalformed("webhook-id or webhook-timestamp is unreadable")
        if not signatures:
            raise WebhookMalformed("webhook-signature holds no v1 signature")
        expected = expected_signature(self._key, webhook_id, stamp, raw)
        # Compare against every entry, so timing does not reveal which one matched.
        matched = False
        for candidate in signatures:
            matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            raise WebhookSignatureInvalid("the webhook signature does not match its body; "
                                          "check the signing secret")
        timestamp = int(stamp)
        if self.tolerance_seconds is not None:
            skew = self._clock() - timestamp
            if abs(skew) > self.tolerance_seconds:
                raise WebhookTimestampInvalid(
                    f"the webhook was signed {skew:+.0f}s from now, outside the "
                    f"{self.tolerance_seconds:.0f}s tolerance"
                )
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise WebhookMalformed("the webhook body is not UTF-8") from exc
        return WebhookDelivery(webhook_id=webhook_id, timestamp=timestamp, body=text)

    def verify(self, headers: Mapping[str, str], body: bytes | str) -> WebhookDelivery:
        """Check the signature and timestamp, then claim the `webhook-id` in the replay guard.

        A signed delivery is only claimed after its signature checks, so forged requests cannot
        use up ids. Call `release(delivery)` if it could not be handled.

        Raises:
            WebhookRejected: One of its leaves, each with the HTTP `status` to answer.
        """
        delivery = self.check_signature(headers, body)
        if self.replay_guard is not None and not self.replay_guard.claim(
            delivery.webhook_id, delivery.timestamp
        ):
            raise WebhookReplayed(f"webhook {delivery.webhook_id} was already accepted")
        return delivery

    def release(self, delivery: WebhookDelivery) -> None:
        """Let a retry of `delivery` in again (it was verified but could not be handled)."""
        if self.replay_guard is not None:
            self.replay_guard.release(delivery.webhook_id)


def verify_webhook(
    headers: Mapping[str, str], body: bytes | str, secret: str, *,
    tolerance_seconds: float | None = DEFAULT_TOLERANCE_SECONDS,
    replay_guard: ReplayGuard | None = None, clock: Callable[[], float] = time.time,
) -> WebhookDelivery:
    """One-shot `WebhookVerifier(...).verify(...)`; replays are checked only with a guard.

    Example:
        ```python
        from prefect_seedream.tasks.webhooks import verify_webhook

        delivery = verify_webhook(request.headers, request.body, secret="whsec_...")
        ```
    """
    verifier = WebhookVerifier(secret, tolerance_seconds=tolerance_seconds, clock=clock)
    verifier.replay_guard = replay_guard
    return verifier.verify(headers, body)


__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "MemoryReplayGuard",
    "ReplayGuard",
    "WebhookDelivery",
    "WebhookMalformed",
    "WebhookRejected",
    "WebhookReplayed",
    "WebhookSignatureInvalid",
    "WebhookTimestampInvalid",
    "WebhookVerifier",
    "decode_secret",
    "expected_signature",
    "sign_delivery",
    "verify_webhook",
]
