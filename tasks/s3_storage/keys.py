"""Pure naming and metadata for stored outputs: deterministic keys, S3-safe user metadata.

The key rule: every part of a key that comes from outside (a caller's `key_prefix`, a prediction
id, a contact sheet's name) is checked segment by segment, so a key always stays under the
destination's prefix and is safe to sync to a disk: no empty, `.` or `..` segments, no
backslashes, no control, format or bidi characters (NUL, U+202E, ...), at most
`MAX_SEGMENT_CHARS` characters a segment, and the whole key within S3's 1024 bytes.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote, urlsplit

from prefect_seedream.blocks.s3_destination import join_key_parts
from prefect_seedream.tasks.errors import InvalidInput
from prefect_seedream.tasks.replicate_client.prediction import Prediction

#: S3 limits user metadata to 2 KB: the UTF-8 bytes of every key and value, summed.
METADATA_LIMIT = 2048
_EXTENSIONS = ("jpg", "png", "webp", "gif")
_PROMPT_SAFE = "!'()*,-./:;=?@_~"

#: S3's own limit on a key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: The longest segment (text between slashes) accepted from outside, in characters.
MAX_SEGMENT_CHARS = 128
#: The longest prefix (the destination's and the caller's, joined), in UTF-8 bytes: what the
#: plugin appends (`batch/_running/{run}/{item}.json`, `{prediction_id}/{index}.jpg`) must fit.
MAX_PREFIX_BYTES = 512
#: Unicode categories refused in a key: control (NUL, newline), format (bidi overrides such as
#: U+202E, zero-width characters), surrogates, private use, unassigned, line/paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class UnsafeKey(InvalidInput, ValueError):
    """A key, or a part of one taken from outside, breaks the key rule; nothing was written.

    An `InvalidInput` (refused before paying) and a `ValueError` (what key builders raise).
    """


def _shown(text: str) -> str:
    """`text` safe to put in an error: ASCII escapes for anything else, cut to 40 characters."""
    return ascii(text[:40]) + ("..." if len(text) > 40 else "")


def check_segment(segment: str, what: str) -> None:
    """Refuse one key segment (the text between two slashes) that breaks the key rule.

    Args:
        segment: The segment; a slash in it is refused too.
        what: What the segment is, for the error (`"key_prefix segment 2"`).

    Raises:
        UnsafeKey: Naming the rule that was broken.

    Example:
        ```python
        import pytest
        from prefect_seedream.tasks.s3_storage.keys import UnsafeKey, check_segment

        check_segment("ticket-481", "key_prefix segment 1")
        with pytest.raises(UnsafeKey, match="'.' or '..'"):
            check_segment("..", "key_prefix segment 1")
        ```
    """
    if not isinstance(segment, str):
        raise UnsafeKey(f"{what} must be text, not {type(segment).__name__}")
    if segment == "":
        raise UnsafeKey(f"{what} is empty (rule: no empty segments, so no leading, trailing or "
                        "doubled slashes)")
    if segment in (".", ".."):
        raise UnsafeKey(f"{what} is {segment!r} (rule: no '.' or '..' segments, so a key stays "
                        "inside the destination's prefix)")
    if "/" in segment:
        raise UnsafeKey(f"{what} {_shown(segment)} holds a slash (rule: one segment, no '/')")
    if "\\" in segment:
        raise UnsafeKey(f"{what} {_shown(segment)} holds a backslash (rule: no backslashes, a "
                        "path separator on Windows)")
    if len(segment) > MAX_SEGMENT_CHARS:
        raise UnsafeKey(f"{what} is {len(segment)} characters long (rule: at most "
                        f"{MAX_SEGMENT_CHARS} characters a segment)")
    for char in segment:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise UnsafeKey(f"{what} {_shown(segment)} holds U+{ord(char):04X} (rule: no "
                            "control, format or bidi characters such as NUL or U+202E)")


def check_key_prefix(key_prefix: str, what: str = "key_prefix") -> list[str]:
    """The segments of a caller's `key_prefix`, each checked (`check_segment`).

    Raises:
        UnsafeKey: Naming the first segment that breaks the key rule, and the rule.

    Example:
        ```python
        from prefect_seedream.tasks.s3_storage.keys import check_key_prefix

        assert check_key_prefix("requests/ticket-481") == ["requests", "ticket-481"]
        ```
    """
    if not isinstance(key_prefix, str):
        raise UnsafeKey(f"{what} must be text, not {type(key_prefix).__name__}")
    if len(key_prefix.encode("utf-8", "surrogatepass")) > MAX_PREFIX_BYTES:
        raise UnsafeKey(f"{what} is {len(key_prefix)} characters long (rule: at most "
                        f"{MAX_PREFIX_BYTES} bytes for the whole prefix)")
    segments = key_prefix.split("/")
    for number, segment in enumerate(segments, start=1):
        check_segment(segment, f"{what} segment {number}" if len(segments) > 1 else what)
    return segments


def key_prefix_under(destination_prefix: str, key_prefix: str | None) -> str:
    """The prefix outputs go under: the caller's `key_prefix` nested under the destination's.

    `None` and `""` both mean "no extra nesting" (the destination's own prefix). Anything else
    must pass the key rule (`check_key_prefix`): it can only add folders inside the
    destination's prefix, never leave it or replace it. The flows call this first, so a bad
    prefix is refused before anything is paid for.

    Raises:
        UnsafeKey: Naming the segment and the rule it breaks.

    Example:
        ```python
        import pytest
        from prefect_seedream.tasks.s3_storage.keys import UnsafeKey, key_prefix_under

        assert key_prefix_under("seedream", "other-tenant/x") == "seedream/other-tenant/x"
        assert key_prefix_under("seedream", None) == key_prefix_under("seedream", "") == "seedream"
        with pytest.raises(UnsafeKey):
            key_prefix_under("seedream", "../../escape")
        ```
    """
    base = join_key_parts(destination_prefix)
    if key_prefix is None or key_prefix == "":
        return base
    try:
        segments = check_key_prefix(key_prefix)
    except UnsafeKey as exc:
        raise UnsafeKey(f"{exc.message}; a key_prefix is folder names joined by single slashes, "
                        "such as 'requests/ticket-481', and always nests under the "
                        "destination's prefix") from exc
    joined = join_key_parts(base, *segments)
    if len(joined.encode("utf-8")) > MAX_PREFIX_BYTES:
        raise UnsafeKey(f"key_prefix under the destination's prefix is {len(joined)} characters "
                        f"long (rule: at most {MAX_PREFIX_BYTES} bytes for the whole prefix)")
    return joined


def check_key(key: str, what: str = "key") -> str:
    """Refuse a whole key that is longer than S3 allows (`MAX_KEY_BYTES`); returns it."""
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise UnsafeKey(f"{what} would be {len(key)} characters long (rule: at most "
                        f"{MAX_KEY_BYTES} bytes for a whole key, S3's limit)")
    return key


def key_in_prefix(prefix: str, key: str) -> bool:
    """Whether `key` lies under `prefix` (a folder; empty is the bucket root) and every segment
    after it passes the key rule (so `prefix/../x` is not "under" it).

    Example:
        ```python
        from prefect_seedream.tasks.s3_storage.keys import key_in_prefix

        assert key_in_prefix("seedream", "seedream/p1/0.jpg")
        assert not key_in_prefix("seedream", "seedream/../leaked.jpg")
        assert not key_in_prefix("seedream", "seedream-other/p1/0.jpg")
        ```
    """
    base = join_key_parts(prefix)
    if base and not key.startswith(base + "/"):
        return False
    rest = key[len(base) + 1:] if base else key
    try:
        check_key_prefix(rest, "key")
        check_key(key)
    except UnsafeKey:
        return False
    return True


def output_key(prefix: str, prediction_id: str, index: int, extension: str) -> str:
    """Return the deterministic key `{prefix}/{prediction_id}/{index}.{extension}`.

    Args:
        prefix: Key prefix; may be empty, slashes at either end are ignored.
        prediction_id: The Replicate prediction id (no slashes).
        index: The output's position in the prediction's output list.
        extension: `jpg`, `png`, `webp` or `gif` (a leading dot is ignored).

    Example:
        ```python
        from prefect_seedream.tasks.s3_storage.keys import output_key

        assert output_key("runs/", "p1", 0, "jpg") == "runs/p1/0.jpg"
        assert output_key("", "p1", 2, ".png") == "p1/2.png"
        ```
    """
    ext = extension.lower().lstrip(".")
    if ext == "jpeg":
        ext = "jpg"
    if ext not in _EXTENSIONS:
        raise ValueError(f"Unsupported image extension {extension!r}; use one of {_EXTENSIONS}.")
    check_segment(prediction_id, "prediction id")
    if index < 0:
        raise ValueError(f"Output index must be >= 0, got {index}.")
    return check_key(join_key_parts(prefix, prediction_id, f"{index}.{ext}"), "output key")


def encode_prompt(prompt: str, max_bytes: int) -> tuple[str, bool]:
    """Percent-encode a prompt into ASCII for S3 metadata, truncated to `max_bytes`.

    S3 user metadata travels as HTTP headers (ASCII only) and is capped at 2 KB in total, so
    the prompt is UTF-8 percent-encoded (`urllib.parse.unquote` restores it) and cut at a
    character boundary when too long.

    Returns:
        `(encoded, truncated)`.

    Example:
        ```python
        from urllib.parse import unquote
        from prefect_seedream.tasks.s3_storage.keys import encode_prompt

        encoded, truncated = encode_prompt("a café at dusk", 100)
        assert encoded == "a%20caf%C3%A9%20at%20dusk" and not truncated
        assert unquote(encoded) == "a café at dusk"
        ```
    """
    pieces: list[str] = []
    used = 0
    for char in prompt:
        piece = quote(char, safe=_PROMPT_SAFE)
        if used + len(piece) > max_bytes:
            return "".join(pieces), True
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces), False


def build_metadata(
    prediction: Prediction,
    index: int,
    *,
    sha256: str,
    width: int,
    height: int,
    flow_run_id: str | None,
    expected_size: tuple[int, int] | None = None,
) -> dict[str, str]:
    """Return the S3 user metadata for one output: ASCII, at most `METADATA_LIMIT` bytes.

    Keys: `prediction-id`, `index`, `model`, `sha256`, `width`, `height`, `flow-run-id` (only
    inside a flow run), `expected-size` (`WxH`, only when the image is not the size Seedream's
    table predicted), `prompt` (percent-encoded) and `prompt-truncated: "true"` when the prompt
    had to be cut to fit.

    Example:
        ```python
        from prefect_seedream.tasks.replicate_client.prediction import Prediction
        from prefect_seedream.tasks.s3_storage.keys import build_metadata

        p = Prediction(id="p1", status="succeeded", input={"prompt": "a red fox"})
        meta = build_metadata(p, 0, sha256="ab" * 32, width=8, height=8, flow_run_id=None)
        assert meta["prompt"] == "a%20red%20fox" and meta["index"] == "0"
        ```
    """
    meta = {
        "prediction-id": prediction.id,
        "index": str(index),
        "sha256": sha256,
        "width": str(width),
        "height": str(height),
    }
    if prediction.model:
        meta["model"] = quote(prediction.model, safe=_PROMPT_SAFE)[:200]
    if flow_run_id:
        meta["flow-run-id"] = str(flow_run_id)
    if expected_size is not None and tuple(expected_size) != (width, height):
        meta["expected-size"] = f"{expected_size[0]}x{expected_size[1]}"
    if prediction.prompt:
        used = sum(len(k) + len(v) for k, v in meta.items())
        budget = METADATA_LIMIT - used - len("prompt") - len("prompt-truncated") - len("true")
        encoded, truncated = encode_prompt(prediction.prompt, max(budget, 0))
        meta["prompt"] = encoded
        if truncated:
            meta["prompt-truncated"] = "true"
    return meta


def guess_extension(url: str) -> str:
    """The extension an output URL suggests, used to look for a stored copy before downloading.

    The stored object's real extension comes from the bytes; `jpg` (Seedream's default) when
    the URL says nothing.

    Example:
        ```python
        from prefect_seedream.tasks.s3_storage.keys import guess_extension

        assert guess_extension("https://replicate.delivery/x/out-0.png?sig=1") == "png"
        assert guess_extension("data:image/webp;base64,AAAA") == "webp"
        ```
    """
    if url.startswith("data:"):
        mediatype = url[5:].split(",", 1)[0].split(";", 1)[0].lower()
        return {"image/png": "png", "image/webp": "webp", "image/gif": "gif"}.get(mediatype, "jpg")
    suffix = urlsplit(url).path.rsplit(".", 1)[-1].lower()
    return {"jpeg": "jpg"}.get(suffix, suffix) if suffix in (*_EXTENSIONS, "jpeg") else "jpg"


__all__ = [
    "MAX_KEY_BYTES",
    "MAX_PREFIX_BYTES",
    "MAX_SEGMENT_CHARS",
    "METADATA_LIMIT",
    "UnsafeKey",
    "build_metadata",
    "check_key",
    "check_key_prefix",
    "check_segment",
    "encode_prompt",
    "guess_extension",
    "key_in_prefix",
    "key_prefix_under",
    "output_key",
]
