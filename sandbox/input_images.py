"""Fetching and decoding `image_input` entries the way Replicate does at create time."""

from __future__ import annotations

import base64
import io
import urllib.parse
from dataclasses import dataclass

import httpx
from PIL import Image, UnidentifiedImageError


class InputImageError(ValueError):
    """An `image_input` entry could not be fetched or decoded.

    Args:
        index: Position in `image_input`.
        reason: What went wrong, for the 422 detail.
    """

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"image_input[{index}]: {reason}")
        self.index = index
        self.reason = reason


@dataclass(frozen=True)
class InputImage:
    """One decoded input image.

    Attributes:
        data: The encoded bytes as fetched (decoded again when an output is rendered).
        size: Width and height in pixels.
    """

    data: bytes
    size: tuple[int, int]


def read_data_uri(uri: str) -> bytes:
    """The bytes inside a `data:` URI (base64 or percent-encoded).

    Raises:
        ValueError: The URI has no comma or bad base64.
    """
    header, sep, payload = uri[len("data:"):].partition(",")
    if not sep:
        raise ValueError("data URI has no ',' separating header and data")
    if header.endswith(";base64"):
        return base64.b64decode(payload, validate=False)
    return urllib.parse.unquote_to_bytes(payload)


def fetch_bytes(url: str, client: httpx.Client) -> bytes:
    """The bytes behind an http(s) URL or a data URI.

    Raises:
        ValueError: The fetch failed or answered a non-2xx status.
    """
    if url.startswith("data:"):
        return read_data_uri(url)
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise ValueError(f"could not fetch {_safe(url)}: {type(exc).__name__}") from exc
    if not response.is_success:
        raise ValueError(f"fetching {_safe(url)} answered HTTP {response.status_code}")
    return response.content


def decode(data: bytes) -> Image.Image:
    """Decode image bytes fully into an RGB Pillow image.

    Raises:
        ValueError: The bytes are not an image Pillow can read.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            converted: Image.Image = opened.convert("RGB")
            return converted
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__})") from exc


def load_inputs(urls: list[str], timeout: float) -> list[InputImage]:
    """Fetch and decode every input image, in order.

    Args:
        urls: The `image_input` list.
        timeout: Seconds allowed for each HTTP fetch.

    Returns:
        One `InputImage` per URL.

    Raises:
        InputImageError: Naming the first entry that failed.
    """
    images: list[InputImage] = []
    if not urls:
        return images
    with httpx.Client(timeout=timeout, trust_env=False, follow_redirects=True) as client:
        for index, url in enumerate(urls):
            try:
                data = fetch_bytes(url, client)
                size = decode(data).size
            except ValueError as exc:
                raise InputImageError(index, str(exc)) from exc
            images.append(InputImage(data=data, size=size))
    return images


def _safe(url: str) -> str:
    """The URL without its query string (never echo a presigned signature)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
