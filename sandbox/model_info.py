"""The static objects the sandbox serves: the Seedream 4 model, its version, the account."""

from __future__ import annotations

import copy
import functools
import hashlib
import re
from typing import Any

from prefect_seedream.tasks.seedream_input import MODEL_SLUG, SeedreamInput

VERSION_ID = hashlib.sha256(b"prefect-seedream sandbox bytedance/seedream-4").hexdigest()
VERSION_CREATED_AT = "2025-09-09T00:00:00.000000Z"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class UnknownModel(LookupError):
    """A model or version the sandbox does not serve."""


def resolve_version(version: str) -> tuple[str, str]:
    """The (model, version id) a `version` body field on `POST /v1/predictions` refers to.

    Accepts `owner/name`, `owner/name:<64 hex>` and a bare 64-hex id.

    Raises:
        UnknownModel: It names anything but Seedream 4.
    """
    if _HEX64.match(version):
        if version != VERSION_ID:
            raise UnknownModel(f"version {version} not found")
        return MODEL_SLUG, VERSION_ID
    model, _, pinned = version.partition(":")
    if model != MODEL_SLUG:
        raise UnknownModel(f"model {model} not found")
    if pinned and not _HEX64.match(pinned):
        raise UnknownModel(f"version {pinned} not found")
    return MODEL_SLUG, pinned or VERSION_ID


@functools.lru_cache(maxsize=1)
def _openapi_schema() -> dict[str, Any]:
    input_schema = SeedreamInput.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = input_schema.pop("$defs", {})
    input_schema["title"] = "Input"
    input_schema["description"] = f"Input of {MODEL_SLUG}."
    input_schema["required"] = ["prompt"]
    schemas: dict[str, Any] = dict(defs)
    schemas["Input"] = input_schema
    schemas["Output"] = {"type": "array", "items": {"type": "string", "format": "uri"},
                         "title": "Output"}
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {},
        "components": {"schemas": schemas},
    }


def openapi_schema() -> dict[str, Any]:
    """The version's OpenAPI document; `components.schemas.Input` is the Seedream 4 input."""
    return copy.deepcopy(_openapi_schema())


def model_object(base_url: str) -> dict[str, Any]:
    """The `GET /v1/models/bytedance/seedream-4` body."""
    owner, name = MODEL_SLUG.split("/")
    return {
        "url": f"{base_url}/{MODEL_SLUG}",
        "owner": owner,
        "name": name,
        "description": "Unified text-to-image generation and precise single-sentence editing "
                       "at up to 4K resolution (sandbox)",
        "visibility": "public",
        "github_url": None,
        "paper_url": None,
        "license_url": None,
        "run_count": 0,
        "cover_image_url": None,
        "default_example": None,
        "latest_version": {
            "id": VERSION_ID,
            "created_at": VERSION_CREATED_AT,
            "cog_version": "0.16.0",
            "openapi_schema": openapi_schema(),
        },
    }


def account_object() -> dict[str, Any]:
    """The `GET /v1/account` body."""
    return {"type": "user", "username": "sandbox", "name": "Seedream Sandbox",
            "github_url": None}
