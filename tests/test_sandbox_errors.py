"""Every 4xx the sandbox answers, in Replicate's problem+json shape."""

# The fixtures are imported (F401) and then requested by name (F811) until the
# `pytest11` entry point registers prefect_seedream.sandbox.pytest_plugin for the whole suite.
# ruff: noqa: F811

from __future__ import annotations

import httpx
import pytest
import replicate
from replicate.exceptions import ReplicateError

from prefect_seedream.sandbox.config import parse_go_duration, parse_prefer_wait
from prefect_seedream.sandbox.pytest_plugin import (  # noqa: F401
    close_client,
    seedream_client,
    seedream_sandbox,
    seedream_sandbox_server,
)

MODEL = "bytedance/seedream-4"
TEXT = {"prompt": "a red fox in snow", "aspect_ratio": "1:1"}


@pytest.fixture
def http(seedream_sandbox):
    with httpx.Client(base_url=seedream_sandbox.base_url,
                      headers={"Authorization": f"Bearer {seedream_sandbox.api_token}"}) as c:
        yield c


def _assert_problem(response: httpx.Response, status: int, detail_part: str) -> dict:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    assert detail_part in body["detail"]
    return body


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic abc"])
def test_every_v1_call_needs_the_token(seedream_sandbox, header):
    headers = {} if header is None else {"Authorization": header}
    with httpx.Client(base_url=seedream_sandbox.base_url, headers=headers) as c:
        for method, path in [("GET", "/v1/account"), ("GET", "/v1/predictions"),
                             ("POST", f"/v1/models/{MODEL}/predictions")]:
            _assert_problem(c.request(method, path, json={"input": TEXT}), 401, "token")
    assert seedream_sandbox.predictions() == []


def test_client_with_wrong_token_gets_401(seedream_sandbox):
    client = replicate.Client(api_token="r8_wrong", base_url=seedream_sandbox.base_url)
    with pytest.raises(ReplicateError) as caught:
        client.models.predictions.create(model=MODEL, input=TEXT)
    close_client(client)
    assert caught.value.status == 401


@pytest.mark.parametrize("path", [
    "/v1/models/someone/else/predictions", "/v1/models/bytedance/seedream-3/predictions",
])
def test_unknown_model_is_404(http, path):
    _assert_problem(http.post(path, json={"input": TEXT}), 404, "not found")


@pytest.mark.parametrize("version", ["someone/else", "f" * 64, "bytedance/seedream-4:nothex"])
def test_unknown_version_is_404(http, version):
    _assert_problem(http.post("/v1/predictions", json={"version": version, "input": TEXT}), 404,
                    "not found")


def test_unknown_prediction_is_404(seedream_client):
    with pytest.raises(ReplicateError) as caught:
        seedream_client.predictions.cancel("doesnotexist")
    assert caught.value.status == 404
    response = seedream_client._request  # GETs of a 404 are not retried by the client
    with pytest.raises(ReplicateError):
        response("GET", "/v1/predictions/doesnotexist")


@pytest.mark.parametrize(("payload", "field"), [
    ({"prompt": "   ", "aspect_ratio": "1:1"}, "prompt"),
    ({"aspect_ratio": "1:1"}, "prompt"),
    ({"prompt": "x", "aspect_ratio": "5:4"}, "aspect_ratio"),
    ({"prompt": "x", "size": "8K", "aspect_ratio": "1:1"}, "size"),
    ({"prompt": "x", "size": "custom", "width": 512, "height": 2048}, "width"),
    ({"prompt": "x", "size": "custom", "width": 2048}, "height"),
    ({"prompt": "x", "aspect_ratio": "1:1", "width": 2048, "height": 2048}, "size='custom'"),
    ({"prompt": "x", "aspect_ratio": "1:1", "max_images": 3}, "sequential_image_generation"),
    ({"prompt": "x", "aspect_ratio": "1:1", "max_images": 16,
      "sequential_image_generation": "auto"}, "max_images"),
    ({"prompt": "x", "image_input": ["s3://bucket/key.png"]}, "image_input[0]"),
    ({"prompt": "x", "image_input": ["data:,x"] * 11}, "image_input"),
    ({"prompt": "x", "aspect_ratio": "1:1", "seed": 3}, "seed"),
])
def test_invalid_input_is_422_naming_the_field(seedream_sandbox, seedream_client, payload, field):
    with pytest.raises(ReplicateError) as caught:
        seedream_client.models.predictions.create(model=MODEL, input=payload)

    assert caught.value.status == 422
    assert field in caught.value.detail
    assert seedream_sandbox.predictions() == []


@pytest.mark.parametrize(("body", "field"), [
    ({"input": TEXT, "webhook": "ftp://example.com/hook"}, "webhook"),
    ({"input": TEXT, "webhook_events_filter": ["finished"]}, "webhook_events_filter"),
    ({"input": TEXT, "extra": 1}, "extra"),
    ({"input": "a red fox"}, "input"),
    ({"version": MODEL}, "input"),
])
def test_invalid_request_body_is_422_naming_the_field(http, body, field):
    path = "/v1/predictions" if "version" in body else f"/v1/models/{MODEL}/predictions"
    _assert_problem(http.post(path, json=body), 422, field)


def test_body_that_is_not_json_is_400(http):
    _assert_problem(http.post(f"/v1/models/{MODEL}/predictions", content=b"{nope"), 400, "JSON")


@pytest.mark.parametrize("prefer", ["wait=0", "wait=61", "wait=abc", "respond-async"])
def test_bad_prefer_header_is_400(http, prefer):
    response = http.post(f"/v1/models/{MODEL}/predictions", json={"input": TEXT},
                         headers={"Prefer": prefer})
    _assert_problem(response, 400, "Prefer")


@pytest.mark.parametrize("value", ["soon", "10", "5 m", "-5s", "0s", "1d"])
def test_bad_cancel_after_is_400(http, value):
    response = http.post(f"/v1/models/{MODEL}/predictions", json={"input": TEXT},
                         headers={"Cancel-After": value})
    _assert_problem(response, 400, "duration")


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("500ms", 0.5), ("1.5s", 1.5),
    ("2h45m30.5s", 9930.5),
])
def test_go_durations_parse(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "seconds"), [(None, None), ("wait", 60), ("wait=5", 5),
                                               ("wait=60", 60)])
def test_prefer_header_parses(text, seconds):
    assert parse_prefer_wait(text) == seconds


def test_rate_limit_answers_429_with_retry_after(seedream_sandbox, http):
    seedream_sandbox.configure(create_rate_per_minute=6, create_burst=2)

    answers = [http.post(f"/v1/models/{MODEL}/predictions", json={"input": TEXT})
               for _ in range(3)]

    assert [a.status_code for a in answers] == [201, 201, 429]
    retry_after = int(answers[2].headers["Retry-After"])
    assert 1 <= retry_after <= 10
    assert answers[2].json()["detail"] == (
        f"Request was throttled. Your rate limit resets in ~{retry_after}s."
    )
    assert seedream_sandbox.counters()["rate_limited"] == 1
    assert len(seedream_sandbox.predictions()) == 2


def test_rate_limits_can_be_turned_off(seedream_sandbox, http):
    seedream_sandbox.configure(create_rate_per_minute=6, create_burst=1, rate_limits=False)

    answers = [http.post(f"/v1/models/{MODEL}/predictions", json={"input": TEXT})
               for _ in range(4)]

    assert {a.status_code for a in answers} == {201}


def test_other_calls_have_their_own_limit(seedream_sandbox, http):
    seedream_sandbox.configure(other_rate_per_minute=60, other_burst=3)

    codes = [http.get("/v1/account").status_code for _ in range(4)]
    create = http.post(f"/v1/models/{MODEL}/predictions", json={"input": TEXT})

    assert codes == [200, 200, 200, 429]
    assert create.status_code == 201
