"""Webhook verification (`prefect_seedream.tasks.webhooks`) against the sandbox's real signed
deliveries, and the receiver (`prefect_seedream.deployments.webhook_receiver`) over real HTTP;
tampered, unsigned, stale and replayed deliveries are refused."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from prefect_seedream.deployments.webhook_receiver import (
    WebhookReceiver,
    completed_event,
    make_server,
)
from prefect_seedream.tasks.webhooks import (
    MemoryReplayGuard,
    WebhookMalformed,
    WebhookRejected,
    WebhookReplayed,
    WebhookSignatureInvalid,
    WebhookTimestampInvalid,
    WebhookVerifier,
    decode_secret,
    sign_delivery,
    verify_webhook,
)

MODEL_URL = "/v1/models/bytedance/seedream-4/predictions"


class Capture:
    """Records raw deliveries exactly as they arrive."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
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
                                       kwargs={"poll_interval": 0.05})
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def settle(sandbox: Any, count: Any, expected: int) -> None:
    """Wait (at most 10 s) until `count()` reaches `expected` and no delivery is in flight."""
    deadline = time.monotonic() + 10
    while count() < expected and time.monotonic() < deadline:
        sandbox.wait_for_webhooks(timeout=0.5)
        time.sleep(0.05)
    assert sandbox.wait_for_webhooks(timeout=5)


def create(sandbox: Any, webhook: str, events: list[str]) -> str:
    response = httpx.post(
        sandbox.base_url + MODEL_URL, headers={"Authorization": f"Bearer {sandbox.api_token}"},
        json={"input": {"prompt": "a red fox in snow", "aspect_ratio": "1:1", "size": "1K"},
              "webhook": webhook, "webhook_events_filter": events}, timeout=10)
    response.raise_for_status()
    return str(response.json()["id"])


@pytest.fixture
def deliveries(seedream_sandbox: Any) -> tuple[str, list[tuple[dict[str, str], bytes]]]:
    """(prediction id, its `start` and `completed` deliveries as the sandbox sent them)."""
    capture = Capture()
    try:
        prediction_id = create(seedream_sandbox, capture.url, ["start", "completed"])
        settle(seedream_sandbox, lambda: len(capture.deliveries), 2)
    finally:
        capture.close()
    assert len(capture.deliveries) == 2
    return prediction_id, capture.deliveries


def signed(headers: dict[str, str]) -> dict[str, str]:
    return {k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}


def test_real_deliveries_verify_and_carry_the_prediction(
    deliveries: tuple[str, list[tuple[dict[str, str], bytes]]], seedream_sandbox: Any,
) -> None:
    prediction_id, sent = deliveries
    verifier = WebhookVerifier(seedream_sandbox.webhook_secret)
    statuses = []
    for headers, body in sent:
        delivery = verifier.verify(headers, body)  # bytes, mixed-case header lookup
        assert delivery.webhook_id == headers["webhook-id"]
        assert delivery.prediction["id"] == prediction_id
        statuses.append(delivery.prediction["status"])
    assert statuses[-1] == "succeeded"
    # The body may also be given as text.
    headers, body = sent[-1]
    assert verify_webhook(headers, body.decode(), seedream_sandbox.webhook_secret).body == (
        body.decode())


def test_tampered_unsigned_wrong_secret_and_stale_deliveries_are_refused(
    deliveries: tuple[str, list[tuple[dict[str, str], bytes]]], seedream_sandbox: Any,
) -> None:
    _, sent = deliveries
    headers, body = sent[-1]
    secret = seedream_sandbox.webhook_secret
    tampered = body.replace(b'"succeeded"', b'"failed"')
    assert tampered != body
    with pytest.raises(WebhookSignatureInvalid) as caught:
        verify_webhook(headers, tampered, secret)
    assert caught.value.status == 401 and caught.value.prediction_id is None
    with pytest.raises(WebhookMalformed) as unsigned:
        verify_webhook({"content-type": "application/json"}, body, secret)
    assert unsigned.value.status == 400
    with pytest.raises(WebhookSignatureInvalid):
        verify_webhook(headers, body, sign_secret := "whsec_" + "QUJD" * 8)
    assert sign_secret != secret
    sent_at = int(headers["webhook-timestamp"])
    for skew in (301, -301):
        with pytest.raises(WebhookTimestampInvalid):
            verify_webhook(headers, body, secret, clock=lambda s=skew: sent_at + s)
    verify_webhook(headers, body, secret, clock=lambda: sent_at + 299)
    verify_webhook(headers, body, secret, tolerance_seconds=None, clock=lambda: sent_at + 10**6)


def test_one_matching_v1_signature_among_several_is_enough(seedream_sandbox: Any) -> None:
    secret = seedream_sandbox.webhook_secret
    body = json.dumps({"id": "p1", "status": "succeeded"})
    good = sign_delivery(secret, "msg_1", 1_700_000_000, body)
    headers = {"Webhook-Id": "msg_1", "Webhook-Timestamp": "1700000000",
               "Webhook-Signature": f"v1,{'A' * 44} v1a,xyz {good}"}
    assert verify_webhook(headers, body, secret, clock=lambda: 1_700_000_000).webhook_id == "msg_1"
    only_other_scheme = {**headers, "Webhook-Signature": good.replace("v1,", "v2,")}
    with pytest.raises(WebhookMalformed):
        verify_webhook(only_other_scheme, body, secret, clock=lambda: 1_700_000_000)


def test_replays_are_refused_until_released(
    deliveries: tuple[str, list[tuple[dict[str, str], bytes]]], seedream_sandbox: Any,
) -> None:
    _, sent = deliveries
    headers, body = sent[-1]
    verifier = WebhookVerifier(seedream_sandbox.webhook_secret)
    delivery = verifier.verify(headers, body)
    with pytest.raises(WebhookReplayed) as caught:
        verifier.verify(headers, body)
    assert caught.value.status == 200  # Replicate's retry of a handled message: stop retrying
    verifier.release(delivery)
    assert verifier.verify(headers, body).webhook_id == delivery.webhook_id
    # A forged request never uses up an id: it is refused before the guard is asked.
    other = WebhookVerifier(seedream_sandbox.webhook_secret)
    with pytest.raises(WebhookSignatureInvalid):
        other.verify(headers, body + b" ")
    other.verify(headers, body)


def test_memory_replay_guard_is_bounded_and_forgets_old_ids() -> None:
    now = [0.0]
    guard = MemoryReplayGuard(max_entries=2, ttl_seconds=10, clock=lambda: now[0])
    assert guard.claim("a", 0) and guard.claim("b", 0) and not guard.claim("a", 0)
    assert guard.claim("c", 0) and len(guard) == 2      # "a" dropped: the oldest
    assert guard.claim("a", 0) and not guard.claim("c", 0)
    now[0] = 11.0
    assert guard.claim("c", 0)                          # expired ids are forgotten


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_not base64!", "   "])
def test_a_malformed_secret_is_a_configuration_error(secret: str) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        decode_secret(secret)


def test_rejections_are_seedream_errors() -> None:
    for leaf in (WebhookMalformed, WebhookSignatureInvalid, WebhookTimestampInvalid,
                 WebhookReplayed):
        assert issubclass(leaf, WebhookRejected)


# ---- the receiver ----------------------------------------------------------------------------


@pytest.fixture
def receiver(seedream_sandbox: Any) -> Any:
    published: list[Any] = []
    verifier = WebhookVerifier(seedream_sandbox.webhook_secret)
    app = WebhookReceiver(verifier, publish=published.append)
    server = make_server(app, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    app.published = published  # type: ignore[attr-defined]
    app.url = f"http://127.0.0.1:{server.server_address[1]}/replicate"  # type: ignore[attr-defined]
    yield app
    server.shutdown()
    server.server_close()
    thread.join()


def test_receiver_turns_real_deliveries_into_one_completed_event(
    receiver: Any, seedream_sandbox: Any,
) -> None:
    prediction_id = create(seedream_sandbox, receiver.url, ["start", "completed"])
    settle(seedream_sandbox, lambda: seedream_sandbox.counters()["webhook_deliveries"], 2)
    counters = seedream_sandbox.counters()
    assert (counters["webhook_deliveries"], counters["webhook_failures"]) == (2, 0)
    (event,) = receiver.published  # `start` was answered 200 and ignored
    assert event.event == "replicate.prediction.completed"
    assert event.resource.id == f"replicate.prediction.{prediction_id}"
    assert event.resource["replicate.prediction.status"] == "succeeded"
    assert event.payload["prediction_id"] == prediction_id
    assert "http" not in json.dumps(event.payload)  # no output URL leaves the receiver


def test_receiver_answers_bad_deliveries_without_publishing(
    receiver: Any, deliveries: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    _, sent = deliveries
    headers, body = sent[-1]

    def post(content: bytes, extra: dict[str, str]) -> httpx.Response:
        return httpx.post(receiver.url, content=content, timeout=5,
                          headers={"content-type": "application/json", **extra})

    assert post(body, {}).status_code == 400
    assert post(body.replace(b"succeeded", b"failed"), signed(headers)).status_code == 401
    assert httpx.post(receiver.url.replace("/replicate", "/other"), content=body,
                      headers=signed(headers)).status_code == 404
    assert receiver.published == []
    assert post(body, signed(headers)).json()["result"] == "accepted"
    assert post(body, signed(headers)).json()["result"] == "duplicate"
    assert len(receiver.published) == 1


def test_receiver_answers_503_when_prefect_is_down_and_accepts_the_retry(
    deliveries: tuple[str, list[tuple[dict[str, str], bytes]]], seedream_sandbox: Any,
) -> None:
    _, sent = deliveries
    headers, body = sent[-1]
    verifier = WebhookVerifier(seedream_sandbox.webhook_secret)

    def down(event: Any) -> None:
        raise ConnectionError("prefect is down")

    assert WebhookReceiver(verifier, publish=down).handle(headers, body)[0] == 503
    published: list[Any] = []
    status, answer = WebhookReceiver(verifier, publish=published.append).handle(headers, body)
    assert (status, answer["result"]) == (200, "accepted")
    # The same message always makes the same event id, so a double emit is recognisable.
    again = completed_event(json.loads(body), verifier.check_signature(headers, body))
    assert published[0].id == again.id
