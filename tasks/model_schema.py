"""Check a model's input against the OpenAPI schema the model publishes on Replicate.

Pure code: no I/O. Replicate serves each version's Cog OpenAPI document at
`GET /v1/models/{owner}/{name}` (`latest_version.openapi_schema`); its `Input` component says
which fields exist, their types, ranges and enums. Replicate puts each enum in its own component
and refers to it through `allOf: [{"$ref": ...}]`, so `$ref` and `allOf` are resolved here.

This is the subset of JSON Schema that Cog emits: `$ref`, `allOf`, `anyOf`/`oneOf`, `type`,
`nullable`, `enum`, `minimum`/`maximum` (and their exclusive forms), `minLength`/`maxLength`,
`minItems`/`maxItems`, `items`, `required` and unknown top-level fields (a Cog input has a fixed
set of fields, so a field it does not list is refused: it would be dropped or fail a paid call).
Each problem names the field and the model, e.g.
`size: '1K' is not one of '2K', '4K' (bytedance/seedream-4.5's published schema)`.

Example:
    ```python
    from prefect_seedream.tasks.model_schema import input_problems

    openapi = {"components": {"schemas": {"Input": {"type": "object", "properties": {
        "n": {"type": "integer", "maximum": 4}}}}}}
    assert input_problems({"n": 9}, openapi, "acme/m") == [
        "n: 9 is above the maximum 4 (acme/m's published schema)"]
    ```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_REF_PREFIX = "#/components/schemas/"
_MAX_DEPTH = 32
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
}


class SchemaUnreadable(ValueError):
    """The document is not an OpenAPI schema with an `Input` component we can read."""


def input_schema(openapi: Mapping[str, Any]) -> dict[str, Any]:
    """The `Input` component of a version's OpenAPI document.

    Raises:
        SchemaUnreadable: There is no `components.schemas.Input` object.
    """
    components = openapi.get("components") if isinstance(openapi, Mapping) else None
    schemas = components.get("schemas") if isinstance(components, Mapping) else None
    found = schemas.get("Input") if isinstance(schemas, Mapping) else None
    if not isinstance(found, dict):
        raise SchemaUnreadable("the OpenAPI schema has no components.schemas.Input")
    return found


def input_problems(body: Mapping[str, Any], openapi: Mapping[str, Any], model: str) -> list[str]:
    """Every way `body` breaks the model's published `Input` schema, one line each; [] if none.

    Raises:
        SchemaUnreadable: The schema cannot be read (no Input, a `$ref` that points nowhere).
    """
    schemas = (openapi.get("components") or {}).get("schemas") or {}
    walker = _Walker(schemas, f"({model}'s published schema)")
    root = walker.resolve(input_schema(openapi))
    properties = root.get("properties") or {}
    problems = [f"{name}: unknown field; {model} takes {_names(properties)}"
                for name in sorted(set(body) - set(properties))]
    problems += [f"{name}: required by {model}" for name in root.get("required") or ()
                 if name not in body]
    for name in sorted(set(body) & set(properties)):
        problems += walker.check(body[name], properties[name], name, 0)
    return problems


def input_fields(openapi: Mapping[str, Any]) -> frozenset[str]:
    """The names of the fields the model takes."""
    return frozenset(input_schema(openapi).get("properties") or {})


def _names(properties: Mapping[str, Any]) -> str:
    return ", ".join(sorted(properties)) or "no fields"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Walker:
    def __init__(self, schemas: Mapping[str, Any], suffix: str) -> None:
        self.schemas = schemas
        self.suffix = suffix

    def resolve(self, schema: Any, depth: int = 0) -> dict[str, Any]:
        """`schema` with a top-level `$ref` followed (repeatedly)."""
        while isinstance(schema, Mapping) and "$ref" in schema:
            ref = schema["$ref"]
            if depth > _MAX_DEPTH or not isinstance(ref, str) or not ref.startswith(_REF_PREFIX):
                raise SchemaUnreadable(f"unsupported $ref {ref!r}")
            target = self.schemas.get(ref[len(_REF_PREFIX):])
            if not isinstance(target, Mapping):
                raise SchemaUnreadable(f"$ref {ref!r} points at nothing")
            schema, depth = target, depth + 1
        if not isinstance(schema, Mapping):
            raise SchemaUnreadable(f"a schema is a {type(schema).__name__}, not an object")
        return dict(schema)

    def check(self, value: Any, schema: Any, where: str, depth: int) -> list[str]:
        if depth > _MAX_DEPTH:
            raise SchemaUnreadable(f"{where}: the schema nests deeper than {_MAX_DEPTH}")
        node = self.resolve(schema, depth)
        if value is None and (node.get("nullable") or node.get("type") == "null"):
            return []
        problems: list[str] = []
        for part in node.get("allOf") or ():
            problems += self.check(value, part, where, depth + 1)
        for key in ("anyOf", "oneOf"):
            options = node.get(key)
            if options and not any(not self.check(value, o, where, depth + 1) for o in options):
                first = self.check(value, options[0], where, depth + 1)
                problems += first or [f"{where}: {_show(value)} matches none of the allowed "
                                      f"forms {self.suffix}"]
        problems += self._type(value, node, where)
        if problems:
            return problems
        if "enum" in node and value not in node["enum"]:
            allowed = ", ".join(_show(v) for v in node["enum"])
            return [f"{where}: {_show(value)} is not one of {allowed} {self.suffix}"]
        problems += self._bounds(value, node, where)
        if isinstance(value, (list, tuple)) and "items" in node:
            for index, item in enumerate(value):
                problems += self.check(item, node["items"], f"{where}[{index}]", depth + 1)
        return problems

    def _type(self, value: Any, node: Mapping[str, Any], where: str) -> list[str]:
        kind = node.get("type")
        kinds = kind if isinstance(kind, list) else [kind] if kind else []
        if not kinds:
            return []
        if value is None and "null" in kinds:
            return []
        for name in kinds:
            accepted = _TYPES.get(name)
            if accepted is None:
                continue
            is_bool = isinstance(value, bool)
            if isinstance(value, accepted) and (name == "boolean" or not is_bool):
                return []
            if name == "integer" and isinstance(value, float) and value.is_integer():
                return []
        wanted = " or ".join(str(k) for k in kinds)
        return [f"{where}: {_show(value)} is not of type {wanted} {self.suffix}"]

    def _bounds(self, value: Any, node: Mapping[str, Any], where: str) -> list[str]:
        problems: list[str] = []
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = node.get("minimum"), node.get("maximum")
            if isinstance(low, (int, float)) and value < low:
                problems.append(f"{where}: {value} is below the minimum {low} {self.suffix}")
            if isinstance(high, (int, float)) and value > high:
                problems.append(f"{where}: {value} is above the maximum {high} {self.suffix}")
            low, high = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
            if isinstance(low, (int, float)) and not isinstance(low, bool) and value <= low:
                problems.append(f"{where}: {value} must be above {low} {self.suffix}")
            if isinstance(high, (int, float)) and not isinstance(high, bool) and value >= high:
                problems.append(f"{where}: {value} must be below {high} {self.suffix}")
        sized: list[tuple[str, str, str]] = []
        if isinstance(value, (list, tuple)):
            sized = [("minItems", "items", "at least"), ("maxItems", "items", "at most")]
        elif isinstance(value, str):
            sized = [("minLength", "characters", "at least"),
                     ("maxLength", "characters", "at most")]
        for key, unit, word in sized:
            limit = node.get(key)
            if not isinstance(limit, int):
                continue
            if (word == "at most" and len(value) > limit) or (
                    word == "at least" and len(value) < limit):
                problems.append(f"{where}: has {len(value)} {unit}; {word} {limit} allowed "
                                f"{self.suffix}")
        return problems


__all__ = ["SchemaUnreadable", "input_fields", "input_problems", "input_schema"]
