"""Previews as a person sees them: every stored image shows in its artifact as a small JPEG;
a batch shows a gallery under its cap; a preview that fails never costs a stored image."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import pytest
from PIL import Image, ImageStat
from pydantic import SecretStr

from prefect_seedream import edit_image, generate_batch, generate_images
from prefect_seedream.blocks import ReplicateCredentials
from prefect_seedream.flows.batch.gallery import gallery_markdown
from prefect_seedream.flows.batch.items import ItemOutcome
from prefect_seedream.tasks.replicate_client.prediction import Prediction
from prefect_seedream.tasks.s3_storage.previews import encode_preview
from prefect_seedream.tasks.storage import StoredImage, store_output

pytestmark = pytest.mark.usefixtures("prefect_harness")

DATA_URI = re.compile(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)")


def artifacts(key: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return [str(a.data) for a in found]


def previews_in(markdown: str) -> list[Image.Image]:
    """Every inline preview, decoded: each must be a real JPEG."""
    images = []
    for payload in DATA_URI.findall(markdown):
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        assert image.format == "JPEG" and max(image.size) <= 256
        image.load()
        images.append(image)
    return images


def mean_rgb(image: Image.Image) -> list[float]:
    return ImageStat.Stat(image.convert("RGB").resize((32, 32))).mean


def test_every_stored_image_shows_in_the_artifact_as_its_own_preview(
    credentials: ReplicateCredentials, destination: Any, s3_client: Any, seedream_sandbox: Any,
) -> None:
    seedream_sandbox.configure(auto_image_count=2)
    images = generate_images("two lighthouses", size="1K", max_images=2,
                             credentials=credentials, destination=destination)
    assert len(images) == 2
    report = next(a for a in artifacts("seedream-images") if images[0].uri in a)
    shown = previews_in(report)
    assert len(shown) == 2
    for image, preview in zip(images, shown, strict=True):
        assert image.preview and len(base64.b64decode(image.preview)) <= 8192
        stored = Image.open(io.BytesIO(s3_client.get_object(
            Bucket=image.bucket, Key=image.key)["Body"].read()))
        # The preview looks like the stored image: the same colours, the same shape.
        assert max(abs(a - b) for a, b in zip(mean_rgb(stored), mean_rgb(preview),
                                              strict=True)) < 12
        assert abs(preview.width / preview.height - stored.width / stored.height) < 0.05
    assert "X-Amz-" not in report and "Signature" not in report
    assert seedream_sandbox.api_token not in report


def test_an_edit_previews_only_its_outputs_never_its_source(
    credentials: ReplicateCredentials, destination: Any, s3_client: Any,
) -> None:
    source = io.BytesIO()
    Image.new("RGB", (1024, 1024), (255, 0, 255)).save(source, "JPEG")
    s3_client.put_object(Bucket=destination.bucket, Key="in/magenta.jpg", Body=source.getvalue())
    images = edit_image("make it night", [f"s3://{destination.bucket}/in/magenta.jpg"],
                        size="1K", credentials=credentials, destination=destination)
    report = next(a for a in artifacts("seedream-images") if images[0].uri in a)
    assert len(previews_in(report)) == len(images) == 1
    assert "magenta.jpg" not in report and "X-Amz-" not in report


def test_stored_thumbnails_sit_next_to_their_image_and_serve_a_retry(
    monkeypatch: pytest.MonkeyPatch, credentials: ReplicateCredentials, destination: Any,
    s3_client: Any,
) -> None:
    monkeypatch.setenv("SEEDREAM_STORE_THUMBNAILS", "true")
    (image,) = generate_images("a fox", size="1K", credentials=credentials,
                               destination=destination)
    thumb_key = f"runs/{image.prediction_id}/thumbs/0.jpg"
    thumb = s3_client.get_object(Bucket=destination.bucket, Key=thumb_key)
    assert thumb["ContentType"] == "image/jpeg"
    assert thumb["Body"].read() == base64.b64decode(image.preview or "")
    assert image.thumbnail_uri == f"s3://{destination.bucket}/{thumb_key}"
    # A retry finds the stored image and its preview; it stores neither again.
    prediction = Prediction.from_api({"id": image.prediction_id, "status": "succeeded",
                                      "output": ["https://gone.invalid/0.jpg"]})
    again = store_output("https://gone.invalid/0.jpg", prediction, 0, destination)
    assert again.preview == image.preview and again.sha256 == image.sha256


def _data_uri(image: Image.Image, fmt: str) -> str:
    out = io.BytesIO()
    image.save(out, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(out.getvalue()).decode()


def test_a_preview_that_fails_still_stores_the_image(
    monkeypatch: pytest.MonkeyPatch, destination: Any, s3_client: Any,
) -> None:
    # A PNG too large to decode whole for a preview, and JPEG noise no cap can hold.
    big_png = _data_uri(Image.new("RGB", (4200, 4100), "teal"), "PNG")
    prediction = Prediction.from_api({"id": "p-nopreview", "status": "succeeded",
                                      "output": [big_png]})
    stored = store_output(big_png, prediction, 0, destination)
    assert stored.preview is None and "too large to decode whole" in (stored.preview_note or "")
    assert s3_client.head_object(Bucket=destination.bucket, Key=stored.key)["ContentLength"] \
        == stored.size_bytes
    monkeypatch.setenv("SEEDREAM_PREVIEW_MAX_BYTES", "256")
    noise = _data_uri(Image.effect_noise((512, 512), 120).convert("RGB"), "JPEG")
    prediction = Prediction.from_api({"id": "p-noise", "status": "succeeded", "output": [noise]})
    stored = store_output(noise, prediction, 0, destination)
    assert stored.preview is None and "SEEDREAM_PREVIEW_MAX_BYTES" in (stored.preview_note or "")
    assert s3_client.head_object(Bucket=destination.bucket, Key=stored.key)


def test_a_4k_output_gets_a_preview_under_the_cap(destination: Any) -> None:
    gradient = Image.radial_gradient("L").resize((4096, 4096)).convert("RGB")
    uri = _data_uri(gradient, "JPEG")
    prediction = Prediction.from_api({"id": "p-4k", "status": "succeeded", "output": [uri]})
    stored = store_output(uri, prediction, 0, destination)
    preview = Image.open(io.BytesIO(base64.b64decode(stored.preview or "")))
    assert preview.size == (256, 256) and stored.preview_note is None


def test_previews_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch, credentials: ReplicateCredentials, destination: Any,
) -> None:
    monkeypatch.setenv("SEEDREAM_PREVIEWS", "false")
    (image,) = generate_images("a heron", size="1K", credentials=credentials,
                               destination=destination)
    report = next(a for a in artifacts("seedream-images") if image.uri in a)
    assert image.preview is None and not DATA_URI.search(report)


def _items(n: int) -> list[ItemOutcome]:
    items = []
    for i in range(n):
        colour = (i * 37 % 256, i * 91 % 256, i * 53 % 256)
        jpeg = encode_preview(Image.effect_noise((256, 144), 30 + i % 40).convert("RGB")
                              .point(lambda v, c=colour[0]: (v + c) % 256), 8192)
        assert jpeg is not None
        failed = i % 17 == 5
        images = [] if failed else [StoredImage(
            uri=f"s3://b/k/{i}.jpg", bucket="b", key=f"k/{i}.jpg", sha256="0" * 64,
            size_bytes=1, width=2048, height=1152, content_type="image/jpeg",
            prediction_id=f"p{i}", index=0, preview=base64.b64encode(jpeg).decode())]
        items.append(ItemOutcome(
            id=f"item-{i}" if i != 3 else "evil](x)|<img src=x>", line=i + 1, kind="generate",
            item_key=f"k{i}", status="failed" if failed else "succeeded", images=images,
            error_type="PredictionFailed" if failed else None))
    return items


def test_a_200_item_gallery_stays_under_its_cap_and_says_what_it_left_out() -> None:
    items = _items(200)
    for cap in (64 * 1024, 512 * 1024):
        text = gallery_markdown(items, max_items=200, max_bytes=cap)
        assert len(text.encode()) <= cap
        shown = previews_in(text)
        assert 0 < len(shown) < 200
        assert f"{200 - text.count('**item-') - text.count('**evil')} of 200 items are not shown" \
            in text and "SEEDREAM_GALLERY_MAX_BYTES" in text
    assert "**item-5** ✗ failed (PredictionFailed)" in text
    # A manifest id cannot inject markup: every bracket of it arrives escaped.
    assert "evil\\]\\(x\\)\\|\\<img" in text and not re.search(r"(?<!\\)<img", text)
    latest = gallery_markdown(items, max_items=8, max_bytes=512 * 1024, show="latest")
    assert "**item-199**" in latest and "**item-0**" not in latest
    assert "192 of 200 items are not shown" in latest


CONTENT_POLICY = "The output was flagged as sensitive. (E005)"


def test_a_batch_publishes_a_gallery_with_previews_and_failures(
    s3_endpoint: str, bucket: str, seedream_sandbox: Any, s3_client: Any,
) -> None:
    from prefect_seedream.blocks import S3Destination

    destination = S3Destination(bucket=bucket, prefix="gal", endpoint_url=s3_endpoint,
                                aws_access_key_id="testing",
                                aws_secret_access_key=SecretStr("testing"))
    credentials = ReplicateCredentials(api_token=SecretStr(seedream_sandbox.api_token),
                                       base_url=seedream_sandbox.base_url)
    source = io.BytesIO()
    Image.new("RGB", (1024, 1024), (255, 0, 255)).save(source, "JPEG")
    s3_client.put_object(Bucket=bucket, Key="src/magenta.jpg", Body=source.getvalue())
    manifest = [{"id": "g-fail", "prompt": "will be refused", "size": "1K"},
                {"id": "g-ok", "prompt": "a teapot", "size": "1K"},
                {"id": "g-edit", "instruction": "add a moon", "size": "1K",
                 "images": [f"s3://{bucket}/src/magenta.jpg"]}]
    seedream_sandbox.faults.interrupt_predictions(1, error=CONTENT_POLICY)
    state = generate_batch(manifest, credentials=credentials, destination=destination,
                           max_in_flight=1, return_state=True)
    assert state.is_failed()
    gallery = next(a for a in artifacts("seedream-batch-gallery") if "g-edit" in a)
    assert len(previews_in(gallery)) == 2  # the two stored outputs; never the source
    assert "**g-fail** ✗ failed (PredictionFailed)" in gallery
    for text in (gallery, *artifacts("seedream-batch")):
        assert "X-Amz-" not in text and "Signature" not in text and "magenta.jpg" not in text
        assert seedream_sandbox.api_token not in text


def test_a_batch_result_keeps_previews_for_the_gallery_items_only(
    s3_endpoint: str, bucket: str, seedream_sandbox: Any, s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Memory per item stays small: past the gallery's items an outcome has no preview, but
    the item's result.json in S3 still carries it."""
    import json

    from prefect_seedream.blocks import S3Destination
    from prefect_seedream.flows.batch.flow import PREVIEW_LEFT_OUT

    monkeypatch.setenv("SEEDREAM_GALLERY_ITEMS", "1")
    destination = S3Destination(bucket=bucket, prefix="galkeep", endpoint_url=s3_endpoint,
                                aws_access_key_id="testing",
                                aws_secret_access_key=SecretStr("testing"))
    credentials = ReplicateCredentials(api_token=SecretStr(seedream_sandbox.api_token),
                                       base_url=seedream_sandbox.base_url)
    manifest = [{"id": "k-first", "prompt": "a red kettle", "size": "1K"},
                {"id": "k-second", "prompt": "a blue kettle", "size": "1K"}]
    for _ in range(2):  # run, then resume: the already-done outcomes are compacted alike
        result = generate_batch(manifest, credentials=credentials, destination=destination,
                                max_in_flight=2)
        first, second = result.items
        assert first.images[0].preview is not None
        assert second.images[0].preview is None
        assert second.images[0].preview_note == PREVIEW_LEFT_OUT
    stored = s3_client.get_object(Bucket=bucket, Key=f"galkeep/batch/{second.item_key}/"
                                  "result.json")["Body"].read()
    assert json.loads(stored)["images"][0]["preview"]
    gallery = artifacts("seedream-batch-gallery")
    assert any("k-first" in text and len(previews_in(text)) == 1 for text in gallery)
