"""The identity a request is remembered by in the prediction ledger: what the user asked for,
never the presigned URL one attempt happened to send."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr

from prefect_seedream.blocks import S3Destination
from prefect_seedream.flows.source_images import presign_sources
from prefect_seedream.tasks.prediction_ledger import request_identity, request_key, source_identity
from prefect_seedream.tasks.seedream_input import MODEL_SLUG, SeedreamInput

SOURCE = "s3://photos/inputs/beach.jpg"
# Two presigns of the same object: another date, expiry and signature each time.
PRESIGNED = [
    "https://photos.s3.amazonaws.com/inputs/beach.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Date=20250101T100000Z&X-Amz-Expires=1500&X-Amz-Signature=aaaa",
    "https://photos.s3.amazonaws.com/inputs/beach.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Date=20250101T100412Z&X-Amz-Expires=1500&X-Amz-Signature=bbbb",
]


def edit_body(prompt: str, url: str) -> dict[str, Any]:
    return SeedreamInput(prompt=prompt, image_input=[url], size="1K").to_request()


def test_two_presigns_of_the_same_object_are_one_request() -> None:
    sources = [source_identity(SOURCE, '"5d41402abc4b2a76b9719d911017c592"')]
    first, retry = (request_identity(MODEL_SLUG, edit_body("make it dusk", url), sources)
                    for url in PRESIGNED)
    assert first == retry
    assert request_key(MODEL_SLUG, edit_body("make it dusk", PRESIGNED[0]), sources=sources) \
        == request_key(MODEL_SLUG, edit_body("make it dusk", PRESIGNED[1]), sources=sources)


def test_a_new_version_of_the_object_is_a_new_request() -> None:
    body = edit_body("make it dusk", PRESIGNED[0])
    before = request_identity(MODEL_SLUG, body, [source_identity(SOURCE, '"5d41402a"')])
    after = request_identity(MODEL_SLUG, body, [source_identity(SOURCE, '"7d793037"')])
    assert before != after


def test_another_prompt_is_another_request() -> None:
    sources = [source_identity(SOURCE, '"5d41402a"')]
    assert request_identity(MODEL_SLUG, edit_body("make it dusk", PRESIGNED[0]), sources) \
        != request_identity(MODEL_SLUG, edit_body("make it dawn", PRESIGNED[0]), sources)


def test_without_sources_the_input_itself_is_the_identity() -> None:
    first, retry = (request_identity(MODEL_SLUG, edit_body("make it dusk", url))
                    for url in PRESIGNED)
    assert first != retry
    text = SeedreamInput(prompt="a fox", size="1K").to_request()
    assert request_identity(MODEL_SLUG, text) == request_identity(MODEL_SLUG, text, [])


def test_each_kind_of_source_is_named_by_what_it_is() -> None:
    assert source_identity(SOURCE, '"9b2cf535f27731c974343645a3985328-2"') \
        == f"{SOURCE}#9b2cf535f27731c974343645a3985328-2"
    url = "https://images.example.com/beach.jpg?w=800"
    assert source_identity(url) == url
    data = "data:image/png;base64,iVBORw0KGgo="
    assert source_identity(data) == "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def test_sources_must_name_every_image() -> None:
    with pytest.raises(ValueError, match="one source per image"):
        request_identity(MODEL_SLUG, edit_body("make it dusk", PRESIGNED[0]), [])


def test_an_idempotency_key_names_the_request_instead() -> None:
    sources = [source_identity(SOURCE, '"5d41402a"')]
    assert request_key(MODEL_SLUG, edit_body("a", PRESIGNED[0]), "k", sources) \
        == request_key(MODEL_SLUG, edit_body("b", PRESIGNED[1]), "k", sources)


def test_presigned_sources_keep_their_identity_until_the_object_changes(
    s3_endpoint: str, bucket: str, s3_client: Any,
) -> None:
    """Over moto's S3: the HEAD that checks a source exists gives its ETag."""
    destination = S3Destination(
        bucket=bucket, endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key=SecretStr("testing"),
    )

    def put(color: tuple[int, int, int]) -> None:
        image = io.BytesIO()
        Image.new("RGB", (64, 64), color).save(image, format="JPEG")
        s3_client.put_object(Bucket=bucket, Key="inputs/src.jpg", Body=image.getvalue())

    uri = f"s3://{bucket}/inputs/src.jpg"
    put((10, 20, 30))
    first = presign_sources([uri], destination, expires_in=900)
    retry = presign_sources([uri], destination, expires_in=1200)
    put((200, 20, 30))
    changed = presign_sources([uri], destination, expires_in=900)

    assert first.urls != retry.urls
    assert first.identities == retry.identities != changed.identities
    assert all(identity.startswith(f"{uri}#") for identity in first.identities)
    identity = [request_identity(MODEL_SLUG, edit_body("make it dusk", s.urls[0]), s.identities)
                for s in (first, retry, changed)]
    assert identity[0] == identity[1] != identity[2]
