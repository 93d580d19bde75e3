"""What the sync and async image flows share: building the request and the checks made before
any money is spent. Blocking calls here are run in a worker thread by the async flows."""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import ValidationError

from prefect_seedream.blocks.s3_destination import S3Destination
from prefect_seedream.flows.source_images import first_image_size, presign_sources
from prefect_seedream.tasks.errors import InvalidInput, PredictionFailed, StorageFailed
from prefect_seedream.tasks.seedream_input import (
    SCHEMA_CHECKED,
    SeedreamInput,
    describe_errors,
    output_dimensions,
)


def build_request(
    prompt: str, *, size: str, aspect_ratio: str, width: int | None, height: int | None,
    max_images: int, enhance_prompt: bool | None, image_input: list[str] | None = None,
) -> SeedreamInput:
    """The Seedream input for a flow's arguments; `max_images > 1` means sequential generation."""
    fields: dict[str, Any] = {
        "prompt": prompt, "size": size, "width": width, "height": height,
        "aspect_ratio": None if size == "custom" else aspect_ratio,
        "max_images": max_images, "enhance_prompt": enhance_prompt,
        "sequential_image_generation": "auto" if max_images > 1 else "disabled",
        "image_input": image_input,
    }
    try:
        # The model's published schema checks enums and ranges (`checked_request`).
        return SeedreamInput.model_validate({k: v for k, v in fields.items() if v is not None},
                                            context=SCHEMA_CHECKED)
    except ValidationError as exc:
        raise InvalidInput(f"invalid Seedream input: {describe_errors(exc)}") from exc


def check_bucket(destination: S3Destination) -> None:
    """Fail before paying if the outputs could not be stored."""
    try:
        destination.get_client().head_bucket(Bucket=destination.bucket)
    except Exception as exc:
        raise StorageFailed(
            f"cannot write to bucket {destination.bucket!r} ({type(exc).__name__}); fix the "
            "S3Destination before generating, or the paid images would be lost",
            prediction_id=None,
        ) from exc


class PreparedEdit(NamedTuple):
    """An edit ready to create: the request this attempt sends, what its sources are (the
    same on every attempt, for the prediction ledger) and the output size to expect."""

    request: SeedreamInput
    sources: list[str]
    expected_size: tuple[int, int] | None


def prepare_edit(
    instruction: str, images: list[str], destination: S3Destination, *, timeout_seconds: float,
    **options: Any,
) -> PreparedEdit:
    """Presign the sources, build the request and work out the output size to expect.

    Raises:
        InvalidInput: `images` is empty (an edit needs the image it edits); nothing is sent.
    """
    if not images:
        raise InvalidInput("edit_image needs at least one image in `images` (s3:// URIs or "
                           "https URLs); to make an image from text alone, use generate_images.")
    sources = presign_sources(images, destination, expires_in=int(timeout_seconds) + 900)
    request = build_request(instruction, image_input=sources.urls, **options)
    try:
        expected = output_dimensions(request, first_image_size(sources.urls[0]))
    except ValueError:
        expected = None  # the source's size could not be read; the output is still checked
    return PreparedEdit(request, sources.identities, expected)


def worth_another_prediction(exc: PredictionFailed, attempt: int, retries: int) -> bool:
    """Replicate's "Prediction interrupted; please retry (code: PA)" earns a new prediction,
    `retries` times at most; any other failure (content policy, bad input) does not."""
    if exc.interrupted and attempt < retries:
        from prefect_seedream.tasks.connections import _log

        _log().warning("Prediction %s was interrupted by Replicate; trying a new one (%d of %d)",
                       exc.prediction_id, attempt + 1, retries)
        return True
    return False
