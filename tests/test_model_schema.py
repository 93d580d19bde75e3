"""The schema walker refuses what a model's published schema forbids, naming field and model."""

from __future__ import annotations

import pytest

from prefect_seedream.sandbox.model_info import SEEDREAM_45, default_schemas
from prefect_seedream.tasks.model_schema import SchemaUnreadable, input_problems

V4, V45 = default_schemas()["bytedance/seedream-4"], default_schemas()[SEEDREAM_45]
OK = {"prompt": "a fox", "size": "2K", "aspect_ratio": "1:1", "max_images": 1}


def test_valid_input_passes_both_schemas() -> None:
    assert input_problems(OK, V4, "bytedance/seedream-4") == []
    assert input_problems(OK, V45, SEEDREAM_45) == []


@pytest.mark.parametrize(("body", "named"), [
    ({**OK, "size": "1K"}, "size: '1K' is not one of '2K', '4K'"),        # enum via allOf/$ref
    ({**OK, "size": "custom", "width": 2048, "height": 2048}, "width: unknown field"),
    ({**OK, "max_images": 16}, "max_images: 16 is above the maximum 15"),
    ({**OK, "max_images": 0}, "max_images: 0 is below the minimum 1"),
    ({**OK, "max_images": "3"}, "max_images: '3' is not of type integer"),
    ({**OK, "enhance_prompt": 1}, "enhance_prompt: 1 is not of type boolean"),
    ({**OK, "image_input": ["https://a/x.jpg"] * 15}, "image_input: has 15 items; at most 14"),
    ({**OK, "image_input": [3]}, "image_input[0]: 3 is not of type string"),
    ({"size": "2K"}, "prompt: required by"),
    ({**OK, "seed": 1}, "seed: unknown field"),
])
def test_each_violation_names_the_field_and_the_model(body: dict, named: str) -> None:
    problems = input_problems(body, V45, SEEDREAM_45)
    assert any(named in p for p in problems), problems
    assert all(SEEDREAM_45 in p for p in problems)


def test_the_two_schemas_differ_where_the_models_do() -> None:
    twelve = {**OK, "image_input": ["https://a/x.jpg"] * 12}
    assert input_problems(twelve, V45, SEEDREAM_45) == []
    assert input_problems(twelve, V4, "bytedance/seedream-4")
    assert input_problems({**OK, "size": "1K"}, V4, "bytedance/seedream-4") == []


def test_an_added_enum_value_is_accepted() -> None:
    import copy

    changed = copy.deepcopy(V4)
    changed["components"]["schemas"]["aspect_ratio"]["enum"].append("5:4")
    assert input_problems({**OK, "aspect_ratio": "5:4"}, V4, "m")
    assert input_problems({**OK, "aspect_ratio": "5:4"}, changed, "m") == []


def test_nullable_and_anyof_forms() -> None:
    schema = {"components": {"schemas": {"Input": {"type": "object", "properties": {
        "seed": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "tag": {"type": "string", "nullable": True, "maxLength": 3}}}}}}
    assert input_problems({"seed": None, "tag": None}, schema, "m") == []
    assert input_problems({"seed": "x"}, schema, "m")
    assert "at most 3" in input_problems({"tag": "long"}, schema, "m")[0]


@pytest.mark.parametrize("schema", [
    {}, {"components": {"schemas": {}}},
    {"components": {"schemas": {"Input": {"properties": {"a": {"$ref": "#/nowhere"}}}}}},
])
def test_an_unreadable_schema_is_an_error_not_a_pass(schema: dict) -> None:
    with pytest.raises(SchemaUnreadable):
        input_problems({"a": 1}, schema, "m")
