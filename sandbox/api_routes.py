"""The /v1 endpoints: create, get, cancel and list predictions, and the metadata calls.

Each handler takes the app, the request and the path groups, and returns a `Response`;
authentication, rate limits and injected faults were handled by the router.
"""

from __future__ import annotations

import json
import urllib.parse
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from prefect_seedream.sandbox.config import image_count, parse_go_duration, parse_prefer_wait
from prefect_seedream.sandbox.fault_settings import MIN_SIDE
from prefect_seedream.sandbox.file_routes import as_data_uris
from prefect_seedream.sandbox.http_types import Request, Response, json_response, problem
from prefect_seedream.sandbox.input_images import InputImageError, load_inputs
from prefect_seedream.sandbox.model_info import UnknownModel, account_object
from prefect_seedream.sandbox.prediction_state import PredictionRecord, new_prediction_id
from prefect_seedream.sandbox.webhooks import DEFAULT_EVENTS, WEBHOOK_EVENTS
from prefect_seedream.tasks.model_schema import input_problems
from prefect_seedream.tasks.seedream_input import (
    SCHEMA_CHECKED,
    SeedreamInput,
    describe_errors,
    output_dimensions,
)

if TYPE_CHECKING:
    from prefect_seedream.sandbox.app import SandboxApp

_BODY_KEYS = frozenset({
    "version", "input", "webhook", "webhook_completed", "webhook_events_filter", "stream",
})


class _Rejected(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def create_for_model(app: SandboxApp, request: Request, owner: str, name: str) -> Response:
    """`POST /v1/models/{owner}/{name}/predictions`: the model's latest version."""
    model = f"{owner}/{name}"
    if model not in app.models.models():
        return problem(404, f"Model {model} not found; the sandbox serves "
                       f"{', '.join(app.models.models())}", "Not found")
    try:
        body = _json_object(request)
        if "version" in body:
            raise _Rejected(problem(422, "version: not allowed on the models endpoint",
                                    "Invalid input"))
    except _Rejected as exc:
        return exc.response
    return _create(app, request, body, model, app.models.latest(model))


def create_for_version(app: SandboxApp, request: Request) -> Response:
    """`POST /v1/predictions` with `version` = `owner/name`, `owner/name:<hex>` or `<hex>`."""
    try:
        body = _json_object(request)
    except _Rejected as exc:
        return exc.response
    version = body.get("version")
    if not isinstance(version, str) or not version:
        return problem(422, "version: required; use 'bytedance/seedream-4'", "Invalid input")
    try:
        model, version_id = app.models.resolve(version)
    except UnknownModel as exc:
        return problem(404, f"{exc}; the sandbox serves {', '.join(app.models.models())}",
                       "Not found")
    return _create(app, request, body, model, version_id)


def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Rejected(problem(400, f"Request body is not valid JSON: {exc}")) from exc
    if not isinstance(body, dict):
        raise _Rejected(problem(400, "Request body must be a JSON object"))
    return body


def _check_body(body: dict[str, Any]) -> None:
    unknown = sorted(set(body) - _BODY_KEYS)
    if unknown:
        raise _Rejected(problem(422, f"{unknown[0]}: unknown field in request body",
                                "Invalid input"))
    if not isinstance(body.get("input"), dict):
        raise _Rejected(problem(422, "input: required and must be an object", "Invalid input"))
    webhook = body.get("webhook")
    if webhook is not None and (
        not isinstance(webhook, str) or not webhook.startswith(("http://", "https://"))
    ):
        raise _Rejected(problem(422, "webhook: must be an http(s) URL", "Invalid input"))
    events = body.get("webhook_events_filter")
    if events is not None and (
        not isinstance(events, list) or not set(events) <= WEBHOOK_EVENTS
    ):
        raise _Rejected(problem(
            422, "webhook_events_filter: must be a list of start, output, logs, completed",
            "Invalid input"))


def _create(
    app: SandboxApp, request: Request, body: dict[str, Any], model: str, version: str
) -> Response:
    try:
        _check_body(body)
        wait = parse_prefer_wait(request.headers.get("prefer"))
        cancel_after = request.headers.get("cancel-after")
        lifetime = None if cancel_after is None else parse_go_duration(cancel_after)
    except _Rejected as exc:
        return exc.response
    except ValueError as exc:
        return problem(400, str(exc))
    # The version's served schema decides fields, enums and ranges; the cross-field rules a
    # schema cannot express are SeedreamInput's, as on Replicate.
    problems = input_problems(body["input"], app.models.schema(model, version), model)
    if problems:
        return problem(422, "; ".join(problems), "Invalid input")
    try:
        seedream = SeedreamInput.model_validate(body["input"], context=SCHEMA_CHECKED)
    except ValidationError as exc:
        return problem(422, describe_errors(exc), "Invalid input")
    try:
        inputs = load_inputs(list(seedream.image_input), app.config.input_fetch_timeout_seconds)
    except InputImageError as exc:
        return problem(422, str(exc), "Invalid input")
    try:
        width, height = output_dimensions(seedream, inputs[0].size if inputs else None)
    except ValueError as exc:
        return problem(422, f"aspect_ratio: {exc}", "Invalid input")

    cfg = app.config
    now = app.clock()
    failure = app.faults.take_interrupt()
    drift, corruption = None, None
    if failure is None:  # a failed prediction has no outputs to spoil: the faults wait
        drift, corruption = app.faults.take_size_drift(), app.faults.take_corruption()
    if drift is not None:
        width, height = max(MIN_SIDE, width + drift[0]), max(MIN_SIDE, height + drift[1])
    record = PredictionRecord(
        id=new_prediction_id(),
        seq=app.store.next_seq(),
        model=model,
        version=version,
        input=body["input"],
        request=seedream,
        width=width,
        height=height,
        image_count=image_count(seedream.max_images, seedream.sequential_image_generation,
                                cfg.auto_image_count),
        created=now,
        queue_seconds=cfg.queue_seconds,
        run_seconds=cfg.run_seconds,
        deadline=None if lifetime is None else now + lifetime,
        failure=failure,
        corruption=corruption,
        webhook=body.get("webhook"),
        webhook_events=frozenset(body.get("webhook_events_filter") or DEFAULT_EVENTS),
        sources=[image.data for image in inputs],
    )
    for fault in (failure, drift, corruption):
        if fault is not None:
            app.counters.add("faults_injected")
    app.store.add(record)
    app.counters.track(record.id)
    app.counters.add("creates")
    app.watch(record)
    if app.faults.take_drop():
        app.counters.add("faults_injected")
        app.counters.add("dropped_responses")
        return Response(201, drop=True)
    headers: dict[str, str] = {}
    payload = app.prediction_json(record)
    if wait is not None:
        view = app.store.wait(record, float(wait))
        payload = app.prediction_json(record)
        if not view.terminal:
            headers["Location"] = f"{app.base_url}/v1/predictions/{record.id}"
        elif app.config.sync_data_uri_outputs:
            as_data_uris(app, record, payload)
    return json_response(201, payload, headers)


def get_prediction(app: SandboxApp, request: Request, prediction_id: str) -> Response:
    """`GET /v1/predictions/{id}`."""
    record = app.store.get(prediction_id)
    if record is None:
        return problem(404, f"Prediction {prediction_id} not found", "Not found")
    app.counters.add("gets", prediction_id=prediction_id)
    return json_response(200, app.prediction_json(record))


def cancel_prediction(app: SandboxApp, request: Request, prediction_id: str) -> Response:
    """`POST /v1/predictions/{id}/cancel`: idempotent; terminal predictions stay as they are."""
    record = app.store.cancel(prediction_id)
    if record is None:
        return problem(404, f"Prediction {prediction_id} not found", "Not found")
    app.counters.add("cancels", prediction_id=prediction_id)
    return json_response(200, app.prediction_json(record))


def _iso_param(request: Request, name: str) -> float | None:
    value = request.param(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{name}: {value!r} is not an ISO 8601 date-time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def list_predictions(app: SandboxApp, request: Request) -> Response:
    """`GET /v1/predictions`: newest first, 100 a page; `cursor`, `created_after/before`."""
    try:
        after = _iso_param(request, "created_after")
        before = _iso_param(request, "created_before")
        records, older, newer = app.store.page(request.param("cursor"), after, before)
    except ValueError as exc:
        return problem(400, str(exc))
    keep = {k: v for k, v in request.query.items() if k in ("created_after", "created_before")}

    def link(cursor: str | None) -> str | None:
        if cursor is None:
            return None
        query = urllib.parse.urlencode({**keep, "cursor": [cursor]}, doseq=True)
        return f"{app.base_url}/v1/predictions?{query}"

    results = [{**app.prediction_json(r), "source": "api"} for r in records]
    app.counters.add("lists")
    return json_response(200, {"next": link(older), "previous": link(newer), "results": results})


def get_account(app: SandboxApp, request: Request) -> Response:
    """`GET /v1/account`."""
    app.counters.add("accounts")
    return json_response(200, account_object())


def get_webhook_secret(app: SandboxApp, request: Request) -> Response:
    """`GET /v1/webhooks/default/secret`."""
    return json_response(200, {"key": app.webhook_secret})


def get_model(app: SandboxApp, request: Request, owner: str, name: str) -> Response:
    """`GET /v1/models/{owner}/{name}`: the model and its latest version's schema."""
    try:
        body = app.models.model_object(f"{owner}/{name}", app.base_url)
    except UnknownModel:
        return problem(404, f"Model {owner}/{name} not found", "Not found")
    app.counters.add("models")
    return json_response(200, body)


def get_version(app: SandboxApp, request: Request, owner: str, name: str,
                version: str) -> Response:
    """`GET /v1/models/{owner}/{name}/versions/{id}`: one version and its schema."""
    model = f"{owner}/{name}"
    if model not in app.models.models() or not app.models.has_version(model, version):
        return problem(404, f"Version {version} of {model} not found", "Not found")
    app.counters.add("models")
    return json_response(200, app.models.version_object(model, version))
