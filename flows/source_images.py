"""Preparing edit sources: s3:// URIs become short-lived presigned URLs, checked before paying.

Each attempt presigns afresh, so what is sent differs from one attempt to the next; what each
source *is* (`prediction_ledger.source_identity`: an S3 object by its URI and ETag, read with the
same HEAD that checks it exists) does not, and names the request in the prediction ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from PIL import ImageFile

from prefect_seedream.blocks.s3_destination import parse_s3_uri
from prefect_seedream.tasks.errors import InvalidInput
from prefect_seedream.tasks.prediction_ledger import source_identity

if TYPE_CHECKING:
    from prefect_seedream.blocks.s3_destination import S3Destination

_HEADER_BYTES = 256 * 1024


@dataclass(frozen=True)
class PresignedSources:
    """Edit sources ready for one attempt.

    Attributes:
        urls: What is sent as `image_input`: presigned URLs for `s3://` sources (never log
            them), others as given.
        identities: What each source is, the same on every attempt (`source_identity`); pass
            them as `create_prediction(sources=...)`.
    """

    urls: list[str]
    identities: list[str]


def presign_sources(
    images: list[str], destination: S3Destination, *, expires_in: int
) -> PresignedSources:
    """Presign every `s3://` source (after checking it exists); pass http(s) URLs through.

    Raises `InvalidInput` naming the source when an object is missing or a value is neither.
    """
    if isinstance(images, str):
        raise InvalidInput("images must be a list of s3:// URIs or https URLs, not one string")
    urls, identities = [], []
    client = destination.get_client()
    for i, source in enumerate(images):
        if source.startswith("s3://"):
            try:
                bucket, key = parse_s3_uri(source)
            except ValueError as exc:
                raise InvalidInput(f"images[{i}]: {exc}") from exc
            try:
                head = client.head_object(Bucket=bucket, Key=key)
            except Exception as exc:
                raise InvalidInput(
                    f"images[{i}]: cannot read {source} ({type(exc).__name__}); "
                    "check the URI and that the destination's credentials can read it"
                ) from exc
            urls.append(destination.presign_get(source, expires_in=expires_in))
            identities.append(source_identity(source, head.get("ETag")))
        elif source.startswith(("https://", "http://")):
            urls.append(source)
            identities.append(source_identity(source))
        else:
            raise InvalidInput(f"images[{i}] must be an s3:// URI or an https URL")
    return PresignedSources(urls, identities)


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
