"""The Seedream 4 input, checked before a request is made.

Pure code: no I/O. The same model validates requests in the plugin and in the sandbox, and
`output_dimensions` tells both what resolution Seedream produces for a request.

Two layers: the rules every Seedream version shares (a prompt, URL inputs, the cross-field rules
a JSON schema cannot express) always apply; Seedream 4's own enums and ranges (the *bundled
rules*) apply too unless the input is validated with `context=SCHEMA_CHECKED`, which the plugin
does once it checks the fields against the schema the model publishes
(`prefect_seedream.tasks.model_schemas`) and the sandbox does against the schema it serves.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

MODEL_SLUG = "bytedance/seedream-4"

Size = Literal["1K", "2K", "4K", "custom"]
AspectRatio = Literal[
    "match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9"
]
SIZES: tuple[str, ...] = ("1K", "2K", "4K", "custom")
ASPECT_RATIOS: tuple[str, ...] = (
    "match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9"
)
MAX_TOTAL_IMAGES = 15
MAX_INPUT_IMAGES = 10
MIN_SIDE, MAX_SIDE = 1024, 4096
# Validation context: the enums and ranges are checked against the model's published schema
# instead of Seedream 4's bundled rules.
SCHEMA_CHECKED: dict[str, Any] = {"bundled_rules": False}

# Seedream's own resolutions at 2K; 1K halves them and 4K doubles them.
_RESOLUTIONS_2K: dict[str, tuple[int, int]] = {
    "1:1": (2048, 2048),
    "4:3": (2304, 1728),
    "3:4": (1728, 2304),
    "16:9": (2560, 1440),
    "9:16": (1440, 2560),
    "3:2": (2496, 1664),
    "2:3": (1664, 2496),
    "21:9": (3024, 1296),
}
_SCALE = {"1K": 0.5, "2K": 1.0, "4K": 2.0}
_SIZE_NAME = re.compile(r"^([1-9][0-9]?)K$")
_RATIO_NAME = re.compile(r"^([1-9][0-9]?):([1-9][0-9]?)$")


def _bundled(info: ValidationInfo) -> bool:
    context = info.context
    return not (isinstance(context, dict) and context.get("bundled_rules") is False)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
    # Pydantic's own wording, and never the value itself (it may come from a file's content).
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"
        raise ValueError(f"Input should be {choices} (Seedream 4)")
    return value


class SeedreamInput(BaseModel):
    """The whole Seedream 4 input, with every cross-field rule checked locally.

    Building one raises `pydantic.ValidationError` naming the field and the fix, so a bad
    request fails before any money is spent.

    `aspect_ratio` defaults to `"match_input_image"`, as on Replicate's form, and a prompt
    alone is accepted with it: with no input image to match, Seedream produces the size's 1:1
    resolution (2048x2048 at the default 2K, 1024x1024 at 1K, 4096x4096 at 4K). Pass a
    ratio such as `"16:9"` for another shape.

    Example:
        ```python
        from prefect_seedream import SeedreamInput

        request = SeedreamInput(prompt="a red fox in snow", size="2K", aspect_ratio="16:9")
        request.to_request()  # the JSON body's "input"
        ```
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Annotated[str, Field(description="Text prompt for generation or the edit instruction.")]
    image_input: list[str] = Field(
        default_factory=list,
        description="1 to 10 input image URLs (https or data:) for editing or reference.",
    )
    size: str = Field(default="2K", description="Resolution: 1K, 2K, 4K or custom.")
    aspect_ratio: str = Field(
        default="match_input_image",
        description=(
            "Aspect ratio; used only when size is not custom. match_input_image keeps the first "
            "input image's ratio, or gives 1:1 when there is no image_input."
        ),
    )
    width: int | None = Field(
        default=None, description="Width in pixels; only with size=custom.",
    )
    height: int | None = Field(
        default=None, description="Height in pixels; only with size=custom.",
    )
    sequential_image_generation: str = Field(
        default="disabled",
        description="'auto' lets the model return several related images, up to max_images.",
    )
    max_images: int = Field(
        default=1, ge=1,
        description="Most images to generate with sequential_image_generation='auto'.",
    )
    enhance_prompt: bool | None = Field(
        default=None,
        description="Prompt enhancement (better quality, slower); None keeps the model default.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is empty: describe the image you want")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str, info: ValidationInfo) -> str:
        return _one_of("size", value, SIZES) if _bundled(info) else value

    @field_validator("aspect_ratio")
    @classmethod
    def _aspect_ratio(cls, value: str, info: ValidationInfo) -> str:
        return _one_of("aspect_ratio", value, ASPECT_RATIOS) if _bundled(info) else value

    @field_validator("sequential_image_generation")
    @classmethod
    def _sequential(cls, value: str, info: ValidationInfo) -> str:
        if _bundled(info):
            return _one_of("sequential_image_generation", value, ("disabled", "auto"))
        return value

    @field_validator("width", "height")
    @classmethod
    def _side(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and _bundled(info) and not MIN_SIDE <= value <= MAX_SIDE:
            bound = (f"greater than or equal to {MIN_SIDE}" if value < MIN_SIDE
                     else f"less than or equal to {MAX_SIDE}")
            raise ValueError(f"Input should be {bound} (Seedream 4)")
        return value

    @field_validator("max_images")
    @classmethod
    def _max_images(cls, value: int, info: ValidationInfo) -> int:
        if _bundled(info) and value > MAX_TOTAL_IMAGES:
            raise ValueError(f"Input should be less than or equal to {MAX_TOTAL_IMAGES} "
                             "(Seedream 4)")
        return value

    @field_validator("image_input")
    @classmethod
    def _image_urls(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if _bundled(info) and len(value) > MAX_INPUT_IMAGES:
            raise ValueError(
                f"image_input has {len(value)} images; Seedream 4 takes at most {MAX_INPUT_IMAGES}"
            )
        for i, url in enumerate(value):
            if not url.startswith(("https://", "http://", "data:")):
                raise ValueError(
                    f"image_input[{i}] is not an http(s) URL or data: URI; "
                    "pass s3:// sources through edit_image, which presigns them"
                )
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> SeedreamInput:
        custom = self.size == "custom"
        if not custom and (self.width is not None or self.height is not None):
            raise ValueError(
                "width/height are only used with size='custom'; set size='custom' or drop them"
            )
        if custom and (self.width is None or self.height is None):
            raise ValueError("size='custom' needs both width and height (1024..4096)")
        if self.sequential_image_generation != "auto" and self.max_images > 1:
            raise ValueError(
                "max_images > 1 needs sequential_image_generation='auto'"
            )
        total = len(self.image_input) + self.max_images
        if total > MAX_TOTAL_IMAGES:
            raise ValueError(
                f"image_input ({len(self.image_input)}) + max_images ({self.max_images}) "
                f"= {total}; "
                f"Seedream allows at most {MAX_TOTAL_IMAGES} in total"
            )
        return self

    def to_request(self) -> dict[str, Any]:
        """The `input` object to send: only fields that apply, nothing the API would reject."""
        body: dict[str, Any] = {"prompt": self.prompt, "size": self.size}
        if self.image_input:
            body["image_input"] = list(self.image_input)
        if self.size == "custom":
            body["width"], body["height"] = self.width, self.height
        else:
            body["aspect_ratio"] = self.aspect_ratio
        body["sequential_image_generation"] = self.sequential_image_generation
        body["max_images"] = self.max_images
        if self.enhance_prompt is not None:
            body["enhance_prompt"] = self.enhance_prompt
        return body


def output_dimensions(
    request: SeedreamInput, first_input_size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """Width and height Seedream produces for `request`.

    `first_input_size` is the first input image's size; it is needed only for
    `aspect_ratio='match_input_image'` with `image_input`, where the output keeps that ratio at
    the requested size. With no input image to match, the output is the size's 1:1 resolution.

    Raises:
        ValueError: `match_input_image` with `image_input` but no `first_input_size`.
    """
    if request.size == "custom":
        assert request.width is not None and request.height is not None
        return request.width, request.height
    scale = _SCALE.get(request.size)
    if scale is None:  # a size a newer schema offers ("8K"): the same ladder
        named = _SIZE_NAME.match(request.size)
        if named is None:
            raise ValueError(f"size {request.size!r} has no known resolution")
        scale = int(named.group(1)) / 2
    ratio_name = request.aspect_ratio
    if ratio_name == "match_input_image" and not request.image_input:
        ratio_name = "1:1"
    if ratio_name in _RESOLUTIONS_2K:
        w, h = _RESOLUTIONS_2K[ratio_name]
        return round(w * scale), round(h * scale)
    if ratio_name != "match_input_image":  # a ratio a newer schema offers ("5:4")
        parts = _RATIO_NAME.match(ratio_name)
        if parts is None:
            raise ValueError(f"aspect_ratio {ratio_name!r} is not W:H")
        in_w, in_h = int(parts.group(1)), int(parts.group(2))
    elif first_input_size is None:
        raise ValueError("match_input_image needs the first input image's size")
    else:
        in_w, in_h = first_input_size
    area = (2048 * scale) ** 2
    ratio = in_w / in_h
    w = round(math.sqrt(area * ratio) / 16) * 16
    h = round(math.sqrt(area / ratio) / 16) * 16
    return max(w, 16), max(h, 16)


def describe_errors(exc: Exception) -> str:
    """One readable line per problem in a pydantic `ValidationError`, naming the field."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for err in errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "input"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)
