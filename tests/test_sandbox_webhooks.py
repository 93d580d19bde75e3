"""Webhooks: signed like Replicate's, filtered by event, retried, delivered in the background."""

# The fixtures are imported (F401) and then requested by name (F811) until the
# `pytest11` entry point registers prefect_seedream.sandbox.pytest_plugin for the whole suite.
# ruff: noqa: F811

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from replicate.webhook import Webhooks, WebhookSigningSecret

from prefect_seedream.sandbox.pytest_plugin import (  # noqa: F401
    close_client,
    seedream_client,
    seedream_sandbox,
    seedream_sandbox_server,
)
from prefect_seedream.sandbox.webhooks import sign

MODEL = "bytedance/seedream-4"
TEXT = {"prompt": "a red fox in snow", "aspect_ratio": "1:1", "size": "1K"}


class Receiver:
    """A webhook endpoint that records deliveries and answers the queued statuses."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], str]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()},
                                            body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
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

    def bodies(self) -> list[dict]:
        return [json.loads(body) for _, body in self.deliveries]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _verify(secret: str, headers: dict[str, str], body: str) -> None:
    Webhooks.validate(headers=headers, body=body, secret=WebhookSigningSecret(key=secret),
                      tolerance=300)


def _create_and_settle(sandbox, client, **params):
    prediction = client.models.predictions.create(model=MODEL, input=TEXT, wait=True, **params)
    assert sandbox.wait_for_webhooks(timeout=10)
    return prediction


def test_default_filter_delivers_signed_final_prediction(seedream_sandbox, seedream_client,
                                                         receiver):
    prediction = _create_and_settle(seedream_sandbox, seedream_client, webhook=receiver.url)

    assert receiver.deliveries, "no webhook arrived"
    for headers, body in receiver.deliveries:
        _verify(seedream_sandbox.webhook_secret, headers, body)
        assert headers["content-type"] == "application/json"
    final = receiver.bodies()[-1]
    assert final["id"] == prediction.id
    assert final["status"] == "succeeded"
    assert final["output"] == prediction.output
    assert final == seedream_client._request("GET", f"/v1/predictions/{prediction.id}").json()
    assert all(b["status"] == "succeeded" for b in receiver.bodies())
    counters = seedream_sandbox.counters()
    assert counters["webhook_deliveries"] == len(receiver.deliveries)
    assert counters["per_prediction"][prediction.id]["webhook_deliveries"] == len(
        receiver.deliveries)


def test_start_and_completed_filter(seedream_sandbox, seedream_client, receiver):
    seedream_sandbox.configure(queue_seconds=0.2, run_seconds=0.1)

    _create_and_settle(seedream_sandbox, seedream_client, webhook=receiver.url,
                       webhook_events_filter=["start", "completed"])

    statuses = [b["status"] for b in receiver.bodies()]
    assert statuses == ["starting", "succeeded"]


def test_logs_filter_follows_the_run(seedream_sandbox, seedream_client, receiver):
    seedream_sandbox.configure(queue_seconds=0.2, run_seconds=0.6)

    _create_and_settle(seedream_sandbox, seedream_client, webhook=receiver.url,
                       webhook_events_filter=["logs"])

    bodies = receiver.bodies()
    assert [b["status"] for b in bodies] == ["processing", "succeeded"]
    assert "Generating 1024x1024 image" in bodies[0]["logs"]


def test_completed_fires_for_failed_predictions(seedream_sandbox, seedream_client, receiver):
    seedream_sandbox.faults.interrupt_predictions(1)

    _create_and_settle(seedream_sandbox, seedream_client, webhook=receiver.url,
                       webhook_events_filter=["completed"])

    assert [b["status"] for b in receiver.bodies()] == ["failed"]


def test_failed_deliveries_are_retried_with_the_same_id(seedream_sandbox, seedream_client,
                                                        receiver):
    receiver.statuses = [500, 503]

    _create_and_settle(seedream_sandbox, seedream_client, webhook=receiver.url,
                       webhook_events_filter=["completed"])

    ids = {headers["webhook-id"] for headers, _ in receiver.deliveries}
    assert len(receiver.deliveries) == 3
    assert len(ids) == 1
    for headers, body in receiver.deliveries:
        _verify(seedream_sandbox.webhook_secret, headers, body)
    counters = seedream_sandbox.counters()
    assert (counters["webhook_deliveries"], counters["webhook_failures"]) == (1, 2)


def test_unreachable_receiver_is_given_up_without_blocking(seedream_sandbox, seedream_client):
    seedream_sandbox.configure(webhook_backoff_seconds=0.01)

    prediction = _create_and_settle(seedream_sandbox, seedream_client,
                                    webhook="http://127.0.0.1:9/hook",
                                    webhook_events_filter=["completed"])

    counters = seedream_sandbox.counters()
    assert prediction.status == "succeeded"
    assert counters["webhook_failures"] == 3
    assert counters["webhook_given_up"] == 1
    assert counters["webhook_deliveries"] == 0


def test_signature_is_replicate_compatible():
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(time.time()))}
    headers["webhook-signature"] = sign(secret, "msg_1", int(headers["webhook-timestamp"]), "{}")

    _verify(secret, headers, "{}")
    with pytest.raises(ValueError):
        _verify(secret, headers, '{"tampered": true}')
