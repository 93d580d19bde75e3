"""The I/O under `store_outputs`: open a source stream, push it through S3, classify failures.

The one place in the plugin that talks to S3 while storing outputs. A source is read chunk by
chunk (httpx `stream()` for https/http, incremental base64 for `data:` URIs) into one reusable
5 MiB part buffer per transfer and sent with `put_object` (small files) or a multipart upload
that is aborted on any error. Memory per transfer is one part buffer plus one download chunk
(two part buffers for a multipart upload, whose next part downloads while the current one
uploads), whatever the image size. An output smaller than one part is checked in that buffer
and sent with a single PUT straight to its final key; a larger one goes through a temporary
key and a server-side copy. Neither ever replaces an object (`If-None-Match` on the PUT and
the copy). (boto3's `upload_fileobj` on a non-seekable stream holds the threshold read-ahead
plus several queued parts, about 3-4x as much; see bench/fig_storage.py.)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from prefect_seedream.tasks.s3_storage.checks import ImageProbe
from prefect_seedream.tasks.tls import tls_context

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mypy_boto3_s3 import S3Client

#: Network chunk size for downloads; also the granularity of hashing and probing.
DOWNLOAD_CHUNK = 256 * 1024
#: 5 MiB is S3's minimum part size; smaller objects go up in one PUT.
PART_SIZE = 5 * 1024 * 1024
_RETRYABLE_S3_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "RequestTimeout",
     "RequestTimeTooSkewed", "503", "500", "502", "504",
     # What S3 received is not what was hashed while downloading: download and send again.
     "BadDigest"}
)


class Transient(Exception):
    """A failure worth retrying (network, 5xx, truncated transfer); `str()` is log-safe."""


class Permanent(Exception):
    """A failure that retrying cannot fix (403 on the bucket, source 4xx); `str()` is log-safe."""


class SourceGone(Exception):
    """The source URL answered 404 or 410: Replicate has deleted the output."""


def redact_url(url: str) -> str:
    """Return a URL safe to log: no query string, no fragment, no credentials, no data payload.

    Example:
        ```python
        from prefect_seedream.tasks.s3_storage.upload import redact_url

        assert redact_url("https://h/x.jpg?X-Amz-Signature=s") == "https://h/x.jpg"
        assert redact_url("data:image/png;base64,AAAA") == "data:image/png;base64,<4 chars>"
        ```
    """
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        return f"{header[:64]},<{len(payload)} chars>"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _strip_authorization(request: httpx.Request) -> None:
    # Runs after httpx applied any auth: the Replicate token must never reach a file host.
    request.headers.pop("Authorization", None)


def new_http_client(timeout: float = 30.0) -> httpx.Client:
    """An httpx client for output files: redirects followed, never an Authorization header.

    The TLS context is the process's one (`tasks.tls`): building one per client would cost a
    batch ~70 ms of CPU per item."""
    return httpx.Client(
        verify=tls_context(),
        follow_redirects=True,
        timeout=httpx.Timeout(timeout, connect=10.0),
        event_hooks={"request": [_strip_authorization], "response": []},
    )


def _data_uri_chunks(url: str) -> Iterator[bytes]:
    header, sep, payload = url.partition(",")
    if not sep:
        raise Permanent("Malformed data: URI (no comma).")
    if not header.endswith(";base64"):
        yield unquote_to_bytes(payload)
        return
    step = DOWNLOAD_CHUNK // 3 * 4  # whole base64 quanta
    try:
        for start in range(0, len(payload), step):
            yield base64.b64decode(payload[start : start + step], validate=True)
    except binascii.Error as exc:
        raise Permanent(f"Malformed base64 in data: URI: {exc}.") from None


@contextmanager
def open_source(url: str, http: httpx.Client) -> Iterator[Iterator[bytes]]:
    """Open an output URL and yield an iterator of its body chunks.

    Raises:
        SourceGone: The URL answered 404 or 410.
        Transient: 5xx, 408, 429 or a connection error.
        Permanent: Another 4xx, or an unsupported or malformed URL.
    """
    if url.startswith("data:"):
        yield _data_uri_chunks(url)
        return
    if urlsplit(url).scheme not in ("http", "https"):
        raise Permanent(f"Unsupported output URL scheme in {redact_url(url)!r}.")
    safe = redact_url(url)
    try:
        with http.stream("GET", url) as response:
            status = response.status_code
            if status in (404, 410):
                raise SourceGone(f"GET {safe} answered {status}.")
            if status >= 500 or status in (408, 429):
                raise Transient(f"GET {safe} answered {status}.")
            if status >= 400:
                raise Permanent(f"GET {safe} answered {status}.")
            yield response.iter_bytes(DOWNLOAD_CHUNK)
    except httpx.TransportError as exc:
        raise Transient(f"GET {safe} failed: {type(exc).__name__}.") from None


class HashingReader:
    """Reads body chunks into caller buffers, hashing and probing every byte on the way.

    Without a probe (`probe=None`) the bytes are hashed but not checked: quarantine copies.
    `tap`, when given, also sees every chunk (the preview thumbnailer); it must not raise.
    """

    def __init__(self, chunks: Iterator[bytes], probe: ImageProbe | None,
                 tap: Callable[[bytes], None] | None = None) -> None:
        self._chunks = chunks
        self._probe = probe
        self._tap = tap
        self._sha = hashlib.sha256()
        self._pending = b""
        self._eof = False

    def _pull(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            self._eof = True
            return False
        if self._probe is not None:
            self._probe.feed(chunk)
        self._sha.update(chunk)
        if self._tap is not None:
            self._tap(chunk)
        self._pending += chunk
        return True

    def prefetch_header(self) -> None:
        """Read ahead until the probe knows type and size (or the stream ends)."""
        while self._probe is not None and not self._probe.header_ready and self._pull():
            pass

    def readinto(self, buffer: bytearray) -> int:
        """Fill `buffer` from the stream; fewer bytes than its length only at the end."""
        view = memoryview(buffer)
        filled = 0
        while filled < len(buffer):
            if not self._pending and not self._pull():
                break
            take = min(len(self._pending), len(buffer) - filled)
            view[filled : filled + take] = self._pending[:take]
            self._pending = self._pending[take:]
            filled += take
        return filled

    def hexdigest(self) -> str:
        """The SHA-256 of every byte read so far (all of them, once `readinto` hit the end)."""
        return self._sha.hexdigest()

    @property
    def exhausted(self) -> bool:
        """Whether the source stream ended and every byte was handed out."""
        return self._eof and not self._pending


def upload_stream(client: S3Client, bucket: str, key: str, reader: HashingReader,
                  content_type: str, *, buffer: bytearray | None = None,
                  size: int | None = None, metadata: dict[str, str] | None = None) -> None:
    """Upload everything `reader` yields to `key`, one `PART_SIZE` buffer at a time.

    Each request carries an S3 SHA-256 checksum of its bytes; a multipart upload is aborted
    on any error, so no partial object ever appears. `buffer` and `size` hand over a first
    part already read; `metadata` is the object's user metadata.
    """
    if buffer is None or size is None:
        buffer = bytearray(PART_SIZE)
        size = reader.readinto(buffer)
    common: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumAlgorithm": "SHA256"}
    extra: dict[str, Any] = {"Metadata": metadata} if metadata else {}
    if size < PART_SIZE:
        client.put_object(Body=bytes(buffer[:size]), ContentType=content_type, **common, **extra)
        return
    upload_id = client.create_multipart_upload(ContentType=content_type, **common,
                                               **extra)["UploadId"]

    def send(number: int, body: bytes | bytearray) -> dict[str, Any]:
        part = client.upload_part(  # a bytearray body is fine; the stubs are too narrow
            UploadId=upload_id, PartNumber=number, Body=body, **common  # type: ignore[arg-type]
        )
        return {"PartNumber": number, "ETag": part["ETag"],
                "ChecksumSHA256": part.get("ChecksumSHA256", "")}

    try:
        parts: list[dict[str, Any]] = []
        # Two part buffers: one part goes up on the sender thread while the next one downloads
        # into the other buffer, so download and upload overlap; memory stays two parts.
        buffers = (buffer, bytearray(PART_SIZE))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-part") as sender:
            in_flight: Future[dict[str, Any]] | None = None
            current = number = 0
            while size:
                filled = buffers[current]
                body = filled if size == PART_SIZE else bytes(filled[:size])
                if in_flight is not None:
                    parts.append(in_flight.result())
                number += 1
                in_flight = sender.submit(send, number, body)
                current ^= 1  # the other buffer is free: the part in it was sent above
                size = reader.readinto(buffers[current])
            if in_flight is not None:
                parts.append(in_flight.result())
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                         MultipartUpload={"Parts": parts})  # type: ignore[typeddict-item]
    except BaseException:
        # If even the abort fails, an AbortIncompleteMultipartUpload lifecycle rule cleans up.
        with contextlib.suppress(ClientError, BotoCoreError):
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def classify_s3_error(exc: BaseException, action: str) -> Exception:
    """Map a botocore error to `Transient` or `Permanent` with a message safe to log."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"S3 {action} failed: {code or status} {error.get('Message', '')}".strip()
        if status >= 500 or code in _RETRYABLE_S3_CODES:
            return Transient(message)
        return Permanent(message + ".")
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return Transient(f"S3 {action} failed: {type(exc).__name__}.")
    return Permanent(f"S3 {action} failed: {exc}.")


def head_metadata(client: S3Client, bucket: str, key: str) -> dict[str, Any] | None:
    """`head_object`, or None if the key does not exist (or cannot be seen without ListBucket)."""
    try:
        return dict(client.head_object(Bucket=bucket, Key=key))
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status in (403, 404):
            return None  # S3 answers 403 for a missing key when the caller lacks ListBucket
        raise classify_s3_error(exc, "head_object") from None
    except BotoCoreError as exc:
        raise classify_s3_error(exc, "head_object") from None


def _read_first_part(reader: HashingReader) -> tuple[bytearray, int]:
    buffer = bytearray(PART_SIZE)
    try:
        return buffer, reader.readinto(buffer)
    except httpx.TransportError as exc:
        raise Transient(f"The download broke off: {type(exc).__name__}.") from None


def _checked(client: S3Client, bucket: str, key: str, server_sha: str | None,
             sha_hex: str) -> str:
    expected = base64.b64encode(bytes.fromhex(sha_hex)).decode()
    if server_sha and server_sha != expected:
        _delete_quietly(client, bucket, key)
        raise Transient("S3's SHA-256 of the stored object differs from the downloaded bytes.")
    return sha_hex


def _put_whole(
    client: S3Client, *, bucket: str, final_key: str, reader: HashingReader,
    buffer: bytearray, size: int, content_type: str, finish: Callable[[], dict[str, str]],
) -> str | None:
    """An object smaller than one part: checked whole in memory, then one atomic PUT that
    never replaces an object (`If-None-Match`); None when `final_key` already holds one."""
    if not reader.exhausted:  # defensive: a short read means the stream ended
        raise Transient("The upload finished before the download did.")
    metadata = finish()
    sha_hex = reader.hexdigest()
    del buffer[size:]  # the body itself, without a copy
    try:
        result = client.put_object(
            Bucket=bucket, Key=final_key, Body=buffer,  # type: ignore[arg-type]  # bytearray is fine
            ContentType=content_type, Metadata=metadata, IfNoneMatch="*",
            # The SHA-256 taken while downloading: S3 recomputes it over what it received and
            # refuses the PUT (400 BadDigest, retried) unless they agree, so botocore need not
            # hash the body a second time.
            ChecksumSHA256=base64.b64encode(bytes.fromhex(sha_hex)).decode(),
        )
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 412:
            return None
        if status == 409:  # another conditional write to the key was in progress
            raise Transient("S3 put_object met a concurrent write of the same key.") from None
        raise classify_s3_error(exc, "put_object") from None
    except BotoCoreError as exc:
        raise classify_s3_error(exc, "put_object") from None
    return _checked(client, bucket, final_key, result.get("ChecksumSHA256"), sha_hex)


def upload_then_publish(
    client: S3Client,
    *,
    bucket: str,
    temp_key: str,
    final_key: str,
    reader: HashingReader,
    content_type: str,
    finish: Callable[[], dict[str, str]],
    exists: Callable[[], bool] = lambda: False,
) -> str | None:
    """Store `reader` under `final_key` only once it is whole and `finish()` accepted it, and
    never over an object already there.

    `finish()` checks the image and returns the metadata. An object smaller than `PART_SIZE`
    is already whole in the part buffer, so it is checked there and sent with one `put_object`
    straight to `final_key` (a PUT is all-or-nothing, S3 verifies its SHA-256, and
    `If-None-Match` makes it fail rather than replace). A larger one first asks `exists()`
    (so a re-run uploads nothing), then is uploaded to `temp_key`, checked, copied server-side
    to `final_key` with a full-object SHA-256 (`ChecksumAlgorithm="SHA256"`) and
    `If-None-Match` too, and the temporary key is deleted.
    Either way the hash taken while streaming is compared with S3's; on mismatch the final
    object is deleted.

    Returns:
        The SHA-256 (hex) of the stored bytes, or None when `final_key` already held an object
        (nothing was written; the caller finds out whose it is).
    """
    buffer, size = _read_first_part(reader)
    if size < PART_SIZE:
        return _put_whole(client, bucket=bucket, final_key=final_key, reader=reader,
                          buffer=buffer, size=size, content_type=content_type, finish=finish)
    if exists():
        return None
    uploaded = False
    try:
        try:
            uploaded = True  # from here on, clean up the temporary key whatever happens
            upload_stream(client, bucket, temp_key, reader, content_type, buffer=buffer,
                          size=size)
        except (ClientError, BotoCoreError) as exc:
            raise classify_s3_error(exc, "upload") from None
        except httpx.TransportError as exc:
            raise Transient(f"The download broke off: {type(exc).__name__}.") from None
        if not reader.exhausted:  # defensive: the upload must have consumed everything
            raise Transient("The upload finished before the download did.")
        metadata = finish()
        sha_hex = reader.hexdigest()
        try:
            result = client.copy_object(
                Bucket=bucket,
                Key=final_key,
                CopySource={"Bucket": bucket, "Key": temp_key},
                MetadataDirective="REPLACE",
                Metadata=metadata,
                ContentType=content_type,
                ChecksumAlgorithm="SHA256",
                IfNoneMatch="*",  # never over a writer that got there between exists() and now
            )
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 412:
                return None
            if status == 409:
                raise Transient("S3 copy_object met a concurrent write of the same key.") from None
            raise classify_s3_error(exc, "copy_object") from None
        except BotoCoreError as exc:
            raise classify_s3_error(exc, "copy_object") from None
        server_sha = result.get("CopyObjectResult", {}).get("ChecksumSHA256")
        return _checked(client, bucket, final_key, server_sha, sha_hex)
    finally:
        if uploaded:
            _delete_quietly(client, bucket, temp_key)


def quarantine_copy(client: S3Client, bucket: str, key: str, chunks: Iterator[bytes],
                    metadata: dict[str, str]) -> str:
    """Store bytes that failed the image checks, unchecked, at `key`; returns their SHA-256.

    A paid-for output is never dropped: what Replicate served goes next to the error, for a
    person to look at (`application/octet-stream`, whatever the source claimed).

    Raises:
        Transient, Permanent: the download or S3 failed (as `classify_s3_error` says).
    """
    reader = HashingReader(chunks, None)
    try:
        upload_stream(client, bucket, key, reader, "application/octet-stream",
                      metadata=metadata)
    except (ClientError, BotoCoreError) as exc:
        raise classify_s3_error(exc, "quarantine upload") from None
    except httpx.TransportError as exc:
        raise Transient(f"The download broke off: {type(exc).__name__}.") from None
    return reader.hexdigest()


def _delete_quietly(client: S3Client, bucket: str, key: str) -> None:
    # A leftover under `_incomplete/` is harmless; a lifecycle rule can expire it.
    with contextlib.suppress(ClientError, BotoCoreError):
        client.delete_object(Bucket=bucket, Key=key)


__all__ = [
    "DOWNLOAD_CHUNK",
    "PART_SIZE",
    "HashingReader",
    "Permanent",
    "SourceGone",
    "Transient",
    "classify_s3_error",
    "head_metadata",
    "new_http_client",
    "open_source",
    "quarantine_copy",
    "redact_url",
    "upload_stream",
    "upload_then_publish",
]
