"""Every Seedream version: input is checked against the schema the model publishes, before any
request that costs money; seedream-4.5 runs end to end; the sandbox's served schema decides.

Real parts only: the flows under Prefect's harness, the real HTTP layer against the sandbox
(which serves both models, each with its own schema), boto3 against moto's S3 server.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from prefect_seedream import InvalidInput, generate_images
from prefect_seedream.sandbox.model_info import VERSION_ID
from prefect_seedream.tasks import model_schemas
from prefect_seedream.tasks.model_prices import price_per_image, required_price
from prefect_seedream.tasks.prediction_ledger import request_key
from prefect_seedream.tasks.predictions import create_prediction

V4, V45 = "bytedance/seedream-4", "bytedance/seedream-4.5"
pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(autouse=True)
def fresh_schemas(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    """Each test reads the schema the sandbox serves now (TTL 0, its own cache dir)."""
    monkeypatch.setenv("SEEDREAM_SCHEMA_TTL_SECONDS", "0")
    monkeypatch.setenv("SEEDREAM_SCHEMA_CACHE_DIR", str(tmp_path / "schemas"))
    model_schemas._memory.clear()
    yield
    model_schemas._memory.clear()


def _creates(sandbox: Any) -> int:
    return int(sandbox.counters()["creates"])


def _events_named(name: str, since: datetime, wait: float = 10.0) -> list[dict[str, Any]]:
    """Events named `name` on the harness's Prefect server since `since` (they land within a
    second or so of being emitted: poll a little)."""
    from prefect.client.orchestration import get_client

    body = {"filter": {"event": {"name": [name]}, "occurred": {"since": since.isoformat()}},
            "limit": 50}
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            found = client.request("POST", "/events/filter", json=body).json()["events"]
            if found:
                time.sleep(1.0)  # a second one, if there were one, would be here by now
                return list(client.request("POST", "/events/filter", json=body).json()["events"])
            time.sleep(0.2)
    return found


def test_generate_with_seedream_45_stores_its_images(
    seedream_sandbox: Any, credentials: Any, destination: Any, s3_client: Any
) -> None:
    images = generate_images("a fox in snow", size="4K", aspect_ratio="16:9", model=V45,
                             credentials=credentials, destination=destination)

    made = seedream_sandbox.predictions()
    assert [p["model"] for p in made] == [V45]
    assert (images[0].width, images[0].height) == (5120, 2880)
    head = s3_client.head_object(Bucket=destination.bucket, Key=images[0].key)
    assert head["Metadata"]["model"] == V45.replace("/", "%2F") or head["Metadata"]["model"] == V45


@pytest.mark.parametrize(("model", "fields", "named"), [
    (V45, {"size": "1K"}, "size"),                                  # 4 allows 1K, 4.5 does not
    (V45, {"size": "custom", "width": 2048, "height": 2048}, "width"),
    (V4, {"image_input": ["https://example.com/a.jpg"] * 12}, "image_input"),  # 4.5 takes 14
    (V4, {"size": "8K"}, "size"),
])
def test_what_the_models_schema_forbids_is_refused_before_any_create(
    seedream_sandbox: Any, credentials: Any, model: str, fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        create_prediction({"prompt": "a fox", **fields}, credentials=credentials, model=model)

    assert named in str(refused.value) and model in str(refused.value)
    assert _creates(seedream_sandbox) == 0


def test_what_45_allows_and_4_forbids_is_sent_to_45(
    seedream_sandbox: Any, credentials: Any
) -> None:
    fields = {"prompt": "a fox", "size": "2K", "aspect_ratio": "1:1",
              "sequential_image_generation": "auto", "max_images": 3}
    create_prediction({**fields, "size": "4K"}, credentials=credentials, model=V45)
    with pytest.raises(InvalidInput, match="size"):
        create_prediction({**fields, "size": "1K"}, credentials=credentials, model=V45)
    create_prediction({**fields, "size": "1K"}, credentials=credentials, model=V4)
    assert [p["model"] for p in seedream_sandbox.predictions()] == [V4, V45]


@pytest.mark.parametrize("model", ["acme/not-a-model", "bytedance/seedream-4:" + "0" * 64,
                                   "seedream", "bytedance/seedream-4:latest",
                                   "bytedance/seedream-4\n", "a/" + "b" * 30_000])
def test_an_unknown_model_is_refused_before_any_create(
    seedream_sandbox: Any, credentials: Any, model: str
) -> None:
    with pytest.raises(InvalidInput, match="model") as refused:
        create_prediction({"prompt": "a fox"}, credentials=credentials, model=model)
    assert _creates(seedream_sandbox) == 0
    assert len(str(refused.value)) < 400  # a name from an event is never echoed at length


def test_a_served_schema_with_one_more_enum_value_is_accepted_without_a_code_change(
    seedream_sandbox: Any, credentials: Any, destination: Any
) -> None:
    with pytest.raises(InvalidInput, match="aspect_ratio"):
        generate_images("a fox", aspect_ratio="5:4", credentials=credentials,
                        destination=destination)
    assert _creates(seedream_sandbox) == 0

    schema = copy.deepcopy(seedream_sandbox.model_schema(V4))
    schema["components"]["schemas"]["aspect_ratio"]["enum"].append("5:4")
    seedream_sandbox.set_model_schema(V4, schema)
    images = generate_images("a fox", size="1K", aspect_ratio="5:4", credentials=credentials,
                             destination=destination)

    assert _creates(seedream_sandbox) == 1
    assert images and images[0].width > images[0].height


def test_with_the_models_endpoint_down_seedream_4_falls_back_and_others_stop(
    seedream_sandbox: Any, credentials: Any
) -> None:
    seedream_sandbox.faults.error_share(1.0, status=503, routes=["models"])

    with pytest.raises(InvalidInput, match="unchecked"):
        create_prediction({"prompt": "a fox", "size": "4K"}, credentials=credentials, model=V45)
    with pytest.raises(InvalidInput, match="size"):  # the bundled Seedream 4 rules
        create_prediction({"prompt": "a fox", "size": "8K"}, credentials=credentials, model=V4)
    assert _creates(seedream_sandbox) == 0
    create_prediction({"prompt": "a fox", "aspect_ratio": "1:1"}, credentials=credentials)
    assert _creates(seedream_sandbox) == 1
    assert seedream_sandbox.counters()["requests"]["models"] >= 3  # it did ask


def test_a_pinned_version_runs_that_version_and_drift_is_reported_once(
    seedream_sandbox: Any, credentials: Any, caplog: pytest.LogCaptureFixture
) -> None:
    started = datetime.now(timezone.utc)
    pinned = f"{V4}:{VERSION_ID}"
    made = create_prediction({"prompt": "a fox", "aspect_ratio": "1:1"},
                             credentials=credentials, model=pinned)
    assert made.version == VERSION_ID

    schema = copy.deepcopy(seedream_sandbox.model_schema(V4))
    schema["components"]["schemas"]["size"]["enum"].remove("1K")
    seedream_sandbox.set_model_schema(V4, schema)
    with caplog.at_level(logging.WARNING, logger="prefect_seedream.models"):
        for _ in range(2):  # the pinned version still takes 1K; the change is told once
            create_prediction({"prompt": "a fox", "size": "1K", "aspect_ratio": "1:1"},
                              credentials=credentials, model=pinned)
    drift = [r for r in caplog.records if "different input schema" in r.getMessage()]
    assert len(drift) == 1 and pinned in drift[0].getMessage()
    assert {p["version"] for p in seedream_sandbox.predictions()} == {VERSION_ID}
    # ... and a user's automation can react: the event is on the Prefect server, once.
    changed = _events_named(model_schemas.SCHEMA_CHANGED_EVENT, since=started)
    assert [(e["payload"]["model"], e["payload"]["pinned"]) for e in changed] == [(V4, pinned)]
    assert changed[0]["resource"]["prefect.resource.id"] == f"seedream.model.{V4}"


def test_the_model_is_part_of_the_request_identity() -> None:
    body = {"prompt": "a fox", "size": "2K"}
    keys = {request_key(m, body) for m in (V4, V45, f"{V4}:{VERSION_ID}")}
    assert len(keys) == 3
    assert request_key(V4, body) == request_key(V4, dict(body))


def test_prices_per_model_and_the_override() -> None:
    assert price_per_image(V4) == 0.03 and price_per_image(V45) == 0.04
    assert price_per_image(f"{V45}:{'a' * 64}") == 0.04
    assert price_per_image("acme/other") is None
    assert price_per_image("acme/other", 0.5) == 0.5
    with pytest.raises(InvalidInput, match="SEEDREAM_PRICE_PER_IMAGE_USD"):
        required_price("acme/other", None, "the spend limit")


def test_the_schema_cache_on_disk_holds_no_token(
    seedream_sandbox: Any, credentials: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEEDREAM_SCHEMA_TTL_SECONDS", "300")
    create_prediction({"prompt": "a fox", "aspect_ratio": "1:1"}, credentials=credentials,
                      model=V45)
    model_schemas._memory.clear()
    seedream_sandbox.faults.error_share(1.0, status=503, routes=["models"])
    create_prediction({"prompt": "a fox", "size": "4K", "aspect_ratio": "1:1"},
                      credentials=credentials, model=V45)  # served from the disk cache

    files = list((tmp_path / "schemas").glob("*.json"))
    assert len(files) == 1
    assert seedream_sandbox.api_token not in files[0].read_text()
    assert _creates(seedream_sandbox) == 2


def _batch_lines(s3_client: Any, destination: Any, result: Any) -> list[dict[str, Any]]:
    bucket, _, key = result.results_uri.removeprefix("s3://").partition("/")
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


def test_a_batch_runs_each_row_on_its_own_model_and_prices_it_there(
    seedream_sandbox: Any, credentials: Any, destination: Any, s3_client: Any
) -> None:
    from prefect_seedream import generate_batch

    result = generate_batch([
        {"id": "four", "prompt": "a fox", "size": "1K"},
        {"id": "four-five", "prompt": "a fox", "size": "4K", "model": V45},
    ], credentials=credentials, destination=destination, max_cost_usd=1)

    made = {p["input"]["size"]: p["model"] for p in seedream_sandbox.predictions()}
    assert made == {"1K": V4, "4K": V45}
    lines = {line["id"]: line for line in _batch_lines(s3_client, destination, result)}
    assert (lines["four"]["model"], lines["four-five"]["model"]) == (V4, V45)
    assert (lines["four"]["cost_usd"], lines["four-five"]["cost_usd"]) == (
        price_per_image(V4), price_per_image(V45))
    # The same prompt on another model is another request: both were paid for, once each.
    assert lines["four"]["item_key"] != lines["four-five"]["item_key"]


def test_a_batch_row_its_model_refuses_stops_the_batch_before_any_create(
    seedream_sandbox: Any, credentials: Any, destination: Any
) -> None:
    from prefect_seedream import ManifestInvalid, generate_batch

    with pytest.raises(ManifestInvalid) as refused:
        generate_batch([
            {"prompt": "fine on 4", "size": "1K"},
            {"prompt": "1K is not a 4.5 size", "size": "1K", "model": V45},
            {"prompt": "a typo", "model": "bytedance/seedream 4.5 <script>"},
            {"prompt": "not served", "model": "acme/not-a-model"},
        ], credentials=credentials, destination=destination)

    problems = refused.value.problems
    assert any(p.startswith("line 2:") and "size" in p and V45 in p for p in problems)
    assert any(p.startswith("line 3:") and "owner/name" in p and "<script>" not in p
               for p in problems)
    assert any(p.startswith("line 4:") and "acme/not-a-model" in p for p in problems)
    assert not any(p.startswith("line 1:") for p in problems)
    assert _creates(seedream_sandbox) == 0
