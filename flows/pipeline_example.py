"""A downstream pipeline, composed with the Seedream flows three ways: a contact sheet.

A contact sheet is one JPEG with a thumbnail of every image of a set, stored next to them under
`{prefix}/contact-sheets/{name}.jpg`. The same task is reached three ways:

1. **Tasks inside your flow**: `catalogue_with_contact_sheet` calls `create_prediction`,
   `await_prediction` and `store_outputs`, then `make_contact_sheet`.
2. **`run_deployment`**: `catalogue_via_deployment` runs the `generate-images/on-request`
   deployment as a child run (an idempotency key makes a retried parent re-attach to the same
   child instead of paying again), checks the child's final state, then makes the sheet.
3. **An event trigger**: the `make-contact-sheet/on-images-stored` deployment runs
   `contact_sheet` for every `seedream.images.stored` event (see deployments/contact_sheet.py).
"""

# No `from __future__ import annotations`: Prefect validates parameters against these
# annotations, and a runner that loads this file by path must find real types, not strings.

import io
import math
import tempfile
from typing import IO, TYPE_CHECKING, Any, cast

from PIL import Image
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from prefect_seedream.blocks.prefect_aws_adapter import S3BucketBlock
from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
from prefect_seedream.blocks.s3_destination import S3Destination, join_key_parts, parse_s3_uri
from prefect_seedream.flows.events import emit_images_failed, emit_images_stored
from prefect_seedream.flows.run_hooks import cancel_open_predictions
from prefect_seedream.flows.source_images import SourceRefused
from prefect_seedream.tasks.connections import resolve_destination
from prefect_seedream.tasks.errors import InvalidInput, SeedreamError
from prefect_seedream.tasks.predictions import await_prediction, create_prediction
from prefect_seedream.tasks.s3_storage.keys import check_key, check_segment, key_in_prefix
from prefect_seedream.tasks.seedream_input import SeedreamInput, output_dimensions
from prefect_seedream.tasks.seedream_settings import get_settings
from prefect_seedream.tasks.storage import store_outputs

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

_IMAGE_SUFFIXES = (".jpg", ".png", ".webp", ".gif")


class ContactSheet(BaseModel):
    """A stored contact sheet."""

    model_config = ConfigDict(frozen=True)

    uri: str
    width: int
    height: int
    images: int


class ChildRunFailed(SeedreamError):
    """A deployment run this pipeline depends on did not complete."""


def sheet_layout(count: int, columns: int, thumb: int, gap: int) -> tuple[int, int, int]:
    """(columns used, sheet width, sheet height) for `count` thumbnails of `thumb` px.

    Example:
        ```python
        from prefect_seedream.flows.pipeline_example import sheet_layout

        assert sheet_layout(3, 4, 100, 10) == (3, 340, 120)
        ```
    """
    if count < 1:
        raise ValueError("a contact sheet needs at least one image")
    used = min(columns, count)
    rows = math.ceil(count / used)
    return used, used * thumb + (used + 1) * gap, rows * thumb + (rows + 1) * gap


class _Sheet:
    """A contact sheet being filled one thumbnail at a time, so only one image is decoded at
    once and none is held as bytes longer than it takes to shrink it."""

    def __init__(self, count: int, *, columns: int, thumb: int, gap: int) -> None:
        self.used, width, height = sheet_layout(count, columns, thumb, gap)
        self.thumb, self.gap = thumb, gap
        self.image = Image.new("RGB", (width, height), "white")

    def paste(self, index: int, data: IO[bytes]) -> None:
        thumb, gap = self.thumb, self.gap
        with Image.open(data) as source:
            source.draft("RGB", (thumb, thumb))  # JPEGs decode at a fraction of their size
            picture = source.convert("RGB")
        picture.thumbnail((thumb, thumb))
        row, col = divmod(index, self.used)
        left = gap + col * (thumb + gap) + (thumb - picture.width) // 2
        top = gap + row * (thumb + gap) + (thumb - picture.height) // 2
        self.image.paste(picture, (left, top))

    def encode(self) -> bytes:
        out = io.BytesIO()
        self.image.save(out, "JPEG", quality=85)
        return out.getvalue()


def render_sheet(images: list[bytes], *, columns: int = 4, thumb: int = 256,
                 gap: int = 8) -> bytes:
    """A JPEG grid of `images` (encoded bytes), each fitted into a `thumb` px square (pure)."""
    sheet = _Sheet(len(images), columns=columns, thumb=thumb, gap=gap)
    for index, data in enumerate(images):
        sheet.paste(index, io.BytesIO(data))
    return sheet.encode()


def _sheet_keys(uris: list[str], destination: S3Destination, name: str) -> tuple[list[str], str]:
    """The keys a contact sheet reads and the key it writes, every one checked before any
    request: `name` passes the key rule, and each URI is an object under the destination's
    prefix (the same answer whether or not it exists)."""
    check_segment(name, "the contact sheet's name")
    limit = get_settings().contact_sheet_max_images
    if isinstance(uris, str) or not uris:
        raise InvalidInput("a contact sheet needs a list of at least one s3:// image URI")
    if len(uris) > limit:
        raise InvalidInput(f"a contact sheet reads at most {limit} images, got {len(uris)} "
                           "(SEEDREAM_CONTACT_SHEET_MAX_IMAGES)")
    home = destination.uri(join_key_parts(destination.prefix))
    keys = []
    for index, uri in enumerate(uris):
        try:
            bucket, key = parse_s3_uri(uri)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"images[{index}] is not an s3:// URI") from exc
        if bucket != destination.bucket or not key_in_prefix(destination.prefix, key):
            raise SourceRefused(f"images[{index}] is not an object under this destination "
                                f"({home.rstrip('/')}/); a contact sheet reads only images "
                                "stored there")
        keys.append(key)
    sheet_key = check_key(destination.join_key("contact-sheets", f"{name}.jpg"))
    return keys, sheet_key


def _read_capped(destination: S3Destination, key: str, index: int, limit: int,
                 spool: IO[bytes]) -> None:
    """Stream one object into `spool`, refusing it past `limit` bytes."""
    obj = destination.get_client().get_object(Bucket=destination.bucket, Key=key)
    body = obj["Body"]
    too_big = InvalidInput(f"images[{index}] is larger than {limit} bytes "
                           "(SEEDREAM_CONTACT_SHEET_MAX_IMAGE_BYTES)")
    try:
        if int(obj.get("ContentLength") or 0) > limit:
            raise too_big
        read = 0
        for chunk in iter(lambda: body.read(1024 * 1024), b""):
            read += len(chunk)
            if read > limit:
                raise too_big
            spool.write(chunk)
    finally:
        body.close()
    spool.seek(0)


@task(name="Make contact sheet", description="Renders a grid of thumbnails of S3 images into S3.",
      cache_policy=NO_CACHE)
def make_contact_sheet(uris: list[str], destination: S3Destination, name: str, *,
                       columns: int = 4, thumb: int = 256) -> ContactSheet:
    """Read `uris` from S3, render their contact sheet, store it at
    `{destination.prefix}/contact-sheets/{name}.jpg` (overwriting: the same name, the same sheet).

    Only objects under the destination's prefix are read (anything else is refused before any
    request, with the same message whether or not it exists), at most
    `SEEDREAM_CONTACT_SHEET_MAX_IMAGES` of them, each streamed through a temporary file and
    refused past `SEEDREAM_CONTACT_SHEET_MAX_IMAGE_BYTES`. `name` (a prediction id, when an
    event triggers this) must pass the key rule of `tasks.s3_storage.keys`.
    """
    keys, sheet_key = _sheet_keys(uris, destination, name)
    limit = get_settings().contact_sheet_max_image_bytes
    sheet = _Sheet(len(keys), columns=columns, thumb=thumb, gap=8)
    for index, key in enumerate(keys):
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
            _read_capped(destination, key, index, limit, spool)
            sheet.paste(index, spool)
    destination.get_client().put_object(Bucket=destination.bucket, Key=sheet_key,
                                        Body=sheet.encode(), ContentType="image/jpeg")
    width, height = sheet.image.size
    made = ContactSheet(uri=destination.uri(sheet_key), width=width, height=height,
                        images=len(keys))
    get_run_logger().info("Contact sheet of %d image(s): %s", len(keys), made.uri)
    return made


@flow(name="make-contact-sheet",
      description="Makes a contact sheet of stored images (run by seedream.images.stored).")
def contact_sheet(images: list[str], name: str,
                  destination: S3Destination | S3BucketBlock | str | None = None) -> ContactSheet:
    """Make the contact sheet of `images` (s3:// URIs) named `name`.

    Example:
        ```python
        from prefect_seedream.flows.pipeline_example import contact_sheet

        contact_sheet(["s3://my-images/seedream/p1/0.jpg"], name="p1", destination="images")
        ```
    """
    return make_contact_sheet(images, resolve_destination(destination), name)


@flow(name="catalogue-with-contact-sheet",
      description="Generates images with the Seedream tasks, then makes their contact sheet.",
      on_cancellation=[cancel_open_predictions],
      on_crashed=[cancel_open_predictions, emit_images_failed],
      on_failure=[emit_images_failed])
def catalogue_with_contact_sheet(
    prompt: str, *, size: str = "1K", aspect_ratio: str = "1:1", max_images: int = 4,
    credentials: ReplicateCredentials | str | None = None,
    destination: S3Destination | S3BucketBlock | str | None = None, timeout_seconds: float = 600,
) -> ContactSheet:
    """Composition 1: the Seedream tasks called inside your own flow."""
    target = resolve_destination(destination)
    request = SeedreamInput.model_validate({
        "prompt": prompt, "size": size, "aspect_ratio": aspect_ratio, "max_images": max_images,
        "sequential_image_generation": "auto" if max_images > 1 else "disabled",
    })
    created = create_prediction(request, credentials=credentials, ledger=target)
    finished = await_prediction(created, credentials=credentials, timeout_seconds=timeout_seconds)
    stored = store_outputs(finished, target, expected_size=output_dimensions(request))
    emit_images_stored(finished, stored)  # what the Seedream flows do, so triggers see it too
    return make_contact_sheet([image.uri for image in stored], target, f"catalogue-{finished.id}")


def _stored_under(destination: S3Destination, prefix: str) -> list[str]:
    client = destination.get_client()
    found: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=destination.bucket, Prefix=prefix.rstrip("/") + "/"
    ):
        for item in page.get("Contents", []):
            key = str(item["Key"])
            if (key.endswith(_IMAGE_SUFFIXES) and "/_incomplete/" not in key
                    and "/thumbs/" not in key):  # SEEDREAM_STORE_THUMBNAILS previews
                found.append(destination.uri(key))
    return sorted(found)


@flow(name="catalogue-via-deployment",
      description="Runs the generate-images deployment as a child run, then makes a contact sheet.")
def catalogue_via_deployment(
    prompt: str, *, size: str = "1K", aspect_ratio: str = "1:1", max_images: int = 4,
    deployment: str = "generate-images/on-request",
    destination: S3Destination | S3BucketBlock | str | None = None, timeout_seconds: float = 900,
) -> ContactSheet:
    """Composition 2: `run_deployment`, with an idempotency key and a check of the child's state.

    The child writes under a key prefix unique to this parent run, which is where the sheet's
    images are then found: no result storage has to be shared between the two runs.
    """
    from prefect.deployments import run_deployment
    from prefect.runtime import flow_run

    target = resolve_destination(destination)
    run_id = str(flow_run.id)
    key_prefix = join_key_parts("catalogues", run_id)  # the child nests it under its prefix
    parameters: dict[str, Any] = {
        "prompt": prompt, "size": size, "aspect_ratio": aspect_ratio, "max_images": max_images,
        "key_prefix": key_prefix,
    }
    child = cast("FlowRun", run_deployment(
        deployment, parameters=parameters, timeout=timeout_seconds, as_subflow=True,
        idempotency_key=f"{run_id}:generate",  # a retried parent re-attaches; never pays twice
    ))
    state = child.state
    if state is None or not state.is_completed():
        raise ChildRunFailed(
            f"{deployment} run {child.id} ended {state.name if state else 'without a state'}: "
            f"{state.message if state else ''}; see that run's logs"
        )
    uris = _stored_under(target, target.join_key(key_prefix))
    if not uris:
        raise ChildRunFailed(f"{deployment} run {child.id} completed but stored no images under "
                             f"{key_prefix!r}")
    return make_contact_sheet(uris, target, f"catalogue-{run_id}")


__all__ = [
    "ChildRunFailed",
    "ContactSheet",
    "catalogue_via_deployment",
    "catalogue_with_contact_sheet",
    "contact_sheet",
    "make_contact_sheet",
    "render_sheet",
    "sheet_layout",
]
