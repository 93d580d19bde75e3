"""Pure storage helpers: keys, metadata encoding, content sniffing, streaming image checks."""

from __future__ import annotations

import io
from urllib.parse import unquote

import pytest
from PIL import Image

from prefect_seedream.tasks.replicate_client.prediction import Prediction
from prefect_seedream.tasks.s3_storage.checks import (
    ImageCheckError,
    ImageIncomplete,
    ImageProbe,
    extension_for,
    sniff_content_type,
)
from prefect_seedream.tasks.s3_storage.keys import (
    METADATA_LIMIT,
    build_metadata,
    encode_prompt,
    output_key,
)
from prefect_seedream.tasks.s3_storage.upload import redact_url


def image_bytes(fmt: str, size: tuple[int, int] = (120, 80)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 90)).save(buf, fmt)
    return buf.getvalue()


def probe_all(data: bytes, chunk: int = 1000) -> ImageProbe:
    probe = ImageProbe()
    for start in range(0, len(data), chunk):
        probe.feed(data[start : start + chunk])
    probe.finish()
    return probe


# --- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "ext", "expected"),
    [
        ("runs", "jpg", "runs/p1/0.jpg"),
        ("/runs//nightly/", ".png", "runs/nightly/p1/0.png"),
        ("", "JPEG", "p1/0.jpg"),
        ("a", "webp", "a/p1/0.webp"),
    ],
)
def test_output_key_is_deterministic_without_stray_slashes(prefix, ext, expected):
    assert output_key(prefix, "p1", 0, ext) == expected


@pytest.mark.parametrize(
    ("pid", "index", "ext"), [("", 0, "jpg"), ("a/b", 0, "jpg"), ("p", -1, "jpg"), ("p", 0, "exe")]
)
def test_output_key_rejects_keys_that_could_collide_or_escape(pid, index, ext):
    with pytest.raises(ValueError):
        output_key("runs", pid, index, ext)


# --- metadata ----------------------------------------------------------------------------------


def test_prompt_encoding_is_ascii_and_reversible():
    prompt = 'Ein Café, 東京の夜 — "neon" 100% 🌃\nline two'
    encoded, truncated = encode_prompt(prompt, 2000)
    assert not truncated
    assert encoded.isascii() and " " not in encoded and "\n" not in encoded
    assert unquote(encoded) == prompt


def test_long_prompt_metadata_fits_s3s_2kb_limit_and_says_it_was_cut():
    prompt = "東京の夜景、ネオン、雨。" * 200
    p = Prediction(id="p1", status="succeeded", model="bytedance/seedream-4",
                   input={"prompt": prompt})
    meta = build_metadata(p, 3, sha256="ab" * 32, width=4096, height=4096,
                          flow_run_id="0d3c5b5e-9a38-4c2e-bf6f-6f1d4c8a2e11")
    assert sum(len(k.encode()) + len(v.encode()) for k, v in meta.items()) <= METADATA_LIMIT
    assert all(v.isascii() for v in meta.values())
    assert meta["prompt-truncated"] == "true"
    decoded = unquote(meta["prompt"])
    assert len(decoded) > 100 and prompt.startswith(decoded)  # cut on a character boundary
    assert meta["flow-run-id"] == "0d3c5b5e-9a38-4c2e-bf6f-6f1d4c8a2e11"
    assert (meta["index"], meta["width"], meta["height"]) == ("3", "4096", "4096")


def test_metadata_without_prompt_model_or_flow_run_has_only_what_is_known():
    p = Prediction(id="p1", status="succeeded")
    meta = build_metadata(p, 0, sha256="00" * 32, width=1, height=2, flow_run_id=None)
    assert set(meta) == {"prediction-id", "index", "sha256", "width", "height"}


# --- content sniffing and the streaming probe --------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime", "ext"),
    [("JPEG", "image/jpeg", "jpg"), ("PNG", "image/png", "png"), ("WEBP", "image/webp", "webp"),
     ("GIF", "image/gif", "gif")],
)
def test_type_and_size_come_from_the_bytes(fmt, mime, ext):
    data = image_bytes(fmt)
    assert sniff_content_type(data[:12]) == mime
    assert extension_for(mime) == ext
    probe = probe_all(data, chunk=7)
    assert (probe.content_type, probe.width, probe.height, probe.size_bytes) == (
        mime, 120, 80, len(data)
    )


def test_lossless_webp_dimensions():
    buf = io.BytesIO()
    Image.new("RGB", (333, 77)).save(buf, "WEBP", lossless=True)
    probe = probe_all(buf.getvalue())
    assert (probe.width, probe.height) == (333, 77)


@pytest.mark.parametrize("head", [b"<html><body>", b"%PDF-1.7\n...", b"BM6\x00\x00\x00\x00\x00"])
def test_non_images_are_refused(head):
    with pytest.raises(ImageCheckError, match="Not a JPEG"):
        sniff_content_type(head)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_truncated_images_are_detected_as_incomplete(fmt):
    data = image_bytes(fmt, (300, 200))
    with pytest.raises(ImageIncomplete):
        probe_all(data[: len(data) - 5])


def test_empty_output_is_refused():
    with pytest.raises(ImageCheckError, match="empty"):
        ImageProbe().finish()


def test_probe_keeps_only_the_header_in_memory():
    data = image_bytes("JPEG", (64, 64))
    probe = ImageProbe()
    probe.feed(data)
    probe.feed(b"\x00" * 5_000_000)  # the rest of a big image streams past
    assert probe.header_ready and len(probe._head) <= 16


# --- log safety --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://replicate.delivery/xezq/abc/out-0.jpg", "https://replicate.delivery/xezq/abc/out-0.jpg"),
        ("https://b.s3.amazonaws.com/k.jpg?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA",
         "https://b.s3.amazonaws.com/k.jpg"),
        ("https://user:pw@host:8443/a.png#frag", "https://host:8443/a.png"),
        ("data:image/png;base64,iVBORw0KGgo=", "data:image/png;base64,<12 chars>"),
    ],
)
def test_urls_are_logged_without_secrets(url, expected):
    assert redact_url(url) == expected
