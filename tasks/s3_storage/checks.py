"""Memory-bounded image checks for bytes that stream past: type, dimensions, completeness.

Pure code (no I/O). `ImageProbe` sees every chunk of a download once and keeps only the header
(at most `MAX_HEADER_BYTES`) and the last few bytes, so checking a 30 MB image costs about the
same memory as checking a 30 kB one.

Trade-off: the probe parses the header with Pillow (format, width, height) and checks the
format's end marker (JPEG EOI, PNG IEND, WebP RIFF length, GIF trailer). That catches the
failures that happen in practice (wrong type, wrong size, a truncated transfer) but not
corrupted pixel data in the middle of a complete file; catching that would need a full decode,
which holds the whole bitmap in memory (~64 MB for a 4096x4096 RGBA image) and costs seconds of
CPU per output.
"""

from __future__ import annotations

import io
import struct
import warnings

from PIL import Image

#: The header (JPEG markers up to SOS, EXIF included) must appear within this many bytes.
MAX_HEADER_BYTES = 1024 * 1024

_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class ImageCheckError(ValueError):
    """The bytes are not a supported, decodable image (the caller adds prediction and index)."""


class ImageIncomplete(ImageCheckError):
    """The stream ended before the image's end marker: most likely a truncated transfer."""


class ImageTooLarge(ImageCheckError):
    """The stream passed the size cap (`SEEDREAM_MAX_OUTPUT_BYTES`): never stored as an image."""


def sniff_content_type(head: bytes) -> str:
    """Return the MIME type of an image from its first bytes (magic numbers), not its URL.

    Args:
        head: The first bytes of the file; 12 are enough.

    Returns:
        One of `image/jpeg`, `image/png`, `image/webp`, `image/gif`.

    Raises:
        ImageCheckError: If the bytes are none of those formats.

    Example:
        ```python
        from prefect_seedream.tasks.s3_storage.checks import sniff_content_type

        assert sniff_content_type(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8)) == "image/png"
        ```
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(_PNG_SIGNATURE):
        return "image/png"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    raise ImageCheckError(
        f"Not a JPEG, PNG, WebP or GIF image (starts with {head[:12]!r})."
    )


def extension_for(content_type: str) -> str:
    """Return the file extension (`jpg`, `png`, `webp`, `gif`) for an image MIME type.

    Example:
        ```python
        from prefect_seedream.tasks.s3_storage.checks import extension_for

        assert extension_for("image/jpeg") == "jpg"
        ```
    """
    try:
        return _EXTENSIONS[content_type]
    except KeyError:
        raise ValueError(f"No extension for content type {content_type!r}.") from None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """Canvas size from a WebP header (VP8X, VP8 or VP8L chunk), or None if too short."""
    if len(head) < 30:
        return None
    fourcc = head[12:16]
    if fourcc == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    if fourcc == b"VP8 ":
        if head[23:26] != b"\x9d\x01\x2a":
            raise ImageCheckError("Malformed WebP (VP8) header.")
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if fourcc == b"VP8L":
        if head[20] != 0x2F:
            raise ImageCheckError("Malformed WebP (VP8L) header.")
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ImageCheckError(f"Unsupported WebP chunk {fourcc!r}.")


def parse_dimensions(head: bytes, content_type: str) -> tuple[int, int] | None:
    """Return `(width, height)` from an image header, or None if `head` is too short yet.

    Pillow opens images lazily: only the header is read, no pixels are decoded.

    Raises:
        ImageCheckError: If the header is malformed.

    Example:
        ```python
        import io
        from PIL import Image
        from prefect_seedream.tasks.s3_storage.checks import parse_dimensions

        buf = io.BytesIO()
        Image.new("RGB", (64, 32)).save(buf, "PNG")
        assert parse_dimensions(buf.getvalue()[:64], "image/png") == (64, 32)
        ```
    """
    if content_type == "image/webp":
        return _webp_size(head)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we never decode
            with Image.open(io.BytesIO(head)) as image:
                width, height = image.size
    except (OSError, SyntaxError, ValueError, struct.error, IndexError):
        return None  # maybe just too short; `ImageProbe` decides when to give up
    except Image.DecompressionBombError as exc:
        raise ImageCheckError(str(exc)) from exc
    if width <= 0 or height <= 0:
        raise ImageCheckError(f"Image header declares an empty image ({width}x{height}).")
    return width, height


def has_end_marker(tail: bytes, content_type: str, total_size: int, riff_size: int | None) -> bool:
    """Whether the last bytes of a stream close the image (so the transfer was complete).

    Example:
        ```python
        from prefect_seedream.tasks.s3_storage.checks import has_end_marker

        assert has_end_marker(b"...\\xff\\xd9", "image/jpeg", 1000, None)
        assert not has_end_marker(b"...\\x12\\x34", "image/jpeg", 1000, None)
        ```
    """
    if content_type == "image/jpeg":
        return b"\xff\xd9" in tail[-32:]  # EOI; tolerate a few bytes of trailing padding
    if content_type == "image/png":
        return tail.endswith(_PNG_IEND)
    if content_type == "image/webp":
        return riff_size is not None and total_size == riff_size + 8
    if content_type == "image/gif":
        return tail.endswith(b";")
    return False


def size_note(width: int, height: int, expected: tuple[int, int] | None) -> str | None:
    """What to record when a stored image is not the size that was predicted (else None)."""
    if expected is None or (width, height) == tuple(expected):
        return None
    return (f"the image is {width}x{height}, not the {expected[0]}x{expected[1]} Seedream's "
            "size table predicts; stored at its real size")


class ImageProbe:
    """Watches a byte stream go by and checks that it is one complete image.

    Feed every chunk in order with `feed()`, then call `finish()`. Memory use is bounded by
    `MAX_HEADER_BYTES` plus 32 bytes of tail, whatever the image size. With `max_bytes`, the
    byte that passes it raises `ImageTooLarge` (however valid its header and end marker).

    Example:
        ```python
        import io
        from PIL import Image
        from prefect_seedream.tasks.s3_storage.checks import ImageProbe

        buf = io.BytesIO()
        Image.new("RGB", (640, 480)).save(buf, "JPEG")
        probe = ImageProbe()
        for start in range(0, len(buf.getvalue()), 1000):
            probe.feed(buf.getvalue()[start : start + 1000])
        probe.finish()
        assert (probe.content_type, probe.width, probe.height) == ("image/jpeg", 640, 480)
        ```
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self._head = bytearray()
        self._tail = b""
        self._next_try = 64
        self.size_bytes = 0
        self.content_type: str | None = None
        self.width: int | None = None
        self.height: int | None = None

    @property
    def header_ready(self) -> bool:
        """Whether type and dimensions are known."""
        return self.width is not None

    def feed(self, chunk: bytes) -> None:
        """Account for the next chunk of the stream.

        Raises:
            ImageCheckError: As soon as the bytes are known not to be a supported image.
        """
        if not chunk:
            return
        self.size_bytes += len(chunk)
        if self.max_bytes is not None and self.size_bytes > self.max_bytes:
            raise ImageTooLarge(
                f"The output is larger than the {self.max_bytes}-byte cap "
                "(SEEDREAM_MAX_OUTPUT_BYTES); it was not stored as an image."
            )
        self._tail = (self._tail + chunk[-32:])[-32:]
        if self.header_ready:
            return
        self._head += chunk[: MAX_HEADER_BYTES - len(self._head)]
        if self.content_type is None and len(self._head) >= 12:
            self.content_type = sniff_content_type(bytes(self._head[:12]))
        if self.content_type is not None and len(self._head) >= self._next_try:
            self._try_parse()
            self._next_try = max(self._next_try * 4, len(self._head) + 1)
            if not self.header_ready and len(self._head) >= MAX_HEADER_BYTES:
                raise ImageCheckError(
                    f"No readable image header in the first {MAX_HEADER_BYTES} bytes."
                )

    def _try_parse(self) -> None:
        assert self.content_type is not None
        size = parse_dimensions(bytes(self._head), self.content_type)
        if size is not None:
            self.width, self.height = size
            del self._head[16:]  # keep only what the end-marker check needs

    def finish(self) -> None:
        """Check the stream, now ended, held one complete image.

        Raises:
            ImageIncomplete: If the end marker is missing (a truncated transfer).
            ImageCheckError: If the bytes are empty, of an unknown type, or have no header.
        """
        if self.size_bytes == 0:
            raise ImageCheckError("The output is empty (0 bytes).")
        if self.content_type is None:
            self.content_type = sniff_content_type(bytes(self._head))
        if not self.header_ready:
            self._try_parse()
        if not self.header_ready:
            if not has_end_marker(self._tail, self.content_type, self.size_bytes, self._riff()):
                raise ImageIncomplete("The download ended inside the image header.")
            raise ImageCheckError(f"Cannot read the {self.content_type} image header.")
        if not has_end_marker(self._tail, self.content_type, self.size_bytes, self._riff()):
            raise ImageIncomplete(
                f"The {self.content_type} image ends without its end marker after "
                f"{self.size_bytes} bytes (truncated download)."
            )

    def _riff(self) -> int | None:
        if self.content_type != "image/webp" or len(self._head) < 8:
            return None
        return int.from_bytes(self._head[4:8], "little")


__all__ = [
    "MAX_HEADER_BYTES",
    "ImageCheckError",
    "ImageIncomplete",
    "ImageProbe",
    "ImageTooLarge",
    "extension_for",
    "has_end_marker",
    "parse_dimensions",
    "size_note",
    "sniff_content_type",
]
