"""Pure naming and metadata for stored outputs: deterministic keys, S3-safe user metadata."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from prefect_seedream.blocks.s3_destination import join_key_parts
from prefect_seedream.tasks.replicate_client.prediction import Prediction

#: S3 limits user metadata to 2 KB: the UTF-8 bytes of every key and value, summed.
METADATA_LIMIT = 2048
_EXTENSIONS = ("jpg", "png", "webp", "gif")
_PROMPT_SAFE = "!'()*,-./:;=?@_~"


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
    if not prediction_id or "/" in prediction_id or prediction_id.strip(".") == "":
        raise ValueError(f"Invalid prediction id for a key: {prediction_id!r}.")
    if index < 0:
        raise ValueError(f"Output index must be >= 0, got {index}.")
    return join_key_parts(prefix, prediction_id, f"{index}.{ext}")


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


__all__ = ["METADATA_LIMIT", "build_metadata", "encode_prompt", "guess_extension", "output_key"]
