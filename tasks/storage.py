"""Store a prediction's output images in S3: `store_outputs` and the pure helpers it uses.

Guarantees, per output:

- streamed, never held whole in memory (see `tasks.s3_upload`);
- SHA-256 taken on the way, checked against S3's own full-object SHA-256 and kept in metadata;
- Content-Type from the bytes, not the URL; header and end marker checked (`tasks.image_checks`);
- written to a temporary key and copied to its final key only when complete and valid;
- deterministic keys `{prefix}/{prediction_id}/{index}.{ext}`: a retry finds what is stored
  and neither uploads nor overwrites it again.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from pydantic import BaseModel, ConfigDict

from blocks.s3_destination import S3Destination, join_key_parts
from tasks.errors import OutputExpired, OutputInvalid, SeedreamError, StorageFailed
from tasks.image_checks import ImageCheckError, ImageIncomplete, ImageProbe, extension_for
from tasks.prediction_model import Prediction, PredictionStatus
from tasks.s3_upload import (
    HashingReader,
    Permanent,
    SourceGone,
    Transient,
    head_metadata,
    new_http_client,
    open_source,
    redact_url,
    upload_then_publish,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mypy_boto3_s3 import S3Client

#: S3 limits user metadata to 2 KB: the UTF-8 bytes of every key and value, summed.
METADATA_LIMIT = 2048
#: Default pauses between attempts of one output (3 retries, 3.5 s of waiting).
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0)
_EXTENSIONS = ("jpg", "png", "webp", "gif")
_PROMPT_SAFE = "!'()*,-./:;=?@_~"

_log = logging.getLogger(__name__)


class StoredImage(BaseModel):
    """One output image as stored in S3."""

    model_config = ConfigDict(frozen=True)

    uri: str
    bucket: str
    key: str
    sha256: str
    size_bytes: int
    width: int
    height: int
    content_type: str
    prediction_id: str
    index: int


def output_key(prefix: str, prediction_id: str, index: int, extension: str) -> str:
    """Return the deterministic key `{prefix}/{prediction_id}/{index}.{extension}`.

    Args:
        prefix: Key prefix; may be empty, slashes at either end are ignored.
        prediction_id: The Replicate prediction id (no slashes).
        index: The output's position in the prediction's output list.
        extension: `jpg`, `png`, `webp` or `gif` (a leading dot is ignored).

    Example:
        ```python
        from tasks.storage import output_key

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
        from tasks.storage import encode_prompt

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
) -> dict[str, str]:
    """Return the S3 user metadata for one output: ASCII, at most `METADATA_LIMIT` bytes.

    Keys: `prediction-id`, `index`, `model`, `sha256`, `width`, `height`, `flow-run-id` (only
    inside a flow run), `prompt` (percent-encoded) and `prompt-truncated: "true"` when the
    prompt had to be cut to fit.

    Example:
        ```python
        from tasks.prediction_model import Prediction
        from tasks.storage import build_metadata

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
    if prediction.prompt:
        used = sum(len(k) + len(v) for k, v in meta.items())
        budget = METADATA_LIMIT - used - len("prompt") - len("prompt-truncated") - len("true")
        encoded, truncated = encode_prompt(prediction.prompt, max(budget, 0))
        meta["prompt"] = encoded
        if truncated:
            meta["prompt-truncated"] = "true"
    return meta


def _guess_extension(url: str) -> str:
    """The extension the URL suggests (for the pre-download existence check); `jpg` if none."""
    if url.startswith("data:"):
        mediatype = url[5:].split(",", 1)[0].split(";", 1)[0].lower()
        return {"image/png": "png", "image/webp": "webp", "image/gif": "gif"}.get(mediatype, "jpg")
    suffix = urlsplit(url).path.rsplit(".", 1)[-1].lower()
    return {"jpeg": "jpg"}.get(suffix, suffix) if suffix in (*_EXTENSIONS, "jpeg") else "jpg"


def _existing(
    client: S3Client, destination: S3Destination, key: str, prediction_id: str, index: int
) -> StoredImage | None:
    head = head_metadata(client, destination.bucket, key)
    if head is None:
        return None
    meta = head.get("Metadata", {})
    if meta.get("prediction-id") != prediction_id or meta.get("index") != str(index):
        raise Permanent(
            f"{destination.uri(key)} already holds another object; refusing to overwrite it."
        )
    return StoredImage(
        uri=destination.uri(key), bucket=destination.bucket, key=key,
        sha256=meta.get("sha256", ""), size_bytes=int(head.get("ContentLength", 0)),
        width=int(meta.get("width", 0)), height=int(meta.get("height", 0)),
        content_type=str(head.get("ContentType", "")), prediction_id=prediction_id, index=index,
    )


def _attempt(
    url: str, prediction: Prediction, index: int, destination: S3Destination, key_prefix: str,
    expected_size: tuple[int, int] | None, flow_run_id: str | None, http: httpx.Client,
) -> StoredImage:
    client = destination.get_client()
    guessed = output_key(key_prefix, prediction.id, index, _guess_extension(url))
    found = _existing(client, destination, guessed, prediction.id, index)
    if found is not None:
        return found
    probe = ImageProbe()
    with open_source(url, http) as chunks:
        reader = HashingReader(chunks, probe)
        reader.prefetch_header()
        if not probe.header_ready:
            probe.finish()  # raises: empty, not an image, or truncated inside the header
        assert probe.content_type and probe.width and probe.height
        width, height = probe.width, probe.height
        if expected_size is not None and (width, height) != tuple(expected_size):
            raise ImageCheckError(
                f"The image is {width}x{height}, expected {expected_size[0]}x{expected_size[1]}."
            )
        key = output_key(key_prefix, prediction.id, index, extension_for(probe.content_type))
        if key != guessed:
            found = _existing(client, destination, key, prediction.id, index)
            if found is not None:
                return found
        temp_key = join_key_parts(
            key_prefix, "_incomplete", prediction.id, f"{index}-{uuid.uuid4().hex[:12]}.part"
        )

        def finish() -> dict[str, str]:
            probe.finish()
            return build_metadata(
                prediction, index, sha256=reader.hexdigest(), width=width, height=height,
                flow_run_id=flow_run_id,
            )

        sha = upload_then_publish(
            client, bucket=destination.bucket, temp_key=temp_key, final_key=key, reader=reader,
            content_type=probe.content_type, finish=finish,
        )
    return StoredImage(
        uri=destination.uri(key), bucket=destination.bucket, key=key, sha256=sha,
        size_bytes=probe.size_bytes, width=width, height=height,
        content_type=probe.content_type, prediction_id=prediction.id, index=index,
    )


def store_output(
    url: str,
    prediction: Prediction,
    index: int,
    destination: S3Destination,
    *,
    key_prefix: str | None = None,
    expected_size: tuple[int, int] | None = None,
    flow_run_id: str | None = None,
    retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
    http: httpx.Client | None = None,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
) -> StoredImage:
    """Stream one output URL (https, http or `data:`) into S3 and return what was stored.

    Network errors, source 5xx and S3 5xx/connection errors are retried after each pause in
    `retry_delays` (the prediction is never re-run). Logs never contain a URL's query string.

    Raises:
        OutputExpired: The URL answered 404/410 (Replicate deletes outputs after ~1 hour).
        OutputInvalid: The bytes are not an image, or not of `expected_size`.
        StorageFailed: Retries ran out, or S3 refused the write; names prediction and index.

    Example:
        ```python
        from blocks.s3_destination import S3Destination
        from tasks.prediction_model import Prediction
        from tasks.storage import store_output

        prediction = Prediction.from_api({"id": "p1", "status": "succeeded",
                                          "output": ["https://replicate.delivery/x/0.jpg"]})
        stored = store_output(prediction.output_urls[0], prediction, 0,
                              S3Destination(bucket="my-bucket", prefix="seedream"))
        print(stored.uri, stored.sha256)
        ```
    """
    log = logger or _log
    prefix = destination.prefix if key_prefix is None else key_prefix
    safe_url = redact_url(url)
    own_http = http is None
    client = http or new_http_client()
    delays = list(retry_delays)
    reason = ""
    try:
        for attempt in range(len(delays) + 1):
            try:
                stored = _attempt(url, prediction, index, destination, prefix, expected_size,
                                  flow_run_id, client)
                log.info("Stored output %d of %s from %s at %s (%d bytes, sha256 %s).", index,
                         prediction.id, safe_url, stored.uri, stored.size_bytes, stored.sha256)
                return stored
            except SourceGone as exc:
                raise OutputExpired(
                    f"Output {index} is gone from Replicate ({exc}) - outputs live about 1 hour. "
                    "Re-run the prediction to get new images.", prediction_id=prediction.id,
                ) from None
            except ImageIncomplete as exc:
                reason = str(exc)
            except ImageCheckError as exc:
                raise OutputInvalid(
                    f"Output {index} ({safe_url}) is not a valid image: {exc}",
                    prediction_id=prediction.id,
                ) from None
            except Permanent as exc:
                error = StorageFailed(f"Output {index} could not be stored: {exc}",
                                      prediction_id=prediction.id, index=index)
                error.retryable = False
                raise error from None
            except Transient as exc:
                reason = str(exc)
            if attempt < len(delays):
                log.warning("Storing output %d of %s failed (%s); retrying in %.1f s.",
                            index, prediction.id, reason, delays[attempt])
                time.sleep(delays[attempt])
        raise StorageFailed(
            f"Output {index} could not be stored after {len(delays) + 1} attempts: {reason} "
            "The prediction was not re-run; retry storing while its outputs still exist (~1 h).",
            prediction_id=prediction.id, index=index,
        )
    finally:
        if own_http:
            client.close()


def _aggregate(prediction: Prediction, failures: dict[int, SeedreamError], stored: list[str],
               total: int) -> SeedreamError:
    first_index = min(failures)
    first = failures[first_index]
    if len(failures) == 1:
        error: SeedreamError = first
    else:
        details = "; ".join(f"output {i}: {failures[i].message}" for i in sorted(failures))
        message = f"{len(failures)} of {total} outputs failed ({details})."
        if isinstance(first, StorageFailed):
            error = StorageFailed(message, prediction_id=prediction.id, index=first_index)
        else:
            error = type(first)(message, prediction_id=prediction.id)
    error.failed_indexes = sorted(failures)  # type: ignore[attr-defined]
    error.stored_uris = stored  # type: ignore[attr-defined]
    return error


def _run_logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    try:
        return get_run_logger()
    except MissingContextError:
        return _log


@task(
    name="Store outputs",
    description="Stream a prediction's output images into S3, verified, with deterministic keys.",
    cache_policy=NO_CACHE,
    retries=0,
)
def store_outputs(
    prediction: Prediction,
    destination: S3Destination,
    *,
    key_prefix: str | None = None,
    expected_size: tuple[int, int] | None = None,
    retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
    max_concurrency: int = 4,
) -> list[StoredImage]:
    """Store every output of a succeeded prediction in S3, up to `max_concurrency` at a time.

    Every output is attempted even if another fails; then one error names every failed index
    (its `failed_indexes`, and `stored_uris` for what did get stored). Re-running the task
    skips outputs already stored under their deterministic key.

    Args:
        prediction: A succeeded prediction.
        destination: Where to store; keys are `{key_prefix}/{prediction.id}/{index}.{ext}`.
        key_prefix: Overrides `destination.prefix` when not None.
        expected_size: `(width, height)` every output must have.
        retry_delays: Pauses between attempts of one output after a transient failure.
        max_concurrency: How many outputs are transferred at once.

    Returns:
        The stored images, in output order.

    Raises:
        OutputExpired: The outputs were deleted by Replicate (`data_removed`, 404 or 410).
        OutputInvalid: No outputs, or an output is not a valid image of `expected_size`.
        StorageFailed: An output could not be written after retries.

    Example:
        ```python
        from prefect import flow
        from blocks import S3Destination
        from tasks.storage import store_outputs

        @flow
        def keep(prediction):
            return store_outputs(prediction, S3Destination.load("BLOCK_NAME"))
        ```
    """
    from prefect.runtime import flow_run

    if prediction.data_removed:
        raise OutputExpired(
            "Replicate already deleted this prediction's outputs (they live about 1 hour). "
            "Re-run the prediction and store its outputs promptly.", prediction_id=prediction.id,
        )
    if prediction.status is not PredictionStatus.SUCCEEDED:
        raise OutputInvalid(f"Only succeeded predictions have outputs to store; this one is "
                            f"{prediction.status.value}.", prediction_id=prediction.id)
    urls = prediction.output_urls
    if not urls:
        raise OutputInvalid("The prediction succeeded but returned no output; nothing to store. "
                            "Check the model's logs on Replicate.", prediction_id=prediction.id)
    logger = _run_logger()
    run_id = flow_run.id
    results: dict[int, StoredImage] = {}
    failures: dict[int, SeedreamError] = {}
    with new_http_client() as http, ThreadPoolExecutor(
        max_workers=max(1, min(max_concurrency, len(urls))), thread_name_prefix="store-output"
    ) as pool:
        futures = {}
        for index, url in enumerate(urls):
            job = functools.partial(
                store_output, url, prediction, index, destination, key_prefix=key_prefix,
                expected_size=expected_size, flow_run_id=str(run_id) if run_id else None,
                retry_delays=retry_delays, http=http, logger=logger,
            )
            # Each worker runs in a copy of the task's context, so its logs reach the run.
            futures[pool.submit(contextvars.copy_context().run, job)] = index
        for future, index in futures.items():
            try:
                results[index] = future.result()
            except SeedreamError as exc:
                failures[index] = exc
    if failures:
        stored = [results[i].uri for i in sorted(results)]
        raise _aggregate(prediction, failures, stored, len(urls))
    return [results[i] for i in range(len(urls))]


__all__ = [
    "DEFAULT_RETRY_DELAYS",
    "METADATA_LIMIT",
    "StoredImage",
    "build_metadata",
    "encode_prompt",
    "output_key",
    "store_output",
    "store_outputs",
]
