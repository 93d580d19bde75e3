"""Hostile keys and sources, through the real path: Prefect flows under the test harness -> the
real `replicate` client -> the sandbox, S3 on moto's server, and small local HTTP servers that
count every request the worker makes to them.

What a user cares about is measured, not assumed: predictions created (the sandbox's counters),
objects written outside the destination's prefix (a listing of the bucket), requests to hosts
the worker must never reach (the counting servers, and moto's own request log for a foreign
bucket). Each test records its row of RELIABILITY.md's "bad input and hostile peers" table.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image
from prefect import flow
from pydantic import SecretStr

from prefect_seedream import (
    InvalidInput,
    aedit_image,
    agenerate_images,
    edit_image,
    generate_batch,
    generate_images,
)
from prefect_seedream.blocks import S3Destination
from prefect_seedream.flows.batch.manifest import ManifestInvalid
from prefect_seedream.flows.pipeline_example import contact_sheet

pytestmark = pytest.mark.usefixtures("prefect_harness")

PREFIX = "tenant-a"


# --- helpers: what is measured -----------------------------------------------------------------

@pytest.fixture
def destination(s3_endpoint: str, bucket: str) -> S3Destination:
    return S3Destination(
        bucket=bucket, prefix=PREFIX, endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key=SecretStr("testing"),
    )


def jpeg(size: tuple[int, int] = (600, 400), color: str = "teal") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def all_keys(s3_client: Any, bucket: str) -> set[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def outside(keys: set[str]) -> set[str]:
    """Keys not under `PREFIX/`, or with a segment a sync tool would read as a path step."""
    return {k for k in keys if not k.startswith(PREFIX + "/")
            or any(part in ("", ".", "..") for part in k.split("/"))}


def created(sandbox: Any) -> int:
    return int(sandbox.counters()["creates"])


class CountingServer:
    """A tiny HTTP server on loopback that counts the requests it gets, per path.

    `/image.jpg` serves a small JPEG, `/big.jpg` a large one, `/redirect` a 302 to `target`,
    anything else (`/internal-admin?action=delete`) a 200 "deleted".
    """

    def __init__(self, big_bytes: int = 4 * 1024 * 1024) -> None:
        self.hits: list[str] = []
        self.redirect_to = ""
        self.small = jpeg()
        self.big = jpeg((64, 64)) + b"\0" * big_bytes
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                counter.hits.append(self.path)
                path = self.path.split("?", 1)[0]
                if path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", counter.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = {"/image.jpg": counter.small, "/big.jpg": counter.big}.get(
                    path, b"deleted")
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the worker hangs up past its byte cap
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> CountingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def internal() -> Iterator[CountingServer]:
    """A host the worker must never reach (an "internal admin" service)."""
    with CountingServer() as server:
        yield server


@pytest.fixture
def allowed() -> Iterator[CountingServer]:
    """A loopback host named in SEEDREAM_SOURCE_PRIVATE_HOSTS (what the setting is for)."""
    with CountingServer() as server:
        yield server


@pytest.fixture
def allow_host(monkeypatch: pytest.MonkeyPatch, allowed: CountingServer) -> CountingServer:
    monkeypatch.setenv("SEEDREAM_SOURCE_PRIVATE_HOSTS", json.dumps([f"127.0.0.1:{allowed.port}"]))
    return allowed


class S3Requests(logging.Handler):
    """moto's server request log (werkzeug's access log, one line per request), captured."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def to_bucket(self, bucket: str) -> list[str]:
        return [line for line in self.lines if f" /{bucket}" in line]


@pytest.fixture
def s3_requests() -> Iterator[S3Requests]:
    logger = logging.getLogger("werkzeug")
    level = logger.level
    handler = S3Requests()
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def other_bucket(s3_client: Any) -> str:
    """Another tenant's bucket, with a private object in it."""
    name = f"private-other-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=name)
    s3_client.put_object(Bucket=name, Key="hr/salaries-scan.jpg", Body=jpeg())
    return name


def generate(mode: str, prompt: str, **kwargs: Any) -> Any:
    if mode == "sync":
        return generate_images(prompt, **kwargs)

    @flow
    async def users_async_pipeline() -> Any:
        return await agenerate_images(prompt, **kwargs)

    return asyncio.run(users_async_pipeline())


def edit(mode: str, instruction: str, images: list[str], **kwargs: Any) -> Any:
    if mode == "sync":
        return edit_image(instruction, images, **kwargs)

    @flow
    async def users_async_pipeline() -> Any:
        return await aedit_image(instruction, images, **kwargs)

    return asyncio.run(users_async_pipeline())


# --- keys stay inside the destination ------------------------------------------------------------

HOSTILE_PREFIXES = {
    "dot-dot": ("../../escape", r"'\.\.'"),
    "900 characters": ("k" * 900, "at most 512 bytes"),
    "U+202E": ("invoices\u202egpj.exe", "U\\+202E"),
    "NUL": ("a\x00b", "U\\+0000"),
    "empty segment": ("other-tenant//x", "empty"),
    "leading slash": ("/manifests", "empty"),
}


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("case", sorted(HOSTILE_PREFIXES))
def test_a_hostile_key_prefix_is_refused_before_any_prediction(
    mode: str, case: str, credentials: Any, destination: S3Destination, s3_client: Any,
    seedream_sandbox: Any, record_hostile: Any,
) -> None:
    key_prefix, rule = HOSTILE_PREFIXES[case]
    with pytest.raises(InvalidInput, match=rule) as refused:
        generate(mode, "a lighthouse", size="1K", credentials=credentials,
                 destination=destination, key_prefix=key_prefix)
    assert "key_prefix" in str(refused.value) and "\x00" not in str(refused.value)
    assert "\u202e" not in str(refused.value)
    made, escaped = created(seedream_sandbox), outside(all_keys(s3_client, destination.bucket))
    assert made == 0 and escaped == set()
    record_hostile(f"generate_images key_prefix {case} ({mode})",
                   "refused before any request (UnsafeKey naming the rule)",
                   created=made, outside_writes=len(escaped))


def test_a_hostile_key_prefix_on_an_edit_is_refused_before_its_source_is_read(
    credentials: Any, destination: S3Destination, s3_client: Any, seedream_sandbox: Any,
    s3_requests: S3Requests, record_hostile: Any,
) -> None:
    s3_client.put_object(Bucket=destination.bucket, Key=f"{PREFIX}/in/photo.jpg", Body=jpeg())
    s3_requests.lines.clear()
    with pytest.raises(InvalidInput, match=r"'\.\.'"):
        edit_image("warmer", [f"s3://{destination.bucket}/{PREFIX}/in/photo.jpg"],
                   credentials=credentials, destination=destination, key_prefix="../../escape")
    assert s3_requests.to_bucket(destination.bucket) == []  # not even the source's HEAD
    made, escaped = created(seedream_sandbox), outside(all_keys(s3_client, destination.bucket))
    assert made == 0 and escaped == set()
    record_hostile("edit_image key_prefix ../../escape",
                   "refused before the source is read or anything is paid",
                   created=made, outside_writes=len(escaped))


def test_a_hostile_key_prefix_on_a_batch_is_refused_before_any_prediction(
    credentials: Any, destination: S3Destination, s3_client: Any, seedream_sandbox: Any,
    record_hostile: Any,
) -> None:
    state = generate_batch([{"prompt": "a teapot", "size": "1K"}], credentials=credentials,
                           destination=destination, key_prefix="../../escape",
                           return_state=True)
    assert state.is_failed()
    with pytest.raises(InvalidInput, match=r"'\.\.'"):
        state.result()
    made, escaped = created(seedream_sandbox), outside(all_keys(s3_client, destination.bucket))
    assert made == 0 and escaped == set()
    record_hostile("generate_batch key_prefix ../../escape",
                   "the run fails before any prediction (UnsafeKey naming the rule)",
                   created=made, outside_writes=len(escaped))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_empty_key_prefix_means_no_extra_nesting(
    mode: str, credentials: Any, destination: S3Destination, s3_client: Any,
    seedream_sandbox: Any, record_hostile: Any,
) -> None:
    """`""` is the same as no key_prefix: the destination's own prefix, never the bucket root."""
    [image] = generate(mode, "a lighthouse", size="1K", credentials=credentials,
                       destination=destination, key_prefix="")
    assert image.key == f"{PREFIX}/{image.prediction_id}/0.jpg"
    made, escaped = created(seedream_sandbox), outside(all_keys(s3_client, destination.bucket))
    assert made == 1 and escaped == set()
    record_hostile(f'generate_images key_prefix "" ({mode})',
                   "no extra nesting: stored under the destination's prefix, not the bucket root",
                   created=made, outside_writes=len(escaped))


def test_another_tenants_prefix_nests_under_the_destination(
    credentials: Any, destination: S3Destination, s3_client: Any, seedream_sandbox: Any,
    record_hostile: Any,
) -> None:
    s3_client.put_object(Bucket=destination.bucket, Key="other-tenant/x/contract.pdf",
                         Body=b"theirs")
    before = all_keys(s3_client, destination.bucket)
    [image] = generate_images("a lighthouse", size="1K", credentials=credentials,
                              destination=destination, key_prefix="other-tenant/x")
    assert image.key == f"{PREFIX}/other-tenant/x/{image.prediction_id}/0.jpg"
    new = all_keys(s3_client, destination.bucket) - before
    assert {k for k in new if "/_ledger/" not in k} == {image.key}  # and the run's ledger record
    assert s3_client.get_object(Bucket=destination.bucket,
                                Key="other-tenant/x/contract.pdf")["Body"].read() == b"theirs"
    made, escaped = created(seedream_sandbox), outside(new)
    assert made == 1 and escaped == set()
    record_hostile("generate_images key_prefix other-tenant/x",
                   "nests: stored at {prefix}/other-tenant/x/..., the other tenant's keys "
                   "untouched", created=made, outside_writes=len(escaped))


def test_a_batch_key_prefix_nests_under_the_destination(
    credentials: Any, destination: S3Destination, s3_client: Any, seedream_sandbox: Any,
) -> None:
    result = generate_batch([{"prompt": "a teapot", "size": "1K"}], credentials=credentials,
                            destination=destination, key_prefix="nightly")
    [item] = result.items
    assert item.images[0].key.startswith(f"{PREFIX}/nightly/batch/{item.item_key}/")
    assert outside(all_keys(s3_client, destination.bucket)) == set()
    assert created(seedream_sandbox) == 1


# --- sources only from where the destination allows -------------------------------------------

@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_source_in_another_bucket_is_refused_alike_present_or_missing_without_a_request(
    mode: str, credentials: Any, destination: S3Destination, other_bucket: str, s3_client: Any,
    seedream_sandbox: Any, s3_requests: S3Requests, record_hostile: Any,
) -> None:
    messages = []
    for key in ("hr/salaries-scan.jpg", "hr/no-such-scan.jpg"):
        with pytest.raises(InvalidInput, match="source_buckets") as refused:
            edit(mode, "describe", [f"s3://{other_bucket}/{key}"], credentials=credentials,
                 destination=destination)
        messages.append(str(refused.value))
    assert messages[0] == messages[1]  # no existence oracle
    reached = s3_requests.to_bucket(other_bucket)
    # The capture sees requests to that bucket when there are some:
    s3_client.head_object(Bucket=other_bucket, Key="hr/salaries-scan.jpg")
    assert len(s3_requests.to_bucket(other_bucket)) == len(reached) + 1
    made = created(seedream_sandbox)
    assert made == 0 and reached == []
    record_hostile(f"edit_image source s3://private-other/... present or missing ({mode})",
                   "refused before any request, same message either way (no existence oracle)",
                   created=made, internal_requests=len(reached))


def test_a_source_bucket_named_in_source_buckets_is_read(
    credentials: Any, destination: S3Destination, other_bucket: str, seedream_sandbox: Any,
) -> None:
    allowed = destination.model_copy(update={"source_buckets": [other_bucket]})
    [image] = edit_image("describe", [f"s3://{other_bucket}/hr/salaries-scan.jpg"], size="1K",
                         credentials=credentials, destination=allowed)
    assert image.key.startswith(f"{PREFIX}/")
    assert created(seedream_sandbox) == 1


def test_a_batch_source_in_another_bucket_is_refused_without_a_request(
    credentials: Any, destination: S3Destination, other_bucket: str, seedream_sandbox: Any,
    s3_requests: S3Requests, record_hostile: Any,
) -> None:
    manifest = [{"instruction": "describe", "images": [f"s3://{other_bucket}/hr/salaries-scan.jpg"],
                 "size": "1K"}]
    with pytest.raises(ManifestInvalid, match="is not one this destination reads sources from"):
        generate_batch(manifest, credentials=credentials, destination=destination)
    reached, made = s3_requests.to_bucket(other_bucket), created(seedream_sandbox)
    assert made == 0 and reached == []
    record_hostile("batch row with a source in another bucket",
                   "ManifestInvalid before any request to that bucket",
                   created=made, internal_requests=len(reached))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_internal_http_source_is_never_fetched(
    mode: str, credentials: Any, destination: S3Destination, internal: CountingServer,
    allow_host: CountingServer, seedream_sandbox: Any, record_hostile: Any,
) -> None:
    """Even with another loopback host allowed (as for the sandbox), an internal URL is
    refused before the worker (or Replicate) is sent to it."""
    with pytest.raises(InvalidInput, match="plain http"):
        edit(mode, "describe", [internal.url("/internal-admin?action=delete")],
             credentials=credentials, destination=destination)
    made = created(seedream_sandbox)
    assert made == 0 and internal.hits == []
    record_hostile(f"edit source http://127.0.0.1:<port>/internal-admin?action=delete ({mode})",
                   "refused: http only from loopback hosts in SEEDREAM_SOURCE_PRIVATE_HOSTS",
                   created=made, internal_requests=len(internal.hits))


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_an_https_source_on_a_loopback_address_is_refused_before_connecting(
    host: str, credentials: Any, destination: S3Destination, internal: CountingServer,
    seedream_sandbox: Any, record_hostile: Any,
) -> None:
    url = f"https://{host}:{internal.port}/internal-admin?action=delete"
    with pytest.raises(InvalidInput, match="loopback, private or link-local") as refused:
        edit_image("describe", [url], credentials=credentials, destination=destination)
    assert "action=delete" not in str(refused.value)  # no query string in errors
    made = created(seedream_sandbox)
    assert made == 0 and internal.hits == []
    record_hostile(f"edit source https://{host}:<port>/internal-admin",
                   "refused: the host resolves to a loopback address (checked before connecting)",
                   created=made, internal_requests=len(internal.hits))


def test_a_batch_row_with_an_internal_url_is_never_fetched(
    credentials: Any, destination: S3Destination, internal: CountingServer,
    seedream_sandbox: Any, record_hostile: Any,
) -> None:
    manifest = [{"instruction": "describe", "size": "1K",
                 "images": [internal.url("/internal-admin?action=delete")]}]
    with pytest.raises(ManifestInvalid, match="plain http"):
        generate_batch(manifest, credentials=credentials, destination=destination)
    made = created(seedream_sandbox)
    assert made == 0 and internal.hits == []
    record_hostile("batch row with source http://127.0.0.1:<port>/internal-admin",
                   "ManifestInvalid; the digest never fetches it",
                   created=made, internal_requests=len(internal.hits))


def test_a_batch_source_that_redirects_is_not_followed(
    credentials: Any, destination: S3Destination, internal: CountingServer,
    allow_host: CountingServer, seedream_sandbox: Any, record_hostile: Any,
) -> None:
    allow_host.redirect_to = internal.url("/internal-admin?action=delete")
    manifest = [{"instruction": "describe", "images": [allow_host.url("/redirect")],
                 "size": "1K"}]
    with pytest.raises(ManifestInvalid, match="does not follow redirects"):
        generate_batch(manifest, credentials=credentials, destination=destination)
    made = created(seedream_sandbox)
    assert allow_host.hits == ["/redirect"]  # asked once, the answer's Location ignored
    assert made == 0 and internal.hits == []
    record_hostile("batch row whose URL redirects to an internal URL",
                   "the redirect is refused, not followed; ManifestInvalid",
                   created=made, internal_requests=len(internal.hits))


def test_an_edit_source_that_redirects_is_refused_before_paying(
    credentials: Any, destination: S3Destination, internal: CountingServer,
    allow_host: CountingServer, seedream_sandbox: Any, record_hostile: Any,
) -> None:
    allow_host.redirect_to = internal.url("/internal-admin?action=delete")
    with pytest.raises(InvalidInput, match="redirect"):
        edit_image("describe", [allow_host.url("/redirect")], credentials=credentials,
                   destination=destination)
    made = created(seedream_sandbox)
    assert made == 0 and internal.hits == []
    record_hostile("edit source whose URL redirects to an internal URL",
                   "refused when its size is read (redirects are not followed), before paying",
                   created=made, internal_requests=len(internal.hits))


def test_an_allow_listed_loopback_source_is_used(
    credentials: Any, destination: S3Destination, allow_host: CountingServer,
    seedream_sandbox: Any,
) -> None:
    """What `SEEDREAM_SOURCE_PRIVATE_HOSTS` is for: a source on a host of your own."""
    [image] = edit_image("describe", [allow_host.url("/image.jpg")], size="1K",
                         credentials=credentials, destination=destination)
    assert image.key.startswith(f"{PREFIX}/")
    assert created(seedream_sandbox) == 1
    assert allow_host.hits  # the worker read its size from it (and the sandbox fetched it)


def test_an_oversized_source_is_refused_at_the_byte_cap(
    credentials: Any, destination: S3Destination, allow_host: CountingServer, s3_client: Any,
    seedream_sandbox: Any, monkeypatch: pytest.MonkeyPatch, record_hostile: Any,
) -> None:
    monkeypatch.setenv("SEEDREAM_SOURCE_MAX_BYTES", str(256 * 1024))
    s3_client.put_object(Bucket=destination.bucket, Key=f"{PREFIX}/in/big.jpg",
                         Body=allow_host.big)
    for images in ([allow_host.url("/big.jpg")], [f"s3://{destination.bucket}/{PREFIX}/in/big.jpg"]):
        with pytest.raises(InvalidInput, match="SEEDREAM_SOURCE_MAX_BYTES"):
            edit_image("describe", images, credentials=credentials, destination=destination)
        manifest = [{"instruction": "describe", "images": images, "size": "1K"}]
        with pytest.raises(ManifestInvalid, match="SEEDREAM_SOURCE_MAX_BYTES"):
            generate_batch(manifest, credentials=credentials, destination=destination)
    made = created(seedream_sandbox)
    assert made == 0
    record_hostile("edit source and batch row of 4 MiB, SEEDREAM_SOURCE_MAX_BYTES=256 KiB "
                   "(https and s3)", "refused at the cap, before paying; never hashed whole",
                   created=made)


# --- the contact-sheet deployment ----------------------------------------------------------------

def test_a_contact_sheet_of_a_foreign_object_is_refused_alike_present_or_missing(
    destination: S3Destination, other_bucket: str, s3_client: Any, seedream_sandbox: Any,
    s3_requests: S3Requests, record_hostile: Any,
) -> None:
    s3_client.put_object(Bucket=destination.bucket, Key="other-tenant/x.jpg", Body=jpeg())
    messages = []
    for uri in (f"s3://{other_bucket}/hr/salaries-scan.jpg", f"s3://{other_bucket}/hr/nope.jpg",
                f"s3://{destination.bucket}/other-tenant/x.jpg",
                f"s3://{destination.bucket}/{PREFIX}/../other-tenant/x.jpg"):
        with pytest.raises(InvalidInput, match="not an object under this destination") as refused:
            contact_sheet([uri], name="p1", destination=destination)
        messages.append(str(refused.value))
    assert len(set(messages)) == 1
    reached = s3_requests.to_bucket(other_bucket)
    written = outside(all_keys(s3_client, destination.bucket)) - {"other-tenant/x.jpg"}
    assert reached == [] and written == set()
    assert not any("contact-sheets" in k for k in all_keys(s3_client, destination.bucket))
    record_hostile("seedream.images.stored with uris in another bucket or outside the prefix",
                   "the contact sheet refuses them before any read, same message either way",
                   created=created(seedream_sandbox), outside_writes=len(written),
                   internal_requests=len(reached))


def test_a_contact_sheet_name_that_escapes_is_refused(
    destination: S3Destination, s3_client: Any, seedream_sandbox: Any, s3_requests: S3Requests,
    record_hostile: Any,
) -> None:
    key = f"{PREFIX}/p1/0.jpg"
    s3_client.put_object(Bucket=destination.bucket, Key=key, Body=jpeg())
    s3_requests.lines.clear()
    with pytest.raises(InvalidInput, match="slash"):
        contact_sheet([f"s3://{destination.bucket}/{key}"], name="../../leaked-x",
                      destination=destination)
    assert [line for line in s3_requests.lines if "GET " in line] == []  # nothing was read
    keys = all_keys(s3_client, destination.bucket)
    written = outside(keys)
    assert keys == {key} and written == set()
    record_hostile("seedream.images.stored with prediction_id ../../leaked-x",
                   "the contact sheet refuses the name (key rule) before reading anything",
                   created=created(seedream_sandbox), outside_writes=len(written))


def test_a_contact_sheet_caps_its_count_and_bytes(
    destination: S3Destination, s3_client: Any, monkeypatch: pytest.MonkeyPatch,
    seedream_sandbox: Any, record_hostile: Any,
) -> None:
    uris = []
    for i in range(3):
        s3_client.put_object(Bucket=destination.bucket, Key=f"{PREFIX}/p1/{i}.jpg",
                             Body=jpeg(color="red") + b"\0" * 200_000)
        uris.append(f"s3://{destination.bucket}/{PREFIX}/p1/{i}.jpg")
    monkeypatch.setenv("SEEDREAM_CONTACT_SHEET_MAX_IMAGES", "2")
    with pytest.raises(InvalidInput, match="at most 2 images"):
        contact_sheet(uris, name="p1", destination=destination)
    monkeypatch.setenv("SEEDREAM_CONTACT_SHEET_MAX_IMAGES", "3")
    monkeypatch.setenv("SEEDREAM_CONTACT_SHEET_MAX_IMAGE_BYTES", "100000")
    with pytest.raises(InvalidInput, match="larger than 100000 bytes"):
        contact_sheet(uris, name="p1", destination=destination)
    assert not any("contact-sheets" in k for k in all_keys(s3_client, destination.bucket))
    monkeypatch.setenv("SEEDREAM_CONTACT_SHEET_MAX_IMAGE_BYTES", "1000000")
    sheet = contact_sheet(uris, name="p1", destination=destination)
    assert sheet.uri == f"s3://{destination.bucket}/{PREFIX}/contact-sheets/p1.jpg"
    assert sheet.images == 3
    written = outside(all_keys(s3_client, destination.bucket))
    assert written == set()
    record_hostile("seedream.images.stored with more images, or bigger ones, than the caps",
                   "the contact sheet refuses past SEEDREAM_CONTACT_SHEET_MAX_IMAGES / _BYTES; "
                   "within them it streams each image", created=created(seedream_sandbox),
                   outside_writes=len(written))


# --- the rules themselves (pure) -----------------------------------------------------------------

@pytest.mark.parametrize(("key_prefix", "expected"), [
    (None, "tenant-a"), ("", "tenant-a"), ("requests/481", "tenant-a/requests/481"),
    ("manifests", "tenant-a/manifests"), ("café/été", "tenant-a/café/été"),
])
def test_a_key_prefix_only_adds_folders_under_the_destination(
    key_prefix: str | None, expected: str,
) -> None:
    from prefect_seedream.tasks.s3_storage.keys import key_prefix_under

    assert key_prefix_under("/tenant-a/", key_prefix) == expected


@pytest.mark.parametrize("key_prefix", [
    ".", "a/./b", "a/..", "a/", "a\\..\\b", "\u200bzero-width", "line\nbreak", "x" * 129,
    "/".join(["abcdefgh"] * 60),
])
def test_every_other_key_prefix_is_refused(key_prefix: str) -> None:
    from prefect_seedream.tasks.s3_storage.keys import UnsafeKey, key_prefix_under

    with pytest.raises(UnsafeKey, match="rule"):
        key_prefix_under("tenant-a", key_prefix)


@pytest.mark.parametrize("url", [
    "https://169.254.169.254/latest/meta-data/", "https://10.1.2.3/x.jpg",
    "https://192.168.0.10/x.jpg", "https://[::1]/x.jpg", "https://[fe80::1]/x.jpg",
    "https://[::ffff:10.0.0.1]/x.jpg", "https://0.0.0.0/x.jpg", "http://example.com/x.jpg",
    "https://user:secret@example.com/x.jpg", "file:///etc/passwd",
])
def test_a_url_source_to_a_private_address_or_not_https_is_refused(url: str) -> None:
    from prefect_seedream.flows.source_images import SourceRefused, check_source_url
    from prefect_seedream.tasks.seedream_settings import SeedreamSettings

    with pytest.raises(SourceRefused) as refused:
        check_source_url(url, SeedreamSettings())
    assert "secret" not in str(refused.value)
