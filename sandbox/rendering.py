"""Rendering output JPEGs that show their prompt and index, spoiling them on demand, caching.

Outputs are rendered lazily on first download: a gradient (or the first input image,
resized and cropped, for edits) plus grain so the JPEG has a realistic size, with the
prompt and the image number drawn on top. `corrupt_outputs` spoils a file one of the
`CORRUPTIONS` ways instead, before it is cached: every download of it is spoiled (byte for byte
the same while it stays cached; the grain is random, so a re-render differs).
"""

from __future__ import annotations

import hashlib
import io
import textwrap
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from PIL import Image, ImageDraw, ImageFont, ImageOps

from prefect_seedream.sandbox.input_images import decode

_TILE = 512
# How `Faults.corrupt_outputs` spoils an output file: an HTML error page in its place, the
# JPEG cut off before its end-of-image marker, or padded with zeros to `OVERSIZED_BYTES`.
CORRUPTIONS: tuple[str, ...] = ("html", "truncated", "oversized")
#: An "oversized" output: valid header and end marker, 80 MiB of zeros between (a bloated file).
OVERSIZED_BYTES = 80 * 1024 * 1024
_END_OF_IMAGE = b"\xff\xd9"
FontType = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font(size: int) -> FontType:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _background(width: int, height: int, key: str) -> Image.Image:
    digest = hashlib.sha256(key.encode()).digest()
    ramp = Image.linear_gradient("L")
    red = ramp.resize((width, height))
    green = ramp.rotate(90 + digest[0] % 180).resize((width, height))
    blue = Image.new("L", (width, height), 60 + digest[1] % 160)
    if digest[2] % 2:
        red = ImageOps.invert(red)
    return Image.merge("RGB", (red, green, blue))


def _grain(image: Image.Image, sigma: float, key: str) -> Image.Image:
    if sigma <= 0:
        return image
    tile = Image.effect_noise((_TILE, _TILE), sigma).convert("RGB")
    offset = hashlib.sha256(key.encode()).digest()[3]
    noise = Image.new("RGB", image.size)
    for x in range(-offset, image.width, _TILE):
        for y in range(0, image.height, _TILE):
            noise.paste(tile, (x, y))
    return Image.blend(image, noise, 0.22)


def render_jpeg(
    width: int,
    height: int,
    prompt: str,
    index: int,
    count: int,
    sources: list[bytes] | None = None,
    quality: int = 90,
    noise_sigma: float = 32.0,
) -> bytes:
    """One output image as JPEG bytes.

    Args:
        width: Width in pixels.
        height: Height in pixels.
        prompt: The prompt or edit instruction, drawn on the image.
        index: Zero-based output index, drawn as "image i/n".
        count: How many outputs the prediction has.
        sources: Encoded input images; the first becomes the background and the others
            are shown as thumbnails.
        quality: JPEG quality.
        noise_sigma: Grain strength; 0 gives a flat, small file.

    Returns:
        The JPEG bytes.
    """
    key = f"{prompt}\x00{index}"
    if sources:
        image = ImageOps.fit(decode(sources[0]), (width, height), Image.Resampling.BILINEAR)
    else:
        image = _background(width, height, key)
    image = _grain(image, noise_sigma, key)
    draw = ImageDraw.Draw(image)
    if sources and len(sources) > 1:
        thumb_side = max(32, min(width, height) // 8)
        for n, data in enumerate(sources[1:]):
            thumb = ImageOps.fit(decode(data), (thumb_side, thumb_side))
            image.paste(thumb, (width - (n + 1) * (thumb_side + 8), height - thumb_side - 8))
    size = max(16, min(width, height) // 24)
    margin = size
    chars = max(12, int((width - 2 * margin) / (size * 0.55)))
    lines = textwrap.wrap(prompt, chars)[:6] or [prompt[:chars]]
    font, big = _font(size), _font(size * 3)
    label = f"image {index + 1}/{count}"
    draw.text((margin, margin), label, font=big, fill="white", stroke_width=max(2, size // 6),
              stroke_fill="black")
    y = margin + size * 4
    for line in lines:
        draw.text((margin, y), line, font=font, fill="white", stroke_width=max(1, size // 8),
                  stroke_fill="black")
        y += int(size * 1.3)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def html_error_page(status: int = 502) -> bytes:
    """An HTTP error page such as a CDN sends in place of a file (served as `image/jpeg`)."""
    title = f"{status} Bad Gateway" if status == 502 else f"{status} Error"
    return (
        "<!DOCTYPE html>\n<!-- Seedream sandbox: corrupt_outputs(kind=\"html\") -->\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f"<body><h1>{title}</h1><p>The origin server returned an invalid response. "
        "Please try again later.</p></body></html>\n"
    ).encode()


def truncated_jpeg(data: bytes) -> bytes:
    """The first half of a JPEG: its headers survive, its end-of-image marker does not."""
    cut = data[: len(data) // 2]
    while cut.endswith(_END_OF_IMAGE):
        cut = cut[:-1]
    return cut


def oversized_jpeg(data: bytes, size: int = OVERSIZED_BYTES) -> bytes:
    """`data` padded with zeros before its end-of-image marker to `size` bytes in all."""
    body = data[:-2] if data.endswith(_END_OF_IMAGE) else data
    return body + bytes(max(0, size - len(body) - 2)) + _END_OF_IMAGE


class FileCache:
    """Rendered files by key, evicted least-recently-used beyond a byte budget.

    Concurrent requests for the same key render it once; the others wait for the result.

    Args:
        max_bytes: Budget for the cached bytes.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._files: OrderedDict[Hashable, bytes] = OrderedDict()
        self._size = 0
        self._rendering: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, render: Callable[[], bytes]) -> bytes:
        """The cached bytes for `key`, rendering them with `render` on a miss."""
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
            key_lock = self._rendering.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._files:
                    return self._files[key]
            data = render()
            with self._lock:
                self._rendering.pop(key, None)
                self._files[key] = data
                self._size += len(data)
                while self._size > self.max_bytes and len(self._files) > 1:
                    _, old = self._files.popitem(last=False)
                    self._size -= len(old)
            return data

    def discard(self, match: Callable[[Hashable], bool] | None = None) -> None:
        """Drop every cached file, or only those whose key matches."""
        with self._lock:
            for key in [k for k in self._files if match is None or match(k)]:
                self._size -= len(self._files.pop(key))
