"""Store a prediction's output images in S3: `store_outputs` and the pure helpers it uses.

Guarantees, per output:

- streamed, never held whole in memory (see `prefect_seedream.tasks.s3_storage.upload`);
- SHA-256 taken on the way, checked against S3's own full-object SHA-256 and kept in metadata;
- Content-Type from the bytes, not the URL; header and end marker checked
  (`prefect_seedream.tasks.s3_storage.checks`);
- store first, judge after: an image of another size than Seedream's table predicts is stored at
  its real size with the difference recorded (`StoredImage.size_note`, S3 metadata
  `expected-size`, a warning); bytes that are not an image, truncated on every download, or
  larger than `SEEDREAM_MAX_OUTPUT_BYTES` (64 MiB), are kept unchecked under
  `{prefix}/_quarantine/{prediction_id}/` and the error names that place;
- written to its final key only when complete and valid: an output smaller than one part is
  checked in memory and sent with one PUT, a larger one is uploaded to a temporary key and
  copied to its final key;
- deterministic keys `{prefix}/{prediction_id}/{index}.{ext}`: a retry finds what is stored
  and neither uploads nor overwrites it again;
- a preview (`StoredImage.preview`, a base64 JPEG of at most `SEEDREAM_PREVIEW_MAX_BYTES`) made
  from the same chunks on their way to S3 (`prefect_seedream.tasks.s3_storage.previews`), and
  with `SEEDREAM_STORE_THUMBNAILS` written to `{prefix}/{prediction_id}/thumbs/{index}.jpg`;
  judged after the image is stored, so a preview that fails never fails or drops an image.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import logging
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
from botocore.exceptions import BotoCoreError, ClientError
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from pydantic import BaseModel, ConfigDict

from prefect_seedream.blocks.s3_destination import S3Destination, join_key_parts
from prefect_seedream.tasks.errors import OutputExpired, OutputInvalid, SeedreamError, StorageFailed
from prefect_seedream.tasks.replicate_client.prediction import Prediction, PredictionStatus
from prefect_seedream.tasks.s3_storage.checks import (
    ImageCheckError,
    ImageIncomplete,
    ImageProbe,
    extension_for,
    size_note,
)
from prefect_seedream.tasks.s3_storage.keys import (
    METADATA_LIMIT,
    build_metadata,
    encode_prompt,
    guess_extension,
    output_key,
)
from prefect_seedream.tasks.s3_storage.previews import Thumbnailer
from prefect_seedream.tasks.s3_storage.upload import (
    HashingReader,
    Permanent,
    SourceGone,
    Transient,
    head_metadata,
    new_http_client,
    open_source,
    quarantine_copy,
    redact_url,
    upload_then_publish,
)
from prefect_seedream.tasks.seedream_settings import SeedreamSettings, get_settings

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mypy_boto3_s3 import S3Client

#: Default pauses between attempts of one output (3 retries, 3.5 s of waiting).
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0)

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
    #: Set when the image is not the size Seedream's table predicts (it is stored anyway).
    size_note: str | None = None
    #: A small JPEG of the image (longest side 256 px), base64; None with `preview_note` when
    #: there is none. Shown in the artifacts; it never carries a URL or a signature.
    preview: str | None = None
    preview_note: str | None = None
    #: Where the preview was also written (`SEEDREAM_STORE_THUMBNAILS`), else None.
    thumbnail_uri: str | None = None


def thumbnail_key(key_prefix: str, prediction_id: str, index: int) -> str:
    """The key of a stored preview: `{prefix}/{prediction_id}/thumbs/{index}.jpg`.

    Example:
        ```python
        from prefect_seedream.tasks.storage import thumbnail_key

        assert thumbnail_key("runs", "p1", 0) == "runs/p1/thumbs/0.jpg"
        ```
    """
    return join_key_parts(key_prefix, prediction_id, "thumbs", f"{index}.jpg")


def _stored_thumbnail(client: S3Client, destination: S3Destination, key: str,
                      settings: SeedreamSettings) -> str | None:
    """A preview an earlier attempt wrote (`SEEDREAM_STORE_THUMBNAILS`), as base64, or None."""
    try:
        body = client.get_object(Bucket=destination.bucket, Key=key)["Body"].read(
            settings.preview_max_bytes + 1)
    except (ClientError, BotoCoreError):
        return None
    if not body.startswith(b"\xff\xd8") or len(body) > settings.preview_max_bytes:
        return None
    return base64.b64encode(body).decode("ascii")


def _with_preview(
    client: S3Client, destination: S3Destination, stored: StoredImage, key_prefix: str,
    preview: str | None, note: str | None, settings: SeedreamSettings,
) -> StoredImage:
    """Attach the preview to a stored image and, if asked, write it next to the image."""
    thumb_uri = None
    if preview is not None and settings.store_thumbnails:
        key = thumbnail_key(key_prefix, stored.prediction_id, stored.index)
        try:
            client.put_object(Bucket=destination.bucket, Key=key, Body=base64.b64decode(preview),
                              ContentType="image/jpeg",
                              Metadata={"prediction-id": stored.prediction_id,
                                        "index": str(stored.index), "preview-of": stored.key})
            thumb_uri = destination.uri(key)
        except (ClientError, BotoCoreError) as exc:
            note = f"preview not written to S3 ({type(exc).__name__})"
    return stored.model_copy(update={"preview": preview, "preview_note": note,
                                     "thumbnail_uri": thumb_uri})


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
    width, height = int(meta.get("width", 0)), int(meta.get("height", 0))
    expected = meta.get("expected-size", "")
    ew, _, eh = expected.partition("x")
    settings = get_settings()
    preview = note = thumb_uri = None
    if settings.previews:
        prefix = key.rsplit("/", 2)[0] if key.count("/") >= 2 else ""
        thumb = thumbnail_key(prefix, prediction_id, index)
        preview = _stored_thumbnail(client, destination, thumb, settings) \
            if settings.store_thumbnails else None
        thumb_uri = destination.uri(thumb) if preview else None
        note = None if preview else ("no preview: stored by an earlier attempt "
                                     "(SEEDREAM_STORE_THUMBNAILS keeps previews in S3)")
    return StoredImage(
        uri=destination.uri(key), bucket=destination.bucket, key=key,
        sha256=meta.get("sha256", ""), size_bytes=int(head.get("ContentLength", 0)),
        width=width, height=height, content_type=str(head.get("ContentType", "")),
        prediction_id=prediction_id, index=index,
        size_note=size_note(width, height, (int(ew), int(eh))) if ew.isdigit() and eh.isdigit()
        else None, preview=preview, preview_note=note, thumbnail_uri=thumb_uri,
    )


def _attempt(
    url: str, prediction: Prediction, index: int, destination: S3Destination, key_prefix: str,
    expected_size: tuple[int, int] | None, flow_run_id: str | None, http: httpx.Client,
    *, look_first: bool = True,
) -> StoredImage:
    """One download-and-store. The final PUT is conditional (`If-None-Match`): it never
    replaces an object, and an object an earlier attempt stored is found by that PUT failing,
    then read. `look_first` asks S3 before downloading, so a re-run of a stored prediction
    downloads nothing; a prediction made moments ago has nothing stored yet and skips it."""
    client = destination.get_client()
    guessed = output_key(key_prefix, prediction.id, index, guess_extension(url))
    if look_first and (found := _existing(client, destination, guessed, prediction.id, index)):
        return found
    settings = get_settings()
    probe = ImageProbe(max_bytes=settings.max_output_bytes)
    thumbs = Thumbnailer(settings.preview_max_bytes) if settings.previews else None
    try:
        with open_source(url, http) as chunks:
            reader = HashingReader(chunks, probe, thumbs.feed if thumbs else None)
            reader.prefetch_header()
            if not probe.header_ready:
                probe.finish()  # raises: empty, not an image, or truncated inside the header
            assert probe.content_type and probe.width and probe.height
            width, height = probe.width, probe.height
            key = output_key(key_prefix, prediction.id, index, extension_for(probe.content_type))
            temp_key = join_key_parts(
                key_prefix, "_incomplete", prediction.id, f"{index}-{uuid.uuid4().hex[:12]}.part"
            )

            def finish() -> dict[str, str]:
                probe.finish()
                return build_metadata(
                    prediction, index, sha256=reader.hexdigest(), width=width, height=height,
                    flow_run_id=flow_run_id, expected_size=expected_size,
                )

            sha = upload_then_publish(
                client, bucket=destination.bucket, temp_key=temp_key, final_key=key,
                reader=reader, content_type=probe.content_type, finish=finish,
                # Asked already (or nothing can be there yet) unless the real type's key differs.
                exists=lambda: look_first and key != guessed
                and head_metadata(client, destination.bucket, key) is not None,
            )
    except SourceGone:
        # Expired: an earlier attempt (or run) may have stored it before it did.
        if (found := _existing(client, destination, guessed, prediction.id, index)) is None:
            raise
        return found
    if sha is None:  # already there: stored by an earlier attempt, or someone else's object
        if (found := _existing(client, destination, key, prediction.id, index)) is None:
            raise Transient(f"{destination.uri(key)} changed while this output was stored.")
        if thumbs is None or found.preview is not None:
            return found
        # The same prediction's same output: the preview this attempt just made is its preview.
        return _with_preview(client, destination, found, key_prefix, thumbs.preview_base64(),
                             thumbs.note, settings)
    stored = StoredImage(
        uri=destination.uri(key), bucket=destination.bucket, key=key, sha256=sha,
        size_bytes=probe.size_bytes, width=width, height=height,
        content_type=probe.content_type, prediction_id=prediction.id, index=index,
        size_note=size_note(width, height, expected_size),
    )
    if thumbs is None:
        return stored
    # Store first, judge after: the image is in S3 whatever happens to its preview.
    return _with_preview(client, destination, stored, key_prefix, thumbs.preview_base64(),
                         thumbs.note, settings)


def _quarantine(url: str, prediction: Prediction, index: int, destination: S3Destination,
                prefix: str, reason: str, http: httpx.Client) -> str:
    """Keep the bytes of an output that failed its checks; where they are, for the error."""
    key = join_key_parts(prefix, "_quarantine", prediction.id, f"{index}.bin")
    metadata = {"prediction-id": prediction.id, "index": str(index),
                "reason": reason.encode("ascii", "replace").decode()[:1000]}
    try:
        with open_source(url, http) as chunks:
            quarantine_copy(destination.get_client(), destination.bucket, key, chunks, metadata)
    except (SourceGone, Transient, Permanent) as exc:
        return f"nowhere: keeping a copy failed too ({exc})"
    return destination.uri(key)


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
    fresh: bool = False,
) -> StoredImage:
    """Stream one output URL (https, http or `data:`) into S3 and return what was stored.

    Network errors, source 5xx and S3 5xx/connection errors are retried after each pause in
    `retry_delays` (the prediction is never re-run). Logs never contain a URL's query string.
    An image that is not of `expected_size` is stored at its real size, with a warning and
    `size_note` saying so: the size table is a guess about a hosted model. An output already
    stored under its key is returned as it is, never downloaded again, unless `fresh` (the
    prediction was made moments ago by the caller's own create, so nothing can be stored under
    its id yet): then the first try skips that look and relies on its PUT never overwriting.

    Raises:
        OutputExpired: The URL answered 404/410 (Replicate deletes outputs after ~1 hour).
        OutputInvalid: The bytes are not an image, were truncated on every download, or are
            larger than `SEEDREAM_MAX_OUTPUT_BYTES`; they are kept under
            `{prefix}/_quarantine/{prediction_id}/{index}.bin`, named in the message.
        StorageFailed: Retries ran out, or S3 refused the write; names prediction and index.

    Example:
        ```python
        from prefect_seedream.blocks.s3_destination import S3Destination
        from prefect_seedream.tasks.replicate_client.prediction import Prediction
        from prefect_seedream.tasks.storage import store_output

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
    truncated = False
    try:
        for attempt in range(len(delays) + 1):
            try:
                stored = _attempt(url, prediction, index, destination, prefix, expected_size,
                                  flow_run_id, client, look_first=not fresh or attempt > 0)
                log.info("Stored output %d of %s from %s at %s (%d bytes, sha256 %s).", index,
                         prediction.id, safe_url, stored.uri, stored.size_bytes, stored.sha256)
                if stored.size_note:
                    log.warning("Output %d of %s: %s (%s).", index, prediction.id,
                                stored.size_note, stored.uri)
                return stored
            except SourceGone as exc:
                raise OutputExpired(
                    f"Output {index} is gone from Replicate ({exc}) - outputs live about 1 hour. "
                    "Re-run the prediction to get new images.", prediction_id=prediction.id,
                ) from None
            except ImageIncomplete as exc:
                reason, truncated = str(exc), True
            except ImageCheckError as exc:
                kept = _quarantine(url, prediction, index, destination, prefix, str(exc), client)
                raise OutputInvalid(
                    f"Output {index} ({safe_url}) is not a valid image: {exc} It was paid for, "
                    f"so its bytes are kept at {kept}.", prediction_id=prediction.id,
                ) from None
            except Permanent as exc:
                error = StorageFailed(f"Output {index} could not be stored: {exc}",
                                      prediction_id=prediction.id, index=index)
                error.retryable = False
                raise error from None
            except Transient as exc:
                reason, truncated = str(exc), False
            if attempt < len(delays):
                log.warning("Storing output %d of %s failed (%s); retrying in %.1f s.",
                            index, prediction.id, reason, delays[attempt])
                time.sleep(delays[attempt])
        if truncated:
            kept = _quarantine(url, prediction, index, destination, prefix, reason, client)
            raise OutputInvalid(
                f"Output {index} ({safe_url}) was truncated on each of {len(delays) + 1} "
                f"downloads: {reason} It was paid for, so its bytes are kept at {kept}.",
                prediction_id=prediction.id,
            )
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
    fresh: bool = False,
) -> list[StoredImage]:
    """Store every output of a succeeded prediction in S3, up to `max_concurrency` at a time.

    Every output is attempted even if another fails; then one error names every failed index
    (its `failed_indexes`, and `stored_uris` for what did get stored). Re-running the task
    skips outputs already stored under their deterministic key.

    Args:
        prediction: A succeeded prediction.
        destination: Where to store; keys are `{key_prefix}/{prediction.id}/{index}.{ext}`.
        key_prefix: The whole prefix to store under in place of `destination.prefix` when not
            None (the flows pass the destination's prefix with their caller's `key_prefix`
            nested under it: `key_prefix_under`); every key is checked by the key rule.
        expected_size: `(width, height)` every output must have.
        retry_delays: Pauses between attempts of one output after a transient failure.
        max_concurrency: How many outputs are transferred at once.
        fresh: The caller's own create made `prediction` just now, so none of its outputs can
            be stored yet: each is uploaded without asking S3 first (the upload still never
            replaces an object; see `store_output`).

    Returns:
        The stored images, in output order.

    Raises:
        OutputExpired: The outputs were deleted by Replicate (`data_removed`, 404 or 410).
        OutputInvalid: No outputs, or an output is not a valid image of `expected_size`.
        StorageFailed: An output could not be written after retries.

    Example:
        ```python
        from prefect import flow
        from prefect_seedream.blocks import S3Destination
        from prefect_seedream.tasks.storage import store_outputs

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
                retry_delays=retry_delays, http=http, logger=logger, fresh=fresh,
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
    "thumbnail_key",
]
