"""A small HTTP receiver that turns Replicate's signed webhooks into Prefect events.

    REPLICATE_WEBHOOK_SECRET=whsec_... \
        python -m prefect_seedream.deployments.webhook_receiver --port 8788
    python -m prefect_seedream.deployments.webhook_receiver --port 8788 \
        --secret-block replicate-webhook-secret

For self-hosted Prefect servers (on Prefect Cloud a Cloud webhook can do the same; see README).
Each `POST /replicate` is checked with `prefect_seedream.tasks.webhooks` (signature, timestamp
within 300 s, `webhook-id` not seen before); a completed prediction becomes one
`replicate.prediction.completed` event on the Prefect API the process is configured for
(`PREFECT_API_URL`), carrying only the prediction's id, status, model and timings: never its input
or output URLs.

Answers: 200 once the event is accepted by Prefect (or for a repeated `webhook-id`, or a
non-final status, which are ignored), 400 for a request without Replicate's headers or with a
body that is not a prediction, 401 for a bad signature or stale timestamp, 503 when Prefect
cannot take the event (so Replicate retries). Put it behind HTTPS: Replicate only calls https URLs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prefect_seedream.flows.events import PREDICTION_COMPLETED, replicate_resource_id
from prefect_seedream.tasks.replicate_client.prediction import PredictionStatus
from prefect_seedream.tasks.webhooks import (
    WebhookDelivery,
    WebhookMalformed,
    WebhookRejected,
    WebhookReplayed,
    WebhookVerifier,
)

if TYPE_CHECKING:
    from prefect.events import Event

logger = logging.getLogger("prefect_seedream.webhook_receiver")

MAX_BODY_BYTES = 1024 * 1024
_EVENT_NAMESPACE = uuid.UUID("5d0f5c1e-8e53-4d0c-9b0a-6f1d2a4c7e11")


def completed_event(prediction: Mapping[str, Any], delivery: WebhookDelivery) -> Event:
    """The `replicate.prediction.completed` event for a verified delivery (pure).

    Its id derives from the `webhook-id`, so the same message always makes the same event.
    """
    from prefect.events import Event

    prediction_id = str(prediction["id"])
    status = str(prediction.get("status"))
    metrics = prediction.get("metrics") if isinstance(prediction.get("metrics"), dict) else {}
    error = prediction.get("error")
    return Event.model_validate({
        "event": PREDICTION_COMPLETED,
        "id": uuid.uuid5(_EVENT_NAMESPACE, delivery.webhook_id),
        "resource": {
            "prefect.resource.id": replicate_resource_id(prediction_id),
            "prefect.resource.name": prediction_id,
            "replicate.prediction.status": status,
            "replicate.model": str(prediction.get("model") or ""),
        },
        "payload": {
            "prediction_id": prediction_id,
            "status": status,
            "model": prediction.get("model"),
            "error": str(error)[:500] if error else None,
            "created_at": prediction.get("created_at"),
            "completed_at": prediction.get("completed_at"),
            "predict_time": (metrics or {}).get("predict_time"),
            "webhook_id": delivery.webhook_id,
        },
    })


def publish_to_prefect(event: Event) -> None:
    """Send `event` to the Prefect API and return once it was accepted (raises otherwise)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.request("POST", "/events", json=[event.model_dump(mode="json")])


class WebhookReceiver:
    """The receiver's logic, without HTTP: `handle(headers, body) -> (status, answer)`.

    Args:
        verifier: Checks signatures and remembers accepted ids.
        publish: Sends an event and raises if it was not accepted.
    """

    def __init__(self, verifier: WebhookVerifier,
                 publish: Callable[[Event], None] = publish_to_prefect) -> None:
        self.verifier = verifier
        self.publish = publish

    def handle(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            delivery = self.verifier.verify(headers, body)
        except WebhookReplayed:
            return 200, {"result": "duplicate"}
        except WebhookRejected as exc:
            logger.warning("Rejected a webhook delivery: %s", type(exc).__name__)
            return exc.status, {"error": type(exc).__name__}
        try:
            prediction = delivery.prediction
        except (ValueError, WebhookMalformed):
            logger.warning("Webhook %s: the body is not a prediction", delivery.webhook_id)
            return 400, {"error": "WebhookMalformed"}
        try:
            final = PredictionStatus(prediction.get("status")).is_terminal
        except ValueError:
            final = False
        if not final:
            return 200, {"result": "ignored", "status": prediction.get("status")}
        event = completed_event(prediction, delivery)
        try:
            self.publish(event)
        except Exception as exc:
            self.verifier.release(delivery)  # let Replicate's retry in
            logger.error("Webhook %s: Prefect did not take the event (%s); answering 503",
                         delivery.webhook_id, type(exc).__name__)
            return 503, {"error": "PrefectUnavailable"}
        logger.info("Prediction %s %s: emitted %s", prediction["id"], prediction.get("status"),
                    PREDICTION_COMPLETED)
        return 200, {"result": "accepted", "event_id": str(event.id)}


def make_server(receiver: WebhookReceiver, host: str = "127.0.0.1", port: int = 0,
                path: str = "/replicate") -> ThreadingHTTPServer:
    """An HTTP server for `receiver` (POST `path`, GET `/healthz`); call `serve_forever()`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "SeedreamWebhookReceiver/1.0"

        def _answer(self, status: int, answer: dict[str, Any]) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._answer(200, {"status": "ok"})
            else:
                self._answer(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != path:
                self._answer(404, {"error": "not found"})
                return
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self._answer(411, {"error": "Content-Length required"})
                return
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True
                self._answer(413, {"error": "body too large"})
                return
            body = self.rfile.read(int(length))
            status, answer = receiver.handle(dict(self.headers.items()), body)
            self._answer(status, answer)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def load_secret(secret_block: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The signing secret from a Prefect `Secret` block, else `$REPLICATE_WEBHOOK_SECRET`."""
    if secret_block:
        from prefect.blocks.system import Secret

        return str(Secret.load(secret_block, _sync=True).get())  # type: ignore[call-arg,union-attr]
    value = (environ if environ is not None else os.environ).get("REPLICATE_WEBHOOK_SECRET", "")
    if not value.strip():
        raise SystemExit("no webhook secret: pass --secret-block NAME or set "
                         "REPLICATE_WEBHOOK_SECRET (from GET /v1/webhooks/default/secret)")
    return value.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prefect_seedream.deployments.webhook_receiver",
        description="Verify Replicate webhooks and emit replicate.prediction.completed events.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8788)
    parser.add_argument("--path", default="/replicate")
    parser.add_argument("--secret-block", help="name of a Prefect Secret block with the secret")
    parser.add_argument("--tolerance", type=float, default=300.0,
                        help="largest accepted clock distance of a delivery, seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    verifier = WebhookVerifier(load_secret(args.secret_block), tolerance_seconds=args.tolerance)
    server = make_server(WebhookReceiver(verifier), args.host, args.port, args.path)
    host, port = server.server_address[:2]
    print(f"Receiving Replicate webhooks on http://{host!s}:{port}{args.path}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "webhook-receiver"
    sys.exit(main())
