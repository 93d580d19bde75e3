"""The events prefect-seedream emits: their resources, related resources and payloads, and that
nothing secret (tokens, presigned or output URLs) ends up in them."""

from __future__ import annotations

import json

import pytest
from prefect.states import Completed, Failed

from prefect_seedream.flows.events import (
    _failure_details,
    generation_request,
    images_failed_event,
    images_stored_event,
    redact,
)
from prefect_seedream.tasks.errors import PredictionFailed
from prefect_seedream.tasks.replicate_client.prediction import Prediction
from prefect_seedream.tasks.storage import StoredImage

PREDICTION = Prediction.from_api({
    "id": "p1abc", "status": "succeeded", "model": "bytedance/seedream-4",
    "input": {"prompt": "a fox", "image_input": ["https://b.s3/x.jpg?X-Amz-Signature=s3cr3t"]},
    "output": ["https://replicate.delivery/p1abc/0.jpg", "https://replicate.delivery/p1abc/1.jpg"],
})


def stored(index: int) -> StoredImage:
    return StoredImage(uri=f"s3://imgs/runs/p1abc/{index}.jpg", bucket="imgs",
                       key=f"runs/p1abc/{index}.jpg", sha256="a" * 64, size_bytes=10, width=8,
                       height=8, content_type="image/jpeg", prediction_id="p1abc", index=index)


def test_stored_event_relates_every_object_and_the_prediction() -> None:
    event = images_stored_event(PREDICTION, [stored(0), stored(1)])
    assert event["event"] == "seedream.images.stored"
    assert event["resource"]["prefect.resource.id"] == "seedream.prediction.p1abc"
    assert event["resource"]["seedream.image-count"] == "2"
    roles = [(r["prefect.resource.id"], r["prefect.resource.role"]) for r in event["related"]]
    assert roles == [("s3://imgs/runs/p1abc/0.jpg", "image"),
                     ("s3://imgs/runs/p1abc/1.jpg", "image"),
                     ("replicate.prediction.p1abc", "prediction")]
    assert event["payload"]["uris"] == ["s3://imgs/runs/p1abc/0.jpg", "s3://imgs/runs/p1abc/1.jpg"]
    assert event["payload"]["prompt"] == "a fox"
    text = json.dumps(event)
    assert "replicate.delivery" not in text and "Signature" not in text  # no output/input URLs


def test_failed_event_names_the_prediction_and_redacts_the_message() -> None:
    event = images_failed_event(
        error_type="StorageFailed", prediction_ids=["p1abc"], flow_run_id="fr1",
        flow_name="generate-images", state_name="Failed", retryable=True,
        message="GET https://b.s3/x.jpg?X-Amz-Signature=s3cr3t with r8_abcdef123 failed")
    assert event["resource"] == {"prefect.resource.id": "seedream.prediction.p1abc",
                                 "seedream.error-type": "StorageFailed"}
    assert {"prefect.resource.id": "replicate.prediction.p1abc",
            "prefect.resource.role": "prediction"} in event["related"]
    assert event["payload"]["message"] == "GET https://b.s3/x.jpg?… with r8_… failed"
    before_any_prediction = images_failed_event(
        error_type="InvalidInput", message="bad", prediction_ids=[], flow_run_id="fr2",
        flow_name="generate-images", state_name="Failed")
    assert before_any_prediction["resource"]["prefect.resource.id"] == "seedream.flow-run.fr2"
    assert before_any_prediction["payload"]["prediction_id"] is None


def test_redact_shortens_long_messages() -> None:
    assert len(redact("x" * 5000)) == 500


def test_failure_details_come_from_the_state_s_exception() -> None:
    error = PredictionFailed("Seedream failed: NSFW", error="NSFW", prediction_id="p9")
    assert _failure_details(Failed(data=error)) == ("PredictionFailed", str(error), "p9", False)
    name, _, prediction_id, _ = _failure_details(Completed(data=None))
    assert (name, prediction_id) == ("Completed", None)


@pytest.mark.parametrize("options", [{}, {"size": "4K", "max_images": 3, "key_prefix": None}])
def test_generation_request_carries_the_prompt_and_only_given_options(options: dict) -> None:
    event = generation_request("an owl", request_id="r1", **options)
    assert event["event"] == "seedream.generate.requested"
    assert event["resource"] == {"prefect.resource.id": "seedream.request.r1"}
    assert event["payload"] == {"prompt": "an owl",
                                **{k: v for k, v in options.items() if v is not None}}
