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
body that is not a prediction (or a malformed Content-Length), 401 for a bad signature or stale
timestamp, 411/413 for a missing Content-Length or a body over 1 MiB, 408 for a body that does
not arrive within the read timeout, 503 when Prefect cannot take the event or the server is at
its connection limit (so Replicate retries). Put it behind HTTPS: Replicate only calls https URLs.

The HTTP stack is uvicorn + starlette (`prefect_seedream.deployments.webhook_server`): header
and body deadlines, bounded connections, a 2048 listen backlog, strict Content-Length parsing.

One receiver process is enough and holds the replay guard: it serves connections on an event
loop (a waiting client costs a socket, not a thread) and each delivery is one HMAC and one POST
to Prefect. Replicas behind a load balancer are safe too: the event id derives from the
`webhook-id`, and Prefect stores one event per id and its triggers skip an id they have seen,
so a delivery accepted by two replicas still runs the deployment once. To also answer
"duplicate" across replicas, give `WebhookVerifier` a shared `ReplayGuard` (e.g. on Redis).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from prefect_seedream.deployments.webhook_server import ServerLimits, WebhookServer, make_app
from prefect_seedream.flows.events import PREDICTION_COMPLETED, replicate_resource_id
from prefect_seedream.tasks.redaction import install_redaction
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
        import prefect.events  # noqa: F401  # now, not in the first delivery (~2 s to import)

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
                path: str = "/replicate", limits: ServerLimits | None = None) -> WebhookServer:
    """A bound uvicorn server for `receiver` (POST `path`, GET `/healthz`).

    Call `serve_forever()` (blocks) or `start()` (a daemon thread), then `shutdown()` and
    `server_close()`; see `prefect_seedream.deployments.webhook_server` for the limits.
    """
    limits = limits or ServerLimits(max_body_bytes=MAX_BODY_BYTES)
    return WebhookServer(make_app(receiver, path, limits), host, port, limits)


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
    parser.add_argument("--max-connections", type=int, default=ServerLimits.max_connections,
                        help="connections served at once; past it requests get 503")
    parser.add_argument("--read-timeout", type=float, default=ServerLimits.read_timeout,
                        help="seconds a request has for its headers, and again for its body")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    install_redaction()
    verifier = WebhookVerifier(load_secret(args.secret_block), tolerance_seconds=args.tolerance)
    limits = ServerLimits(max_body_bytes=MAX_BODY_BYTES, header_timeout=args.read_timeout,
                          read_timeout=args.read_timeout, max_connections=args.max_connections)
    server = make_server(WebhookReceiver(verifier), args.host, args.port, args.path, limits)
    host, port = server.server_address
    print(f"Receiving Replicate webhooks on http://{host!s}:{port}{args.path}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "webhook-receiver"
    sys.exit(main())
