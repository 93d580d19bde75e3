"""The models the sandbox serves (Seedream 4 and 4.5), their versions and schemas, the account.

Each model's OpenAPI schema is shaped as Replicate's are: the `Input` component lists the
fields, and every enum is a component of its own, referred to through `allOf`. A test can replace
a model's served schema (`ModelCatalog.set_schema`, or `POST /_sandbox/models/{owner}/{name}`):
the new schema becomes a new latest version, the old version stays readable at its own
endpoint, and creates are checked against the schema of the version they run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from prefect_seedream.tasks.seedream_input import MODEL_SLUG

SEEDREAM_45 = "bytedance/seedream-4.5"
VERSION_CREATED_AT = "2025-09-09T00:00:00.000000Z"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RATIOS = ["match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9"]


class UnknownModel(LookupError):
    """A model or version the sandbox does not serve."""


def _enum(name: str, values: list[str], description: str) -> dict[str, Any]:
    return {"title": name, "description": description, "enum": values, "type": "string"}


def seedream_schema(model: str, *, sizes: list[str], max_image_input: int,
                    custom_size: bool) -> dict[str, Any]:
    """A Cog OpenAPI document for a Seedream version, shaped as Replicate serves it."""
    properties: dict[str, Any] = {
        "prompt": {"type": "string", "title": "Prompt", "x-order": 0,
                   "description": "Text prompt for image generation"},
        "image_input": {"type": "array", "items": {"type": "string", "format": "uri"},
                        "title": "Image Input", "x-order": 1, "default": [],
                        "maxItems": max_image_input,
                        "description": f"Input image(s), 1-{max_image_input} images"},
        "size": {"allOf": [{"$ref": "#/components/schemas/size"}], "default": "2K",
                 "x-order": 2, "description": "Image resolution"},
        "aspect_ratio": {"allOf": [{"$ref": "#/components/schemas/aspect_ratio"}],
                         "default": "match_input_image", "x-order": 3,
                         "description": "Image aspect ratio"},
        "sequential_image_generation": {
            "allOf": [{"$ref": "#/components/schemas/sequential_image_generation"}],
            "default": "disabled", "x-order": 6},
        "max_images": {"type": "integer", "title": "Max Images", "default": 1, "minimum": 1,
                       "maximum": 15, "x-order": 7},
        "enhance_prompt": {"type": "boolean", "title": "Enhance Prompt", "default": True,
                           "x-order": 8},
    }
    if custom_size:
        for order, side in ((4, "width"), (5, "height")):
            properties[side] = {"type": "integer", "title": side.title(), "default": 2048,
                                "minimum": 1024, "maximum": 4096, "x-order": order,
                                "description": f"Custom image {side} (only with size=custom)"}
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {},
        "components": {"schemas": {
            "Input": {"type": "object", "title": "Input", "required": ["prompt"],
                      "description": f"Input of {model}.", "properties": properties},
            "Output": {"type": "array", "items": {"type": "string", "format": "uri"},
                       "title": "Output"},
            "size": _enum("size", sizes, "An enumeration."),
            "aspect_ratio": _enum("aspect_ratio", list(_RATIOS), "An enumeration."),
            "sequential_image_generation": _enum(
                "sequential_image_generation", ["disabled", "auto"], "An enumeration."),
        }},
    }


def default_schemas() -> dict[str, dict[str, Any]]:
    """Each served model's schema as the sandbox starts with it."""
    return {
        MODEL_SLUG: seedream_schema(MODEL_SLUG, sizes=["1K", "2K", "4K", "custom"],
                                    max_image_input=10, custom_size=True),
        SEEDREAM_45: seedream_schema(SEEDREAM_45, sizes=["2K", "4K"], max_image_input=14,
                                     custom_size=False),
    }


def version_id(model: str, schema: dict[str, Any] | None = None) -> str:
    """The version id of a model's schema: stable for the default schema, new for any other."""
    if schema is None or schema == default_schemas()[model]:
        seed = f"prefect-seedream sandbox {model}".encode()
    else:
        seed = json.dumps([model, schema], sort_keys=True).encode()
    return hashlib.sha256(seed).hexdigest()


VERSION_ID = version_id(MODEL_SLUG)


@dataclass
class ModelCatalog:
    """The served models: each one's versions (id -> schema) and which one is latest."""

    _versions: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _latest: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.restore()

    def restore(self) -> None:
        """Serve every model's default schema again (as at start)."""
        with self._lock:
            self._versions, self._latest = {}, {}
            for model, schema in default_schemas().items():
                vid = version_id(model)
                self._versions[model] = {vid: schema}
                self._latest[model] = vid

    def models(self) -> list[str]:
        return sorted(self._latest)

    def set_schema(self, model: str, schema: dict[str, Any]) -> str:
        """Publish `schema` as the model's new latest version; returns its id."""
        if model not in self._latest:
            raise UnknownModel(f"model {model} not found")
        if not isinstance(schema, dict) or not isinstance(
                (schema.get("components") or {}).get("schemas", {}).get("Input"), dict):
            raise ValueError("the schema needs components.schemas.Input (an object)")
        vid = version_id(model, schema)
        with self._lock:
            self._versions[model][vid] = copy.deepcopy(schema)
            self._latest[model] = vid
        return vid

    def schema(self, model: str, version: str | None = None) -> dict[str, Any]:
        """The schema of a version (None: the latest); an unknown 64-hex id of a served
        model runs the latest schema, as the sandbox accepts any pinned id."""
        if model not in self._latest:
            raise UnknownModel(f"model {model} not found")
        with self._lock:
            versions = self._versions[model]
            found = versions.get(version or self._latest[model]) or versions[self._latest[model]]
            return copy.deepcopy(found)

    def latest(self, model: str) -> str:
        if model not in self._latest:
            raise UnknownModel(f"model {model} not found")
        return self._latest[model]

    def has_version(self, model: str, version: str) -> bool:
        return version in self._versions.get(model, {})

    def resolve(self, version: str) -> tuple[str, str]:
        """The (model, version id) a `version` body field on `POST /v1/predictions` names.

        Accepts `owner/name`, `owner/name:<64 hex>` and a bare 64-hex id.

        Raises:
            UnknownModel: It names a model the sandbox does not serve.
        """
        if _HEX64.match(version):
            for model, versions in self._versions.items():
                if version in versions:
                    return model, version
            raise UnknownModel(f"version {version} not found")
        model, _, pinned = version.partition(":")
        if model not in self._latest:
            raise UnknownModel(f"model {model} not found")
        if pinned and not _HEX64.match(pinned):
            raise UnknownModel(f"version {pinned} not found")
        return model, pinned or self._latest[model]

    def version_object(self, model: str, version: str) -> dict[str, Any]:
        """The `GET /v1/models/{owner}/{name}/versions/{id}` body."""
        return {"id": version, "created_at": VERSION_CREATED_AT, "cog_version": "0.16.0",
                "openapi_schema": self.schema(model, version)}

    def model_object(self, model: str, base_url: str) -> dict[str, Any]:
        """The `GET /v1/models/{owner}/{name}` body."""
        owner, name = model.split("/")
        return {
            "url": f"{base_url}/{model}",
            "owner": owner,
            "name": name,
            "description": "Unified text-to-image generation and precise single-sentence "
                           "editing at up to 4K resolution (sandbox)",
            "visibility": "public",
            "github_url": None,
            "paper_url": None,
            "license_url": None,
            "run_count": 0,
            "cover_image_url": None,
            "default_example": None,
            "latest_version": self.version_object(model, self.latest(model)),
        }


def account_object() -> dict[str, Any]:
    """The `GET /v1/account` body."""
    return {"type": "user", "username": "sandbox", "name": "Seedream Sandbox",
            "github_url": None}
