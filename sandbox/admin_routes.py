"""The admin endpoint under `/_sandbox/` (no auth, loopback peers only).

- `GET /_sandbox/config`, `POST /_sandbox/config` with `{field: value, ...}` (`SandboxConfig`)
- `GET /_sandbox/faults`, `POST /_sandbox/faults` with `{fault: value, ...}` (`Faults`)
- `GET /_sandbox/counters`, `POST /_sandbox/reset`
- `GET /_sandbox/predictions`, `GET /_sandbox/predictions/{id}`
- `POST /_sandbox/models/{owner}/{name}` with an OpenAPI document: serve it as that model's
  new latest version (its `components.schemas.Input` decides what creates accept); the
  answer names the model and the new version id. A reset serves the default schemas again.

A POST applies its whole body or none of it: on any problem it answers 400 with a detail
naming each refused field, and changes nothing. On success it answers with what GET then shows.

In a faults body each key names a fault, and its value is either what GET shows for it, which
sets the fault to exactly that (so posting GET's answer back changes nothing), or an object of
the keyword arguments of the `Faults` method of that name, which calls it (`fail_next`,
`interrupt_predictions`, `size_drift` and `corrupt_outputs` then queue after what is already
queued). `clear` applies first.

Examples, to send with `curl -d BODY http://127.0.0.1:8787/_sandbox/faults`:

- Throttle the next 2 creates (429 with `Retry-After: 3`) and fail the next GET with 503:
  `{"rate_limit_creates": {"n": 2, "retry_after": 3},
  "fail_next": {"route": "get", "n": 1, "status": 503}}`
- Lose the next create's response (the prediction is still created), and make the next
  prediction fail as flagged content:
  `{"drop_create_responses": 1,
  "interrupt_predictions": {"n": 1, "error": "The output was flagged as sensitive. (E005)"}}`
- Answer a fifth of GETs and lists with 500, and serve output files at 50 kB/s:
  `{"error_share": {"share": 0.2, "status": 500, "routes": ["get", "list"]},
  "slow_downloads": 50000}`
- Render the next prediction's outputs 16 pixels wider than Seedream's size table says (still
  valid JPEGs), and cut the next two predictions' files off before their JPEG end marker:
  `{"size_drift": {"n": 1, "dx": 16, "dy": 0},
  "corrupt_outputs": {"n": 2, "kind": "truncated"}}`
- Turn every fault off: `{"clear": {}}`
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import TYPE_CHECKING, Any

from prefect_seedream.sandbox.fault_settings import FaultSettingsError
from prefect_seedream.sandbox.http_types import Request, Response, json_response, problem

if TYPE_CHECKING:
    from prefect_seedream.sandbox.app import SandboxApp

_PREDICTION = re.compile(r"^/_sandbox/predictions/([a-z0-9]+)$")
_MODEL = re.compile(r"^/_sandbox/models/([^/]+)/([^/]+)$")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _body(request: Request) -> dict[str, Any]:
    try:
        payload = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ValueError(f"Request body must be a JSON object such as "
                         f'{{"drop_create_responses": 1}}, not {type(payload).__name__}')
    return payload


def handle(app: SandboxApp, request: Request) -> Response:
    """Answer one admin call."""
    if not _loopback(request.client_host):
        return problem(403, "The admin endpoint answers loopback clients only", "Forbidden")
    key = (request.method, request.path)
    try:
        if key == ("GET", "/_sandbox/config"):
            return json_response(200, app.config.to_dict())
        if key == ("POST", "/_sandbox/config"):
            return json_response(200, app.configure(**_body(request)).to_dict())
        if key == ("GET", "/_sandbox/faults"):
            return json_response(200, app.faults.state())
        if key == ("POST", "/_sandbox/faults"):
            app.faults.update(_body(request),
                              prediction_exists=lambda pid: app.store.get(pid) is not None)
            return json_response(200, app.faults.state())
        if key == ("GET", "/_sandbox/counters"):
            return json_response(200, app.counters.snapshot())
        if key == ("POST", "/_sandbox/reset"):
            app.reset()
            return json_response(200, {"reset": True})
        if key == ("GET", "/_sandbox/predictions"):
            return json_response(200, {"results": [app.prediction_json(r)
                                                   for r in app.store.all()]})
        model = _MODEL.match(request.path)
        if request.method == "POST" and model is not None:
            name = f"{model.group(1)}/{model.group(2)}"
            if name not in app.models.models():
                return problem(404, f"Model {name} not found", "Not found")
            version = app.models.set_schema(name, _body(request))
            return json_response(200, {"model": name, "version": version})
        match = _PREDICTION.match(request.path)
        if request.method == "GET" and match is not None:
            record = app.store.get(match.group(1))
            if record is None:
                return problem(404, f"Prediction {match.group(1)} not found", "Not found")
            return json_response(200, app.prediction_json(record))
    except KeyError as exc:  # the prediction went away between the check and the expiry
        return problem(404, f"Prediction {exc.args[0]} not found", "Not found")
    except FaultSettingsError as exc:
        return problem(400, f"Nothing was changed: {exc}", "Invalid fault settings")
    except (TypeError, ValueError) as exc:
        return problem(400, f"Nothing was changed: {exc}")
    return problem(404, f"No admin route for {request.method} {request.path}", "Not found")
