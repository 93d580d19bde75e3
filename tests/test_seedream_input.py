"""Every Seedream 4 input rule is checked locally, with a message naming the field and the fix."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from prefect_seedream.tasks.seedream_input import SeedreamInput, describe_errors, output_dimensions

BAD_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"prompt": "  "}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "x", "size": "8K", "aspect_ratio": "1:1"}, "size"),
    ({"prompt": "x", "aspect_ratio": "5:4"}, "aspect_ratio"),
    ({"prompt": "x", "size": "custom", "width": 512, "height": 2048}, "width"),
    ({"prompt": "x", "size": "custom", "width": 2048, "height": 5000}, "height"),
    ({"prompt": "x", "size": "custom", "width": 2048}, "width and height"),
    ({"prompt": "x", "size": "2K", "aspect_ratio": "1:1", "width": 2048}, "size='custom'"),
    ({"prompt": "x", "aspect_ratio": "1:1", "max_images": 16,
      "sequential_image_generation": "auto"}, "max_images"),
    ({"prompt": "x", "aspect_ratio": "1:1", "max_images": 3}, "sequential_image_generation"),
    ({"prompt": "x", "image_input": ["https://a/1.jpg"] * 6, "max_images": 10,
      "sequential_image_generation": "auto"}, "at most 15"),
    ({"prompt": "x", "image_input": ["https://a/1.jpg"] * 11}, "at most 10"),
    ({"prompt": "x", "image_input": ["s3://bucket/key.jpg"]}, "image_input[0]"),
    ({"prompt": "x", "aspect_ratio": "1:1", "sequential_image_generation": "sometimes"},
     "sequential_image_generation"),
    ({"prompt": "x", "aspect_ratio": "1:1", "enhance_prompt": "very"}, "enhance_prompt"),
    ({"prompt": "x", "aspect_ratio": "1:1", "seed": 42}, "seed"),
]


@pytest.mark.parametrize(("fields", "named"), BAD_INPUTS)
def test_invalid_input_is_refused_naming_the_problem(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError) as info:
        SeedreamInput.model_validate(fields)
    assert named in describe_errors(info.value)


def test_request_body_sends_only_fields_that_apply() -> None:
    custom = SeedreamInput(prompt="x", size="custom", width=1536, height=2048)
    assert custom.to_request() == {
        "prompt": "x", "size": "custom", "width": 1536, "height": 2048,
        "sequential_image_generation": "disabled", "max_images": 1,
    }
    ratio = SeedreamInput(prompt="x", aspect_ratio="16:9", enhance_prompt=False)
    assert "width" not in ratio.to_request()
    assert ratio.to_request()["enhance_prompt"] is False


@pytest.mark.parametrize(
    ("fields", "size"),
    [
        ({"size": "4K", "aspect_ratio": "1:1"}, (4096, 4096)),
        ({"size": "2K", "aspect_ratio": "4:3"}, (2304, 1728)),
        ({"size": "1K", "aspect_ratio": "16:9"}, (1280, 720)),
        ({"size": "custom", "width": 1111, "height": 3333}, (1111, 3333)),
    ],
)
def test_output_dimensions_follow_seedream(fields: dict[str, Any], size: tuple[int, int]) -> None:
    assert output_dimensions(SeedreamInput(prompt="x", **fields)) == size


def test_match_input_image_keeps_the_first_inputs_ratio() -> None:
    request = SeedreamInput(prompt="x", image_input=["https://a/1.jpg"], size="2K")
    width, height = output_dimensions(request, (3000, 2000))
    assert abs(width / height - 1.5) < 0.02
    assert abs(width * height - 2048 * 2048) / (2048 * 2048) < 0.02


@pytest.mark.parametrize(("size", "side"), [("1K", 1024), ("2K", 2048), ("4K", 4096)])
def test_prompt_alone_is_accepted_and_is_square_at_its_size(size: str, side: int) -> None:
    request = SeedreamInput.model_validate({"prompt": "a red fox in snow", "size": size})

    assert request.aspect_ratio == "match_input_image"  # Replicate's own default
    assert output_dimensions(request) == (side, side)
    assert request.to_request()["aspect_ratio"] == "match_input_image"


def test_match_input_image_with_inputs_still_needs_the_first_inputs_size() -> None:
    request = SeedreamInput(prompt="x", image_input=["https://a/1.jpg"])

    with pytest.raises(ValueError, match="first input image's size"):
        output_dimensions(request)  # never guesses 1:1 for an edit whose source it cannot read
