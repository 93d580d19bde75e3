"""The admin endpoint under `/_sandbox/` (no auth, loopback peers only).

- `GET /_sandbox/config`, `POST /_sandbox/config` with `{field: value, ...}`
- `GET /_sandbox/faults`, `POST /_sandbox/faults` with `{"fault_name": {kwargs}, ...}`
  (names as on `Sandbox.faults`, e.g. `{"fail_next": {"route": "get", "n": 2, "status": 503}}`)
- `GET /_sandbox/counters`, `POST /_sandbox/reset`
- `GET /_sandbox/predictions`, `GET /_sandbox/predictions/{id}`
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import TYPE_CHECKING, Any

from sandbox.http_types import Request, Response, json_response, problem

if TYPE_CHECKING:
    from sandbox.app import SandboxApp

_PREDICTION = re.compile(r"^/_sandbox/predictions/([a-z0-9]+)$")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _body(request: Request) -> dict[str, Any]:
    payload = json.loads(request.body or b"{}")
    if not isinstance(payload, dict):
        raise ValueError("body must be a JSON object")
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
            for action, arguments in _body(request).items():
                app.faults.apply(action, dict(arguments or {}))
            return json_response(200, app.faults.state())
        if key == ("GET", "/_sandbox/counters"):
            return json_response(200, app.counters.snapshot())
        if key == ("POST", "/_sandbox/reset"):
            app.reset()
            return json_response(200, {"reset": True})
        if key == ("GET", "/_sandbox/predictions"):
            return json_response(200, {"results": [app.prediction_json(r)
                                                   for r in app.store.all()]})
        match = _PREDICTION.match(request.path)
        if request.method == "GET" and match is not None:
            record = app.store.get(match.group(1))
            if record is None:
                return problem(404, f"Prediction {match.group(1)} not found", "Not found")
            return json_response(200, app.prediction_json(record))
    except KeyError as exc:
        return problem(404, f"Prediction {exc.args[0]} not found", "Not found")
    except (TypeError, ValueError) as exc:
        return problem(400, str(exc))
    return problem(404, f"No admin route for {request.method} {request.path}", "Not found")
