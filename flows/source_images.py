"""Preparing edit sources: s3:// URIs become short-lived presigned URLs, checked before paying."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
from PIL import ImageFile

from prefect_seedream.blocks.s3_destination import parse_s3_uri
from prefect_seedream.tasks.errors import InvalidInput

if TYPE_CHECKING:
    from prefect_seedream.blocks.s3_destination import S3Destination

_HEADER_BYTES = 256 * 1024


def presign_sources(images: list[str], destination: S3Destination, *, expires_in: int) -> list[str]:
    """Presign every `s3://` source (after checking it exists); pass http(s) URLs through.

    Raises `InvalidInput` naming the source when an object is missing or a value is neither.
    """
    if isinstance(images, str):
        raise InvalidInput("images must be a list of s3:// URIs or https URLs, not one string")
    urls = []
    client = destination.get_client()
    for i, source in enumerate(images):
        if source.startswith("s3://"):
            try:
                bucket, key = parse_s3_uri(source)
            except ValueError as exc:
                raise InvalidInput(f"images[{i}]: {exc}") from exc
            try:
                client.head_object(Bucket=bucket, Key=key)
            except Exception as exc:
                raise InvalidInput(
                    f"images[{i}]: cannot read {source} ({type(exc).__name__}); "
                    "check the URI and that the destination's credentials can read it"
                ) from exc
            urls.append(destination.presign_get(source, expires_in=expires_in))
        elif source.startswith(("https://", "http://")):
            urls.append(source)
        else:
            raise InvalidInput(f"images[{i}] must be an s3:// URI or an https URL")
    return urls


def first_image_size(url: str) -> tuple[int, int]:
    """Width and height of the image at `url`, read from its first bytes only.

    Raises ValueError when the header cannot be read.
    """
    parser = ImageFile.Parser()
    try:
        with httpx.stream("GET", url, headers={"Range": f"bytes=0-{_HEADER_BYTES - 1}"},
                          timeout=15.0) as response:
            if response.status_code >= 400:
                raise ValueError(f"HTTP {response.status_code}")
            read = 0
            for chunk in response.iter_bytes():
                parser.feed(chunk)
                read += len(chunk)
                if parser.image is not None or read >= _HEADER_BYTES:
                    break
    except httpx.HTTPError as exc:
        raise ValueError(type(exc).__name__) from exc
    if parser.image is None:
        raise ValueError("no image header in the first bytes")
    width, height = parser.image.size
    return int(width), int(height)
