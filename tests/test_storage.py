"""store_outputs end to end: real boto3 against moto over HTTP, images from a local HTTP server."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image

from prefect_seedream.blocks.s3_destination import S3Destination
from prefect_seedream.tasks.errors import OutputExpired, OutputInvalid, StorageFailed
from prefect_seedream.tasks.replicate_client.prediction import Prediction
from prefect_seedream.tasks.storage import StoredImage, store_output, store_outputs

FAST = (0.01, 0.01)  # retry pauses for tests: 3 attempts, no waiting worth measuring


# --- test images -------------------------------------------------------------------------------


def make_image(width: int = 96, height: int = 64, fmt: str = "JPEG", noise: bool = False) -> bytes:
    if noise:
        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        image = Image.new("RGB", (width, height), (30, 120, 200))
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """A noise JPEG above the 5 MiB multipart threshold."""
    data = make_image(2800, 2100, noise=True)
    assert len(data) > 6 * 1024 * 1024
    return data


# --- a tiny file host --------------------------------------------------------------------------


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    fail_first: int = 0  # answer 503 this many times first
    cut_at: int | None = None  # send only this many bytes, then close
    send_length: bool = True  # with cut_at: announce the full length (a broken transfer)


class FileHost(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FileHandler)
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.headers_seen: list[dict[str, str]] = []

    def url(self, path: str, query: str = "") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}{query}"

    def add(self, path: str, **kwargs: Any) -> str:
        self.routes[path] = Route(**kwargs)
        return self.url(path)


class _FileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FileHost

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.server.hits[path] += 1
        self.server.headers_seen.append(dict(self.headers))
        route = self.server.routes.get(path, Route(status=404))
        if route.fail_first or route.status != 200:
            if route.fail_first:
                route.fail_first -= 1
            self.send_response(503 if route.status == 200 else route.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = route.body
        self.send_response(200)
        self.send_header("Content-Type", route.content_type)
        if route.cut_at is None or route.send_length:
            self.send_header("Content-Length", str(len(body)))
        if route.cut_at is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
            body = body[: route.cut_at]
        self.end_headers()
        self.wfile.write(body)


def _quiet(self: Any, request: Any, client_address: Any) -> None:
    pass  # a client hanging up on a cut-off body is the point of some tests


FileHost.handle_error = _quiet  # type: ignore[method-assign]


def _serve(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def files() -> Iterator[FileHost]:
    yield from _serve(FileHost())  # type: ignore[misc]


# --- an S3 proxy that fails on demand ----------------------------------------------------------


class FlakyS3(ThreadingHTTPServer):
    """Forwards to moto, but answers 503 SlowDown to the next `fail_next` requests."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = urlsplit(upstream)
        self.fail_next = 0
        self.failed = 0
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


FlakyS3.handle_error = _quiet  # type: ignore[method-assign]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FlakyS3

    def log_message(self, *args: Any) -> None:
        pass

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        with self.server.lock:
            fail = self.server.fail_next > 0
            if fail:
                self.server.fail_next -= 1
                self.server.failed += 1
        if fail:
            payload = b"<Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection(self.server.upstream.hostname,
                                              self.server.upstream.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in ("content-length", "transfer-encoding", "connection",
                                        "server", "date"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay


@pytest.fixture
def flaky_s3(s3_endpoint: str) -> Iterator[FlakyS3]:
    yield from _serve(FlakyS3(s3_endpoint))  # type: ignore[misc]


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def destination(s3_endpoint: str, bucket: str) -> S3Destination:
    return S3Destination(bucket=bucket, prefix="seedream/runs", endpoint_url=s3_endpoint,
                         region_name="us-east-1", aws_access_key_id="testing",
                         aws_secret_access_key="testing")


def prediction(*urls: str, prompt: str = "a lighthouse at dusk", pid: str = "pred123"
               ) -> Prediction:
    return Prediction.from_api({
        "id": pid, "status": "succeeded", "model": "bytedance/seedream-4",
        "input": {"prompt": prompt}, "output": list(urls),
    })


def keys(s3_client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def store(pred: Prediction, dest: S3Destination, **kwargs: Any) -> list[StoredImage]:
    kwargs.setdefault("retry_delays", FAST)
    return store_outputs.fn(pred, dest, **kwargs)


# --- a, b, c, d: the main path -----------------------------------------------------------------


def test_stream_lands_with_type_from_bytes_sha256_and_metadata(files, destination, s3_client):
    jpeg = make_image(96, 64)
    # The URL says .png and the host says octet-stream: the bytes say JPEG.
    url = files.add("/xezq/out-0.png", body=jpeg)
    [stored] = store(prediction(url), destination, expected_size=(96, 64))

    assert stored.key == "seedream/runs/pred123/0.jpg"
    assert stored.uri == f"s3://{destination.bucket}/seedream/runs/pred123/0.jpg"
    assert (stored.content_type, stored.width, stored.height) == ("image/jpeg", 96, 64)
    assert stored.sha256 == hashlib.sha256(jpeg).hexdigest()
    assert stored.size_bytes == len(jpeg)
    obj = s3_client.get_object(Bucket=destination.bucket, Key=stored.key)
    assert obj["Body"].read() == jpeg
    assert obj["ContentType"] == "image/jpeg"
    meta = obj["Metadata"]
    assert meta["prediction-id"] == "pred123" and meta["index"] == "0"
    assert meta["model"] == "bytedance/seedream-4"
    assert unquote(meta["prompt"]) == "a lighthouse at dusk"
    assert (meta["sha256"], meta["width"], meta["height"]) == (stored.sha256, "96", "64")
    assert "flow-run-id" not in meta  # not inside a flow run
    # Only the final object remains: no temporary key is left behind.
    assert keys(s3_client, destination.bucket) == [stored.key]


def test_s3_holds_full_object_sha256_checksum_for_multipart_uploads(files, destination, s3_client,
                                                                    big_jpeg):
    url = files.add("/big.jpg", body=big_jpeg)
    [stored] = store(prediction(url), destination)
    head = s3_client.head_object(Bucket=destination.bucket, Key=stored.key, ChecksumMode="ENABLED")
    digest = hashlib.sha256(big_jpeg).digest()
    assert head["ChecksumSHA256"] == base64.b64encode(digest).decode()
    assert head["Metadata"]["sha256"] == stored.sha256 == digest.hex()
    assert head["ContentLength"] == len(big_jpeg)


def test_an_output_of_several_parts_is_stored_byte_for_byte_in_order(files, destination,
                                                                     s3_client):
    # Three parts: each uploads while the next downloads, and S3 must join them in order.
    huge = make_image(4200, 3000, noise=True)
    assert len(huge) > 2 * 5 * 1024 * 1024
    url = files.add("/huge.jpg", body=huge)
    [stored] = store(prediction(url), destination)
    body = s3_client.get_object(Bucket=destination.bucket, Key=stored.key)["Body"].read()
    assert body == huge
    assert stored.sha256 == hashlib.sha256(huge).hexdigest()
    assert keys(s3_client, destination.bucket) == [stored.key]
    assert s3_client.list_multipart_uploads(Bucket=destination.bucket).get("Uploads", []) == []


def test_bytes_changed_on_the_way_to_s3_are_refused_there_and_sent_again(files, destination,
                                                                        s3_client):
    """The PUT names the SHA-256 taken while downloading; S3 (here the local S3, which checks
    it as S3 does) refuses a body that does not match, and the output is sent again whole."""
    image = make_image(300, 200, noise=True)
    url = files.add("/a.jpg", body=image)
    corrupted: list[int] = []

    def flip_a_byte(request: Any, **_: Any) -> None:
        if not corrupted and request.body:
            body = bytearray(request.body)
            body[len(body) // 2] ^= 0xFF
            request.body = bytes(body)
            corrupted.append(len(body))

    events = destination.get_client().meta.events
    events.register("before-send.s3.PutObject", flip_a_byte)
    try:
        [stored] = store(prediction(url), destination, fresh=True)
    finally:
        events.unregister("before-send.s3.PutObject", flip_a_byte)
    assert corrupted  # the first PUT really carried other bytes
    body = s3_client.get_object(Bucket=destination.bucket, Key=stored.key)["Body"].read()
    assert body == image and stored.sha256 == hashlib.sha256(image).hexdigest()


def test_no_authorization_header_reaches_the_file_host(files, destination, monkeypatch):
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_should_never_travel")
    url = files.add("/a.jpg", body=make_image())
    store(prediction(url), destination)
    assert files.headers_seen
    assert all("authorization" not in {k.lower() for k in h} for h in files.headers_seen)


def test_data_uris_png_and_webp_are_stored_with_their_own_type(destination, s3_client):
    png, webp = make_image(40, 30, "PNG"), make_image(40, 30, "WEBP")
    urls = [f"data:image/png;base64,{base64.b64encode(png).decode()}",
            f"data:application/octet-stream;base64,{base64.b64encode(webp).decode()}"]
    stored = store(prediction(*urls), destination, expected_size=(40, 30))
    assert [s.key.rsplit("/", 1)[-1] for s in stored] == ["0.png", "1.webp"]
    assert [s.content_type for s in stored] == ["image/png", "image/webp"]
    body = s3_client.get_object(Bucket=destination.bucket, Key=stored[1].key)["Body"].read()
    assert body == webp


def test_key_prefix_overrides_the_destination_prefix(destination):
    url = f"data:image/png;base64,{base64.b64encode(make_image(fmt='PNG')).decode()}"
    [stored] = store(prediction(url), destination, key_prefix="/custom/")
    assert stored.key == "custom/pred123/0.png"


def test_outputs_come_back_in_index_order(files, destination):
    sizes = [(64 + 8 * i, 40) for i in range(6)]
    urls = [files.add(f"/o{i}.jpg", body=make_image(*size)) for i, size in enumerate(sizes)]
    stored = store(prediction(*urls), destination)
    assert [s.index for s in stored] == list(range(6))
    assert [(s.width, s.height) for s in stored] == sizes


# --- e: image checks ---------------------------------------------------------------------------


def test_a_size_the_table_did_not_predict_is_stored_with_the_difference_recorded(
    files, destination, s3_client, caplog
):
    """Store first, judge after: the size table is a guess about a hosted model; a paid image of
    another size is kept at its real size and the difference is written down beside it."""
    url = files.add("/a.jpg", body=make_image(96, 64))
    [stored] = store(prediction(url), destination, expected_size=(2048, 2048))
    assert (stored.width, stored.height) == (96, 64)
    assert stored.size_note is not None and "96x64" in stored.size_note
    assert "2048x2048" in stored.size_note
    head = s3_client.head_object(Bucket=destination.bucket, Key=stored.key)
    assert head["Metadata"]["expected-size"] == "2048x2048"
    assert any("2048x2048" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    # A retry finds the stored image and reports the same note, without downloading again.
    [again] = store(prediction(url), destination, expected_size=(2048, 2048))
    assert _stored_fields(again) == _stored_fields(stored) and files.hits["/a.jpg"] == 1


def test_non_image_is_output_invalid_and_its_bytes_are_kept_in_quarantine(
    files, destination, s3_client
):
    body = b"<html>Service page</html>" * 10
    url = files.add("/a.jpg", body=body, content_type="image/jpeg")
    with pytest.raises(OutputInvalid, match="not a valid image") as info:
        store(prediction(url), destination)
    key = f"{destination.prefix}/_quarantine/pred123/0.bin"
    assert f"s3://{destination.bucket}/{key}" in str(info.value)
    assert keys(s3_client, destination.bucket) == [key]  # nothing under the real image keys
    kept = s3_client.get_object(Bucket=destination.bucket, Key=key)
    assert kept["Body"].read() == body and kept["Metadata"]["prediction-id"] == "pred123"
    assert "image" in kept["Metadata"]["reason"].lower()


def test_output_truncated_on_every_download_is_kept_in_quarantine(files, destination, s3_client):
    whole = make_image(96, 64)
    url = files.add("/t.jpg", body=whole[:-40])  # served complete, but without the end marker
    with pytest.raises(OutputInvalid, match="truncated on each of") as info:
        store(prediction(url), destination)
    key = f"{destination.prefix}/_quarantine/pred123/0.bin"
    assert key in str(info.value)
    assert files.hits["/t.jpg"] == len(FAST) + 2  # every retry, then the quarantine copy
    assert s3_client.get_object(Bucket=destination.bucket, Key=key)["Body"].read() == whole[:-40]
    assert keys(s3_client, destination.bucket) == [key]


# --- f: broken downloads never reach the final key ---------------------------------------------


def test_broken_download_leaves_nothing_and_raises_storage_failed(
    files, destination, s3_client, big_jpeg
):
    # Cut after 6 MiB: the first 5 MiB part is already uploaded when the download breaks.
    url = files.add("/big.jpg", body=big_jpeg, cut_at=6 * 1024 * 1024, send_length=True)
    with pytest.raises(StorageFailed) as info:
        store(prediction(url), destination)
    assert info.value.index == 0 and info.value.prediction_id == "pred123"
    assert "after 3 attempts" in str(info.value)
    assert files.hits["/big.jpg"] == 3
    assert keys(s3_client, destination.bucket) == []  # no final object, no temporary object
    uploads = s3_client.list_multipart_uploads(Bucket=destination.bucket)
    assert uploads.get("Uploads", []) == []  # multipart uploads were aborted


def test_a_body_that_ends_short_every_time_never_reaches_the_final_key(
    files, destination, s3_client, big_jpeg
):
    """The server closes cleanly after 6 MiB, on every download: the bytes are what Replicate
    serves, so they are kept in quarantine (never at the image's key) and the error says where."""
    url = files.add("/big.jpg", body=big_jpeg, cut_at=6 * 1024 * 1024, send_length=False)
    with pytest.raises(OutputInvalid, match="truncated on each of 3 downloads") as info:
        store(prediction(url), destination)
    assert "_quarantine/pred123/0.bin" in str(info.value)
    assert keys(s3_client, destination.bucket) == ["seedream/runs/_quarantine/pred123/0.bin"]
    uploads = s3_client.list_multipart_uploads(Bucket=destination.bucket)
    assert uploads.get("Uploads", []) == []


# --- g: idempotency ----------------------------------------------------------------------------


def test_second_run_reuses_stored_objects_even_after_the_source_expired(files, destination,
                                                                       s3_client):
    url = files.add("/a.jpg", body=make_image())
    [first] = store(prediction(url), destination)
    etag = s3_client.head_object(Bucket=destination.bucket, Key=first.key)["ETag"]
    files.routes["/a.jpg"] = Route(status=404)  # Replicate deleted it meanwhile

    [second] = store(prediction(url), destination)
    # Everything but the preview: it comes from the stream, which a re-run does not read
    # (with SEEDREAM_STORE_THUMBNAILS it is read back; see tests/test_previews.py).
    assert _stored_fields(second) == _stored_fields(first) and first.preview
    assert second.preview is None and "earlier attempt" in (second.preview_note or "")
    assert files.hits["/a.jpg"] == 1  # never downloaded again
    assert s3_client.head_object(Bucket=destination.bucket, Key=first.key)["ETag"] == etag


def _s3_operations(destination: S3Destination) -> list[str]:
    """The S3 operations the destination's (per-process) client sends from now on."""
    seen: list[str] = []
    destination.get_client().meta.events.register(
        "before-call.s3.*", lambda model, **_: seen.append(model.name))
    return seen


def test_a_new_predictions_output_goes_up_in_one_request_and_never_over_another(
        files, destination, s3_client):
    """A prediction this attempt just made has nothing stored yet: each output is one PUT, no
    HEAD first; the PUT is conditional, so an object already under the key is never replaced:
    ours (an earlier attempt whose answer was lost) is returned, a foreign one refused."""
    url = files.add("/a.jpg", body=make_image())
    seen = _s3_operations(destination)
    [first] = store(prediction(url, pid="fresh1"), destination, fresh=True)
    assert seen.count("PutObject") == 1 and "HeadObject" not in seen
    etag = s3_client.head_object(Bucket=destination.bucket, Key=first.key)["ETag"]

    seen.clear()
    [again] = store(prediction(url, pid="fresh1"), destination, fresh=True)
    assert _stored_fields(again) == _stored_fields(first)
    assert again.preview == first.preview is not None  # the preview this attempt made
    assert s3_client.head_object(Bucket=destination.bucket, Key=first.key)["ETag"] == etag

    seen.clear()
    [looked] = store(prediction(url, pid="fresh1"), destination)  # not fresh: look first
    assert _stored_fields(looked) == _stored_fields(first) and "PutObject" not in seen

    key = "seedream/runs/fresh2/0.jpg"
    s3_client.put_object(Bucket=destination.bucket, Key=key, Body=b"someone else's")
    with pytest.raises(StorageFailed, match="refusing to overwrite"):
        store(prediction(url, pid="fresh2"), destination, fresh=True)
    assert s3_client.get_object(Bucket=destination.bucket, Key=key)["Body"].read() == (
        b"someone else's")


def test_a_large_output_is_never_copied_over_an_object_that_appeared_meanwhile(
        files, destination, s3_client, big_jpeg):
    """Above 5 MiB an output goes up under a temporary key and is copied to its final key: a
    writer that gets there between the first look and the copy keeps its object."""
    url = files.add("/big.jpg", body=big_jpeg)
    key = "seedream/runs/race1/0.jpg"

    def someone_else_first(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key") == key:
            s3_client.put_object(Bucket=destination.bucket, Key=key, Body=b"someone else's")

    events = destination.get_client().meta.events
    events.register("before-parameter-build.s3.CopyObject", someone_else_first)
    try:
        with pytest.raises(StorageFailed, match="refusing to overwrite"):
            store(prediction(url, pid="race1"), destination)
    finally:
        events.unregister("before-parameter-build.s3.CopyObject", someone_else_first)
    assert s3_client.get_object(Bucket=destination.bucket, Key=key)["Body"].read() == (
        b"someone else's")
    assert keys(s3_client, destination.bucket) == [key]  # no temporary key left either


def test_a_foreign_object_under_the_key_is_not_overwritten(files, destination, s3_client):
    key = "seedream/runs/pred123/0.jpg"
    s3_client.put_object(Bucket=destination.bucket, Key=key, Body=b"someone else's")
    url = files.add("/a.jpg", body=make_image())
    with pytest.raises(StorageFailed, match="refusing to overwrite") as info:
        store(prediction(url), destination)
    assert info.value.retryable is False
    assert s3_client.get_object(Bucket=destination.bucket, Key=key)["Body"].read() == (
        b"someone else's"
    )


# --- h, i: errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410])
def test_gone_source_is_output_expired(files, destination, status):
    url = files.add("/gone.jpg", status=status)
    with pytest.raises(OutputExpired, match="about 1 hour") as info:
        store(prediction(url), destination)
    assert info.value.prediction_id == "pred123" and "Re-run the prediction" in str(info.value)
    assert files.hits["/gone.jpg"] == 1


def test_data_removed_is_output_expired_without_any_request(destination):
    removed = Prediction.from_api({"id": "p9", "status": "succeeded", "data_removed": True,
                                   "output": None})
    with pytest.raises(OutputExpired, match="Re-run the prediction"):
        store(removed, destination)


def test_succeeded_without_output_is_a_clear_error(destination):
    with pytest.raises(OutputInvalid, match="returned no output"):
        store(prediction(), destination)


def test_source_5xx_is_retried_and_the_signature_never_logged(files, destination, caplog):
    files.add("/a.jpg", body=make_image(), fail_first=2)
    url = files.url("/a.jpg", "?X-Amz-Signature=topsecret&X-Amz-Credential=AKIA")
    caplog.set_level("INFO", logger="prefect_seedream.tasks.storage")
    stored = store_output(url, prediction(url), 0, destination, retry_delays=FAST)
    assert stored.size_bytes > 0
    assert files.hits["/a.jpg"] == 3
    assert "retrying" in caplog.text and "Stored output 0" in caplog.text
    assert "topsecret" not in caplog.text and "AKIA" not in caplog.text


def test_s3_503s_are_retried_without_regenerating(files, flaky_s3, destination, s3_client,
                                                  record_outcome):
    flaky = destination.model_copy(update={"endpoint_url": flaky_s3.endpoint})
    url = files.add("/a.jpg", body=make_image())
    flaky_s3.fail_next = 7  # > botocore's 5 attempts per call: our own retry kicks in too
    [stored] = store(prediction(url), flaky)
    assert flaky_s3.failed == 7
    assert files.hits["/a.jpg"] == 1  # head_object failed first, before any download
    assert keys(s3_client, destination.bucket) == [stored.key]
    record_outcome("S3 answers 503 SlowDown for a while (7 calls)",
                   "retried the upload from the same download; no new prediction",
                   created=0, left_running=0,
                   outputs_lost=1 - len(keys(s3_client, destination.bucket)))


def test_s3_down_for_good_is_storage_failed_naming_every_index(files, flaky_s3, destination,
                                                               s3_client):
    flaky = destination.model_copy(update={"endpoint_url": flaky_s3.endpoint})
    urls = [files.add(f"/{i}.jpg", body=make_image()) for i in range(2)]
    flaky_s3.fail_next = 10_000
    with pytest.raises(StorageFailed) as info:
        store(prediction(*urls), flaky)
    assert info.value.failed_indexes == [0, 1]
    assert "output 0" in str(info.value) and "output 1" in str(info.value)
    assert "pred123" in str(info.value)
    assert keys(s3_client, destination.bucket) == []


def test_every_output_is_attempted_and_the_good_ones_are_kept(files, destination, s3_client):
    urls = [
        files.add("/0.jpg", body=make_image()),
        files.add("/1.jpg", body=make_image(), status=500),
        files.add("/2.jpg", body=b"<html>oops</html>" * 20, content_type="image/jpeg"),
        files.add("/3.jpg", body=make_image(20, 20)),  # another size: stored, with a note
    ]
    with pytest.raises(StorageFailed) as info:
        store(prediction(*urls), destination, expected_size=(96, 64))
    error = info.value
    assert error.failed_indexes == [1, 2] and error.index == 1
    assert "output 1" in str(error) and "output 2" in str(error) and "_quarantine" in str(error)
    assert keys(s3_client, destination.bucket) == [
        "seedream/runs/_quarantine/pred123/2.bin",
        "seedream/runs/pred123/0.jpg", "seedream/runs/pred123/3.jpg",
    ]
    assert [u.rsplit("/", 1)[-1] for u in error.stored_uris] == ["0.jpg", "3.jpg"]


# --- under Prefect -----------------------------------------------------------------------------


def test_task_runs_under_prefect_and_records_the_flow_run(prefect_harness, files, destination,
                                                          s3_client):
    from prefect import flow
    from prefect.runtime import flow_run

    url = files.add("/a.jpg", body=make_image())

    @flow
    def keep() -> tuple[str, list[StoredImage]]:
        return flow_run.id, store_outputs(prediction(url), destination, retry_delays=FAST)

    run_id, [stored] = keep()
    meta = s3_client.head_object(Bucket=destination.bucket, Key=stored.key)["Metadata"]
    assert meta["flow-run-id"] == str(run_id)
    assert meta["prediction-id"] == "pred123"


def test_task_alone_under_prefect_stores_and_raises_typed_errors(prefect_harness, files,
                                                                 destination):
    ok = files.add("/a.jpg", body=make_image())
    [stored] = store_outputs(prediction(ok), destination, retry_delays=FAST)
    assert stored.content_type == "image/jpeg"
    gone = files.add("/gone.jpg", status=404)
    with pytest.raises(OutputExpired):
        store_outputs(prediction(gone, pid="pred404"), destination, retry_delays=FAST)


def _stored_fields(image: Any) -> dict[str, Any]:
    return image.model_dump(exclude={"preview", "preview_note", "thumbnail_uri"})
