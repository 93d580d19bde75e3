"""Small JPEG previews of output images, made from the chunks already streaming to S3.

Pure code (no I/O). `Thumbnailer` sees every chunk of an upload once, like `ImageProbe`:

- JPEG (what Seedream returns): the header is parsed as soon as it has arrived, the decoder is
  put in draft mode (`Image.draft("RGB", (side, side))`, libjpeg's DCT scaling: a 4096x4096
  output is decoded at 512x512) and then fed chunk by chunk, so neither the file nor a
  full-size bitmap is ever held; memory is the reduced bitmap plus one chunk.
- PNG, WebP and GIF cannot be decoded at a reduced size: their bytes are buffered (at most
  `MAX_BUFFERED_BYTES`) and decoded whole at the end (at most `MAX_FULL_DECODE_PIXELS`, about
  64 MB of RGBA); past either bound there is no preview, with a note saying why.

Store first, judge after: a thumbnailer never raises. Whatever goes wrong (an unusual JPEG, a
preview that cannot get under its byte cap) only leaves `preview()` returning None and `note`
saying why; the image itself is stored exactly as without previews.
"""

from __future__ import annotations

import base64
import io
import warnings
from typing import Any

from PIL import Image

#: The longest side of a preview, in pixels.
PREVIEW_SIDE = 256
#: Non-JPEG outputs are buffered whole for their preview; past this, none is made.
MAX_BUFFERED_BYTES = 32 * 1024 * 1024
#: Non-JPEG outputs are decoded at full size; past this many pixels, no preview is made.
MAX_FULL_DECODE_PIXELS = 4096 * 4096
#: Tried in order until the JPEG fits the byte cap: (longest side, quality).
_ATTEMPTS = ((256, 75), (256, 55), (192, 50), (128, 45), (96, 35))
_FIRST_TRY = 1024


def encode_preview(image: Image.Image, max_bytes: int) -> bytes | None:
    """The smallest-effort JPEG of `image` at most `max_bytes` long, or None if none fits.

    Example:
        ```python
        from PIL import Image
        from prefect_seedream.tasks.s3_storage.previews import encode_preview

        jpeg = encode_preview(Image.new("RGB", (1024, 576), "teal"), 8192)
        assert jpeg is not None and len(jpeg) <= 8192 and jpeg[:2] == b"\\xff\\xd8"
        ```
    """
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGBA").convert("RGB") if "A" in image.getbands() or \
            image.mode == "P" else image.convert("RGB")
    for side, quality in _ATTEMPTS:
        small = image.copy()
        small.thumbnail((side, side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        small.save(out, "JPEG", quality=quality, optimize=True)
        if out.tell() <= max_bytes:
            return out.getvalue()
    return None


def preview_data_uri(preview: str) -> str:
    """The `data:` URI of a base64 JPEG preview (what an artifact's image cell shows)."""
    return f"data:image/jpeg;base64,{preview}"


class Thumbnailer:
    """Makes a preview of an image from its chunks, fed in order; never raises.

    Example:
        ```python
        import io
        from PIL import Image
        from prefect_seedream.tasks.s3_storage.previews import Thumbnailer

        buf = io.BytesIO()
        Image.new("RGB", (2048, 2048), "orange").save(buf, "JPEG")
        thumbs = Thumbnailer(max_bytes=8192)
        for start in range(0, buf.tell(), 65536):
            thumbs.feed(buf.getvalue()[start : start + 65536])
        assert thumbs.preview() is not None and thumbs.note is None
        ```
    """

    def __init__(self, max_bytes: int, side: int = PREVIEW_SIDE) -> None:
        self.max_bytes, self.side = max_bytes, side
        self.note: str | None = None
        self._data = bytearray()
        self._next_try = _FIRST_TRY
        self._image: Image.Image | None = None
        self._decoder: Any = None
        self._skip = 0
        self._jpeg: bool | None = None
        self._done = False

    def _give_up(self, why: str) -> None:
        self.note, self._done = f"no preview: {why}", True
        self._data, self._image, self._decoder = bytearray(), None, None

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the image."""
        if self._done or not chunk:
            return
        try:
            self._feed(chunk)
        except Exception as exc:  # a preview never fails a store
            self._give_up(f"{type(exc).__name__} while decoding")

    def _feed(self, chunk: bytes) -> None:
        self._data += chunk
        if self._jpeg is None and len(self._data) >= 3:
            self._jpeg = bytes(self._data[:3]) == b"\xff\xd8\xff"
        if self._decoder is not None:
            self._decode()
        elif not self._jpeg:
            if len(self._data) > MAX_BUFFERED_BYTES:
                self._give_up(f"not a JPEG and larger than {MAX_BUFFERED_BYTES} bytes")
        elif len(self._data) >= self._next_try:
            self._next_try = len(self._data) * 4
            self._start_jpeg()

    def _start_jpeg(self) -> None:
        """Open the header, switch the decoder to draft (reduced) size, start decoding."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we decode it reduced
            try:
                image = Image.open(io.BytesIO(bytes(self._data)))
            except OSError:
                return  # not enough of the header yet
        image.draft("RGB", (self.side, self.side))
        if len(image.tile) != 1:
            self._give_up("a JPEG Pillow cannot decode incrementally")
            return
        image.load_prepare()
        decoder_name, extents, offset, args = image.tile[0]
        image.tile = []
        decoder = Image._getdecoder(image.mode, decoder_name, args, image.decoderconfig)
        decoder.setimage(image.im, extents)
        self._image, self._decoder = image, decoder
        self._skip = offset
        self._decode()

    def _decode(self) -> None:
        if self._skip:
            take = min(self._skip, len(self._data))
            del self._data[:take]
            self._skip -= take
            if self._skip or not self._data:
                return
        consumed, error = self._decoder.decode(bytes(self._data))
        if consumed < 0:
            self._decoder = None
            self._data = bytearray()
            if error < 0:
                self._give_up(f"the JPEG decoder stopped (error {error})")
            else:
                self._done = True
            return
        del self._data[:consumed]

    def _finish_image(self) -> Image.Image | None:
        if self._jpeg:
            if self._image is None:
                self._start_jpeg()  # a small file never reached the next header attempt
            if self._decoder is not None:
                self._decode()  # flush what is left; sets _done at the end of the image
            if self._image is None or self._decoder is not None:
                self._give_up("the JPEG ended before it could be decoded")
                return None
            return self._image
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(bytes(self._data)))
            if image.width * image.height > MAX_FULL_DECODE_PIXELS:
                self._give_up(f"{image.width}x{image.height} is too large to decode whole "
                              "(only JPEG previews are made at reduced size)")
                return None
            image.load()
        return image

    def preview(self) -> bytes | None:
        """The preview JPEG (at most `max_bytes`), once every chunk was fed; None and `note`
        when there is none."""
        if self.note is not None:
            return None
        try:
            image = self._finish_image()
            if image is None:
                return None
            jpeg = encode_preview(image, self.max_bytes)
        except Exception as exc:  # a preview never fails a store
            self._give_up(f"{type(exc).__name__} while decoding")
            return None
        finally:
            self._data, self._image, self._decoder = bytearray(), None, None
        if jpeg is None:
            self._give_up(f"no JPEG of it fits in {self.max_bytes} bytes "
                          "(SEEDREAM_PREVIEW_MAX_BYTES)")
        return jpeg

    def preview_base64(self) -> str | None:
        """`preview()` as base64 text (what `StoredImage.preview` holds)."""
        jpeg = self.preview()
        return base64.b64encode(jpeg).decode("ascii") if jpeg is not None else None


__all__ = [
    "MAX_BUFFERED_BYTES",
    "MAX_FULL_DECODE_PIXELS",
    "PREVIEW_SIDE",
    "Thumbnailer",
    "encode_preview",
    "preview_data_uri",
]
