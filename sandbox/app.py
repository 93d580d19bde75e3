"""The sandbox core: its state, the request router, and the background ticker.

`SandboxApp` is independent of sockets: `handle(Request) -> Response`. The HTTP server in
`prefect_seedream.sandbox.server` only parses requests and writes responses.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from prefect_seedream.sandbox import admin_routes, api_routes, file_routes
from prefect_seedream.sandbox.config import SandboxConfig
from prefect_seedream.sandbox.counters import Counters
from prefect_seedream.sandbox.faults import Faults
from prefect_seedream.sandbox.http_types import Request, Response, problem
from prefect_seedream.sandbox.model_info import ModelCatalog
from prefect_seedream.sandbox.prediction_state import PredictionRecord
from prefect_seedream.sandbox.rate_limit import TokenBucket, throttled_detail
from prefect_seedream.sandbox.rendering import FileCache
from prefect_seedream.sandbox.store import PredictionStore
from prefect_seedream.sandbox.webhooks import WebhookDispatcher, WebhookMessage, new_secret

TICK_SECONDS = 0.02
_ID = r"([a-z0-9]+)"
# (method, pattern, route name for faults/counters, handler name in api_routes)
_V1_ROUTES: list[tuple[str, re.Pattern[str], str, str]] = [
    ("POST", re.compile(r"^/v1/models/([^/]+)/([^/]+)/predictions$"), "create", "create_for_model"),
    ("POST", re.compile(r"^/v1/predictions$"), "create", "create_for_version"),
    ("GET", re.compile(r"^/v1/predictions$"), "list", "list_predictions"),
    ("GET", re.compile(rf"^/v1/predictions/{_ID}$"), "get", "get_prediction"),
    ("POST", re.compile(rf"^/v1/predictions/{_ID}/cancel$"), "cancel", "cancel_prediction"),
    ("GET", re.compile(r"^/v1/account$"), "account", "get_account"),
    ("GET", re.compile(r"^/v1/webhooks/default/secret$"), "account", "get_webhook_secret"),
    ("GET", re.compile(r"^/v1/models/([^/]+)/([^/]+)$"), "models", "get_model"),
    ("GET", re.compile(r"^/v1/models/([^/]+)/([^/]+)/versions/([0-9a-f]{64})$"), "models",
     "get_version"),
]


class SandboxApp:
    """State and routing of one sandbox server.

    Args:
        api_token: The only bearer token accepted on /v1.
        config: Initial settings.
        clock: Unix-time source (tests of the state machine may pass a fake).
    """

    def __init__(
        self, api_token: str, config: SandboxConfig, clock: Callable[[], float] = time.time
    ) -> None:
        config.check()
        self.api_token = api_token
        self.config = config
        self.clock = clock
        self.base_url = "http://127.0.0.1"
        self.webhook_secret = new_secret()
        self.generation = 0
        self.store = PredictionStore(clock)
        self.counters = Counters()
        self.faults = Faults(self.expire, seed=config.seed)
        self.files = FileCache(config.file_cache_bytes)
        self.models = ModelCatalog()
        self.dispatcher = WebhookDispatcher(self._webhook_settings, self._webhook_report)
        self._lock = threading.Lock()
        self._tick_lock = threading.Lock()
        self._watch: dict[str, PredictionRecord] = {}
        self._buckets = self._new_buckets()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # Lifecycle and run-time control.

    def start(self) -> None:
        """Start the webhook workers and the ticker thread."""
        self._stop.clear()
        self.dispatcher.start()
        self._ticker = threading.Thread(target=self._tick_loop, name="sandbox-ticker",
                                        daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        """Stop the ticker and the webhook workers."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        self.dispatcher.stop()

    def configure(self, **changes: Any) -> SandboxConfig:
        """Change settings at run time; see `SandboxConfig` for the fields."""
        with self._lock:
            before, self.config = self.config, self.config.replace(**changes)
            if any(getattr(before, name) != getattr(self.config, name) for name in (
                "create_rate_per_minute", "other_rate_per_minute", "create_burst",
                "other_burst", "rate_limits",
            )):  # posting GET's answer back keeps the rate-limit history
                self._buckets = self._new_buckets()
            self.files.max_bytes = self.config.file_cache_bytes
            return self.config

    def reset(self) -> None:
        """Forget predictions, counters, faults, cached files and rate-limit history."""
        with self._lock:
            self.generation += 1
            self._watch = {}
            self._buckets = self._new_buckets()
        self.store.clear()
        self.counters.reset()
        self.faults.clear()
        self.files.discard()
        self.models.restore()

    def expire(self, prediction_id: str | None, after_seconds: float | None) -> None:
        """Remove outputs early; see `Faults.expire_outputs`."""
        if prediction_id is None and after_seconds is not None:
            self.configure(retention_seconds=float(after_seconds))
            return
        self.store.expire(prediction_id, self.clock() + float(after_seconds or 0.0))
        if after_seconds is None:
            self.files.discard(
                lambda key: prediction_id is None or key[0] == prediction_id  # type: ignore[index]
            )

    def prediction_json(self, record: PredictionRecord) -> dict[str, Any]:
        """The API object of a prediction right now."""
        return record.to_json(self.clock(), self.base_url, self.config.retention_seconds)

    def watch(self, record: PredictionRecord) -> None:
        """Follow a new prediction's webhook events; send `start` now if asked for."""
        if record.webhook is None:
            return
        if "start" in record.webhook_events:
            self.send_webhook(record, self.prediction_json(record))
        with self._lock:
            self._watch[record.id] = record

    def send_webhook(self, record: PredictionRecord, payload: dict[str, Any]) -> None:
        """Queue one signed delivery of `payload` to the prediction's webhook."""
        assert record.webhook is not None
        self.dispatcher.submit(WebhookMessage(
            prediction_id=record.id, url=record.webhook, body=json.dumps(payload),
            message_id="msg_" + secrets.token_hex(12), generation=self.generation,
        ))

    # Routing.

    def handle(self, request: Request) -> Response:
        """Answer one request."""
        path = request.path
        if path.startswith("/v1/"):
            return self._handle_v1(request)
        if path.startswith("/_sandbox/"):
            return admin_routes.handle(self, request)
        if path.startswith(("/files/", "/p/")):
            return file_routes.handle(self, request)
        return problem(404, f"No route for {request.method} {path}", "Not found")

    def _handle_v1(self, request: Request) -> Response:
        if not self._authorized(request.headers.get("authorization", "")):
            self.counters.add("unauthorized")
            return problem(401, "You did not pass a valid authentication token",
                           "Unauthenticated")
        matched_path = False
        for method, pattern, route, handler in _V1_ROUTES:
            match = pattern.match(request.path)
            if match is None:
                continue
            matched_path = True
            if method != request.method:
                continue
            self.counters.request(route)
            refusal = self._refuse(route)
            if refusal is not None:
                return refusal
            answer: Response = getattr(api_routes, handler)(self, request, *match.groups())
            return answer
        if matched_path:
            return problem(405, f"Method {request.method} not allowed on {request.path}",
                           "Method not allowed")
        return problem(404, f"No route for {request.method} {request.path}", "Not found")

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return scheme.lower() in ("bearer", "token") and secrets.compare_digest(
            token.strip().encode(), self.api_token.encode()
        )

    def _refuse(self, route: str) -> Response | None:
        """A 429 or an injected error for this call, or None to let it through."""
        if route == "create":
            retry_after = self.faults.take_create_throttle()
            if retry_after is not None:
                self.counters.add("faults_injected")
                return self.throttled(retry_after)
        if self.config.rate_limits:
            bucket = self._buckets["create" if route == "create" else "other"]
            wait = bucket.take(time.monotonic())
            if wait:
                return self.throttled(wait)
        status = self.faults.take_error(route)
        if status is None:
            return None
        self.counters.add("faults_injected")
        if status == 429:
            return self.throttled(1)
        return problem(status, f"Injected by the sandbox on route {route!r}; retry later")

    def throttled(self, retry_after: int) -> Response:
        """Replicate's 429 answer."""
        self.counters.add("rate_limited")
        return problem(429, throttled_detail(retry_after), "Too Many Requests",
                       {"Retry-After": str(retry_after)})

    # Background work.

    def _new_buckets(self) -> dict[str, TokenBucket]:
        cfg = self.config
        return {
            "create": TokenBucket(cfg.create_rate_per_minute, cfg.create_burst),
            "other": TokenBucket(cfg.other_rate_per_minute, cfg.other_burst),
        }

    def _tick_loop(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            self.tick()

    def tick(self) -> None:
        """Queue the webhook deliveries that became due (logs, output, completed)."""
        with self._tick_lock:
            self._tick()

    def _tick(self) -> None:
        with self._lock:
            watched = list(self._watch.values())
        if not watched:
            return
        now = self.clock()
        due: list[tuple[PredictionRecord, dict[str, Any]]] = []
        with self.store.locked():
            for record in watched:
                if record.sent_terminal:
                    continue
                view = record.view(now)
                logs = record.logs(view)
                events = set()
                if logs != record.sent_logs:
                    events.add("logs")
                    record.sent_logs = logs
                if view.terminal:
                    events.add("completed")
                    if view.status == "succeeded":
                        events.add("output")
                    record.sent_terminal = True
                if events & record.webhook_events:
                    due.append((record, record.to_json(now, self.base_url,
                                                       self.config.retention_seconds)))
        with self._lock:
            for record in watched:
                if record.sent_terminal:
                    self._watch.pop(record.id, None)
        for record, payload in due:
            self.send_webhook(record, payload)

    def _webhook_settings(self) -> tuple[str, int, float, float]:
        cfg = self.config
        return (self.webhook_secret, cfg.webhook_attempts, cfg.webhook_backoff_seconds,
                cfg.webhook_timeout_seconds)

    def _webhook_report(self, event: str, prediction_id: str, generation: int) -> None:
        if generation != self.generation:
            return
        key = {"delivered": "webhook_deliveries", "failed": "webhook_failures",
               "given_up": "webhook_given_up"}[event]
        self.counters.add(key, prediction_id=prediction_id)
