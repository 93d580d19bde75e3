"""Fetch a model's published input schema, cache it, and check a request against it.

The schema comes from `GET /v1/models/{owner}/{name}` (`latest_version.openapi_schema`), or for
a pinned `owner/name:version` from `GET /v1/models/{owner}/{name}/versions/{version}`, sent
through the one HTTP choke point (`ReplicateApi`). It is kept per process and on disk under
`SEEDREAM_SCHEMA_CACHE_DIR` for `SEEDREAM_SCHEMA_TTL_SECONDS` (300 s); the file holds the
schema and nothing else. With the schema unreachable, `bytedance/seedream-4` falls back to the
bundled Seedream 4 rules and any other model is refused: input is never sent unchecked.

A pinned version whose model's latest schema differs is logged once and announced with a
`seedream.model.schema-changed` event, so a user can react.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from prefect_seedream.tasks.errors import InvalidInput
from prefect_seedream.tasks.model_prices import base_model
from prefect_seedream.tasks.model_schema import SchemaUnreadable, input_problems, input_schema
from prefect_seedream.tasks.replicate_client.protocol import SendFailed, Sleep
from prefect_seedream.tasks.replicate_client.request_builders import (
    TRANSIENT_STATUSES,
    ApiRequest,
    ApiResponse,
)
from prefect_seedream.tasks.seedream_input import (
    MODEL_SLUG,
    SCHEMA_CHECKED,
    SeedreamInput,
    describe_errors,
)
from prefect_seedream.tasks.seedream_settings import get_settings

if TYPE_CHECKING:
    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
    from prefect_seedream.tasks.replicate_client.api import ReplicateApi

#: `owner/name` or `owner/name:<64-hex version>`; each part at most 100 characters (a model
#: name is echoed in errors and sent in a URL). Use `fullmatch`: `$` would let a final "\n" in.
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}/[a-z0-9][a-z0-9._-]{0,99}(:[0-9a-f]{64})?")
SCHEMA_CHANGED_EVENT = "seedream.model.schema-changed"
logger = logging.getLogger("prefect_seedream.models")
_memory: dict[str, tuple[float, dict[str, Any]]] = {}
_drift_seen: set[str] = set()
_lock = threading.Lock()


class ModelNotFound(InvalidInput):
    """Replicate does not serve the model (or the pinned version) named."""


def check_model_name(model: str) -> str:
    """`model` if it is `owner/name` or `owner/name:<64 hex>`, else `InvalidInput`."""
    if not isinstance(model, str) or not MODEL_NAME.fullmatch(model):
        shown = repr(model) if len(repr(model)) <= 80 else repr(model)[:77] + "..."
        raise InvalidInput(f"model {shown} is not owner/name or owner/name:<64-hex version>, "
                           "e.g. bytedance/seedream-4")
    return model


def build_schema_request(model: str) -> ApiRequest:
    """The GET that returns the model's (or the pinned version's) OpenAPI schema."""
    name, _, version = model.partition(":")
    path = f"/v1/models/{name}/versions/{version}" if version else f"/v1/models/{name}"
    return ApiRequest("GET", path)


def read_schema(response: ApiResponse) -> dict[str, Any]:
    """The OpenAPI document in a model or version body (`SchemaUnreadable` if none)."""
    body = response.body if isinstance(response.body, dict) else {}
    version = body.get("latest_version") if "latest_version" in body else body
    schema = version.get("openapi_schema") if isinstance(version, dict) else None
    if not isinstance(schema, dict):
        raise SchemaUnreadable("the answer carries no openapi_schema")
    input_schema(schema)
    return schema


def fetch(model: str) -> Generator[Any, Any, dict[str, Any] | None]:
    """The model's schema, or None when Replicate cannot be asked (transport errors, 5xx or 429
    three times, an answer with no readable schema). Raises `ModelNotFound` on 404."""
    for attempt in range(1, 4):
        try:
            response: ApiResponse = yield build_schema_request(model)
        except SendFailed:
            response = ApiResponse(0, {}, None)
        if response.ok:
            try:
                return read_schema(response)
            except SchemaUnreadable:
                return None
        if response.status == 404:
            raise ModelNotFound(f"model {model} is not on Replicate (HTTP 404); check the name "
                                "and version; nothing was sent")
        if response.status and response.status not in TRANSIENT_STATUSES | {429}:
            return None
        if attempt < 3:
            yield Sleep(0.2 * attempt)
    return None


def _cache_file(key: str) -> Path:
    folder = get_settings().schema_cache_dir or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "prefect-seedream", "schemas")
    return Path(folder) / f"{key}.json"


def _cached(key: str, ttl: float) -> dict[str, Any] | None:
    with _lock:
        hit = _memory.get(key)
    if hit is not None and time.time() - hit[0] < ttl:
        return hit[1]
    try:
        data = json.loads(_cache_file(key).read_text(encoding="utf-8"))
        if time.time() - float(data["fetched_at"]) < ttl:
            schema = data["openapi_schema"]
            input_schema(schema)
            with _lock:
                _memory[key] = (float(data["fetched_at"]), schema)
            return schema  # type: ignore[no-any-return]
    except (OSError, ValueError, KeyError, TypeError, SchemaUnreadable):
        pass
    return None


def _store(key: str, model: str, schema: dict[str, Any]) -> None:
    now = time.time()
    with _lock:
        _memory[key] = (now, schema)
    path = _cache_file(key)
    try:  # best effort: a read-only home only costs a GET per TTL
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"model": model, "fetched_at": now,
                                         "openapi_schema": schema}), encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        pass


def schema_for(model: str, api: ReplicateApi) -> dict[str, Any] | None:
    """The model's published schema (cached), or None when it cannot be read now."""
    where = str(api._http.base_url)
    key = hashlib.sha256(f"{where}\0{model}".encode()).hexdigest()[:32]
    ttl = get_settings().schema_ttl_seconds
    if (hit := _cached(key, ttl)) is not None:
        return hit
    schema: dict[str, Any] | None = api.run(fetch(model))
    if schema is not None:
        _store(key, model, schema)
        if ":" in model:
            _check_drift(model, schema, api)
    return schema


def _check_drift(model: str, pinned: dict[str, Any], api: ReplicateApi) -> None:
    """Log once and emit `seedream.model.schema-changed` when the model's latest schema is not
    the pinned version's."""
    name = base_model(model)
    try:
        latest = schema_for(name, api)
    except InvalidInput:
        return
    # The enums are components of their own: compare every component, not only Input.
    if latest is None or latest.get("components") == pinned.get("components"):
        return
    with _lock:
        if model in _drift_seen:
            return
        _drift_seen.add(model)
    logger.warning("%s is pinned, and the latest version of %s publishes a different input "
                   "schema; requests keep using the pinned version", model, name)
    try:
        from prefect.events import emit_event

        emit_event(SCHEMA_CHANGED_EVENT, resource={"prefect.resource.id": f"seedream.model.{name}"},
                   payload={"model": name, "pinned": model})
    except Exception:  # an event we cannot emit must not stop the request
        logger.debug("could not emit %s", SCHEMA_CHANGED_EVENT)


def checked_request(
    input: SeedreamInput | dict[str, Any], model: str,
    credentials: ReplicateCredentials | str | ReplicateApi | None,
) -> SeedreamInput:
    """`input` checked against `model`'s published schema (and the rules every Seedream version
    shares) before anything is paid for.

    Raises:
        InvalidInput: It breaks the schema (each problem names field and model), the model is
            unknown, or its schema cannot be read and no bundled rules exist for it.
    """
    from prefect_seedream.tasks.replicate_client.api import ReplicateApi

    check_model_name(model)
    try:
        request = input if isinstance(input, SeedreamInput) else SeedreamInput.model_validate(
            input, context=SCHEMA_CHECKED)
    except ValidationError as exc:
        raise InvalidInput(f"invalid Seedream input for {model}: {describe_errors(exc)}") from exc
    body = request.to_request()
    schema = None
    try:
        if isinstance(credentials, ReplicateApi):
            api = credentials
        else:
            from prefect_seedream.tasks.connections import replicate_api

            api = replicate_api(credentials)
        schema = schema_for(model, api)
    except InvalidInput:
        raise
    except Exception:
        if base_model(model) != MODEL_SLUG:
            raise
        _bundled(body, model)  # bad input is named even before missing credentials
        raise
    check_body(body, model, schema)
    return request


def check_body(body: dict[str, Any], model: str, schema: dict[str, Any] | None, *,
               warn: bool = True) -> None:
    """Check a request body against `model`'s published `schema` (from `schema_for`); with
    None (unreadable now), against the bundled Seedream 4 rules, or refuse another model.
    Many bodies of one model (a manifest) fetch the schema once and call this per body.

    Raises:
        InvalidInput: The body breaks the schema (each problem names field and model), or
            there is no schema and no bundled rules for the model.
    """
    if schema is not None:
        try:
            problems = input_problems(body, schema, model)
        except SchemaUnreadable:
            problems, schema = [], None
        if problems:
            raise InvalidInput(f"invalid Seedream input for {model}: {'; '.join(problems)}; "
                               "nothing was sent")
    if schema is None:
        if base_model(model) != MODEL_SLUG:
            raise InvalidInput(
                f"cannot read the published input schema of {model} from Replicate right "
                "now, and there are no bundled rules for it; refusing to send unchecked "
                "input. Retry later.")
        if warn:
            logger.warning("cannot read %s's published schema; checking against the bundled "
                           "Seedream 4 rules", model)
        _bundled(body, model)


def _bundled(body: dict[str, Any], model: str) -> None:
    try:
        SeedreamInput.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput(f"invalid Seedream input for {model}: {describe_errors(exc)}") from exc
