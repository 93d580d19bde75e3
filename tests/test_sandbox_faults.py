"""Faults on demand, as a client of the sandbox experiences them."""

# The fixtures are imported (F401) and then requested by name (F811) until the
# `pytest11` entry point registers prefect_seedream.sandbox.pytest_plugin for the whole suite.
# ruff: noqa: F811

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image, UnidentifiedImageError
from replicate.exceptions import ReplicateError

from prefect_seedream.sandbox.pytest_plugin import (  # noqa: F401
    close_client,
    seedream_client,
    seedream_sandbox,
    seedream_sandbox_server,
)

MODEL = "bytedance/seedream-4"
TEXT = {"prompt": "a red fox in snow", "aspect_ratio": "1:1", "size": "1K"}
WIDE = {"prompt": "a harbour at dusk", "aspect_ratio": "16:9", "size": "2K"}  # table: 2560x1440
PA = "Prediction interrupted; please retry (code: PA)"
E005 = ("The input or output was flagged as sensitive. Please try again with different inputs. "
        "(E005)")


def _image(content: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(content))
    image.load()
    return image


@pytest.fixture
def http(seedream_sandbox):
    with httpx.Client(base_url=seedream_sandbox.base_url,
                      headers={"Authorization": f"Bearer {seedream_sandbox.api_token}"}) as c:
        yield c


def test_rate_limit_next_creates(seedream_sandbox, seedream_client, http):
    seedream_sandbox.faults.rate_limit_creates(2, retry_after=3)

    with pytest.raises(ReplicateError) as caught:
        seedream_client.models.predictions.create(model=MODEL, input=TEXT)
    raw = http.post(f"/v1/models/{MODEL}/predictions", json={"input": TEXT})
    third = seedream_client.models.predictions.create(model=MODEL, input=TEXT)

    assert caught.value.status == 429
    assert caught.value.detail == "Request was throttled. Your rate limit resets in ~3s."
    assert raw.status_code == 429 and raw.headers["Retry-After"] == "3"
    assert [p["id"] for p in seedream_sandbox.predictions()] == [third.id]
    counters = seedream_sandbox.counters()
    assert (counters["rate_limited"], counters["faults_injected"], counters["creates"]) == (2, 2, 1)


def test_fail_next_gets_are_retried_by_the_client(seedream_sandbox, seedream_client):
    prediction = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)
    seedream_sandbox.faults.fail_next("get", 2, status=503)

    fetched = seedream_client.predictions.get(prediction.id)

    assert fetched.status == "succeeded"
    counters = seedream_sandbox.counters()
    assert counters["requests"]["get"] == 3
    assert counters["gets"] == 1
    assert counters["faults_injected"] == 2


def test_fail_next_create_creates_nothing(seedream_sandbox, seedream_client):
    seedream_sandbox.faults.fail_next("create", 1, status=500)

    with pytest.raises(ReplicateError) as caught:
        seedream_client.models.predictions.create(model=MODEL, input=TEXT)
    later = seedream_client.models.predictions.create(model=MODEL, input=TEXT)

    assert caught.value.status == 500
    assert [p["id"] for p in seedream_sandbox.predictions()] == [later.id]


@pytest.mark.parametrize("route", ["cancel", "list", "account"])
def test_fail_next_other_routes(seedream_sandbox, seedream_client, http, route):
    prediction = seedream_client.models.predictions.create(model=MODEL, input=TEXT)
    seedream_sandbox.faults.fail_next(route, 1, status=502)
    call = {"cancel": lambda: http.post(f"/v1/predictions/{prediction.id}/cancel"),
            "list": lambda: http.get("/v1/predictions"),
            "account": lambda: http.get("/v1/account")}[route]

    assert [call().status_code, call().status_code] == [502, 200]


def test_fail_next_files(seedream_sandbox, seedream_client):
    prediction = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)
    seedream_sandbox.faults.fail_next("files", 1, status=503)

    codes = [httpx.get(prediction.output[0]).status_code for _ in range(2)]

    assert codes == [503, 200]


def test_error_share_applies_to_chosen_routes_only(seedream_sandbox, seedream_client, http):
    prediction = seedream_client.models.predictions.create(model=MODEL, input=TEXT)
    seedream_sandbox.faults.error_share(1.0, status=500, routes=["list"])

    with pytest.raises(ReplicateError) as caught:
        seedream_client.predictions.list()
    fetched = seedream_client.predictions.get(prediction.id)
    seedream_sandbox.faults.error_share(0.0)
    listed = seedream_client.predictions.list()

    assert caught.value.status == 500
    assert fetched.id == prediction.id
    assert [p.id for p in listed.results] == [prediction.id]


def test_error_share_fails_about_that_share(seedream_sandbox, http):
    seedream_sandbox.configure(rate_limits=False)
    seedream_sandbox.faults.error_share(0.5, status=503, routes=["account"])

    codes = [http.get("/v1/account").status_code for _ in range(200)]

    assert set(codes) == {200, 503}
    assert 50 <= codes.count(503) <= 150
    assert seedream_sandbox.counters()["faults_injected"] == codes.count(503)


def test_dropped_create_response_still_creates_the_prediction(seedream_sandbox, seedream_client):
    seedream_sandbox.faults.drop_create_responses(1)

    with pytest.raises(httpx.RemoteProtocolError):
        seedream_client.models.predictions.create(model=MODEL, input=TEXT)
    second = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)

    lost = [p for p in seedream_sandbox.predictions() if p["id"] != second.id]
    assert len(lost) == 1
    assert lost[0]["input"] == TEXT
    assert second.status == "succeeded"
    assert seedream_sandbox.counters()["dropped_responses"] == 1


@pytest.mark.parametrize(("error", "expected"), [(None, PA), (E005, E005)])
def test_interrupted_predictions_fail_with_the_message(seedream_sandbox, seedream_client, error,
                                                       expected):
    seedream_sandbox.faults.interrupt_predictions(1, error=error)

    failed = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)
    ok = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)

    assert failed.status == "failed"
    assert failed.error == expected
    assert failed.output is None
    assert expected in failed.logs
    assert ok.status == "succeeded"


@pytest.mark.parametrize(("dx", "dy", "size"), [
    (16, 0, (2576, 1440)),  # as seen on Replicate for 2K 16:9
    (-16, 8, (2544, 1448)),
])
def test_size_drift_renders_valid_jpegs_off_the_size_table(seedream_sandbox, seedream_client,
                                                           dx, dy, size):
    seedream_sandbox.faults.size_drift(1, dx=dx, dy=dy)

    drifted = seedream_client.models.predictions.create(model=MODEL, input=WIDE, wait=True)
    normal = seedream_client.models.predictions.create(model=MODEL, input=WIDE, wait=True)

    image = _image(httpx.get(drifted.output[0]).content)
    assert (image.format, image.size) == ("JPEG", size)
    assert f"Generating {size[0]}x{size[1]} image" in drifted.logs
    assert _image(httpx.get(normal.output[0]).content).size == (2560, 1440)
    assert seedream_sandbox.counters()["faults_injected"] == 1


def test_size_drift_applies_to_every_output_of_the_next_n_predictions(seedream_sandbox,
                                                                     seedream_client):
    seedream_sandbox.faults.size_drift(2)
    several = {**TEXT, "sequential_image_generation": "auto", "max_images": 2}

    sizes = []
    for _ in range(3):
        prediction = seedream_client.models.predictions.create(model=MODEL, input=several,
                                                               wait=True)
        sizes.append([_image(httpx.get(url).content).size for url in prediction.output])

    assert sizes == [[(1040, 1024)] * 2, [(1040, 1024)] * 2, [(1024, 1024)] * 2]


def test_corrupt_html_output_is_an_error_page_served_as_jpeg(seedream_sandbox, seedream_client):
    seedream_sandbox.faults.corrupt_outputs(1, "html")

    corrupt = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)
    normal = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)
    response = httpx.get(corrupt.output[0])

    assert corrupt.status == "succeeded"
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content.startswith(b"<!DOCTYPE html>")
    assert b"</html>" in response.content
    with pytest.raises(UnidentifiedImageError):
        _image(response.content)
    assert _image(httpx.get(normal.output[0]).content).size == (1024, 1024)
    assert seedream_sandbox.counters()["faults_injected"] == 1


def test_corrupt_truncated_output_stays_truncated_on_every_download(seedream_sandbox,
                                                                   seedream_client):
    seedream_sandbox.faults.corrupt_outputs(1, kind="truncated")

    corrupt = seedream_client.models.predictions.create(model=MODEL, input=WIDE, wait=True)
    normal = seedream_client.models.predictions.create(model=MODEL, input=WIDE, wait=True)
    first, second = (httpx.get(corrupt.output[0]) for _ in range(2))
    whole = httpx.get(normal.output[0]).content

    assert first.headers["content-type"] == "image/jpeg"
    assert first.content == second.content
    assert first.content.startswith(b"\xff\xd8\xff")  # a JPEG's start...
    assert not first.content.endswith(b"\xff\xd9")  # ...without its end
    assert len(first.content) < len(whole) * 3 // 4
    with pytest.raises(OSError, match="truncated"):
        _image(first.content)
    assert (Image.open(io.BytesIO(first.content)).size, _image(whole).size) == \
        ((2560, 1440), (2560, 1440))  # the header still says what the table says


def test_output_faults_wait_for_a_prediction_that_has_outputs(seedream_sandbox,
                                                              seedream_client):
    faults = seedream_sandbox.faults
    faults.interrupt_predictions(1)
    faults.size_drift(1, dx=32)
    faults.corrupt_outputs(1)

    failed = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)
    spoiled = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)

    assert (failed.status, failed.output) == ("failed", None)
    assert "Generating 1056x1024 image" in spoiled.logs
    assert httpx.get(spoiled.output[0]).content.startswith(b"<!DOCTYPE html>")
    assert faults.state()["size_drift"] == faults.state()["corrupt_outputs"] == []
    assert seedream_sandbox.counters()["faults_injected"] == 3


def test_corrupt_outputs_reach_sync_mode_data_uris(seedream_sandbox, seedream_client):
    seedream_sandbox.configure(sync_data_uri_outputs=True)
    seedream_sandbox.faults.corrupt_outputs(1)

    output = seedream_client.run(MODEL, input=TEXT)

    assert output[0].read().startswith(b"<!DOCTYPE html>")


def test_slow_downloads_trip_client_read_timeouts(seedream_sandbox, seedream_client):
    prediction = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)
    seedream_sandbox.faults.slow_downloads(1000)

    with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=httpx.Timeout(5.0, read=0.1)) as c:
        c.get(prediction.output[0])
    seedream_sandbox.faults.slow_downloads(None)
    with httpx.Client(timeout=httpx.Timeout(5.0, read=5.0)) as c:
        assert c.get(prediction.output[0]).content[:3] == b"\xff\xd8\xff"


def test_expire_all_outputs_now_and_change_retention(seedream_sandbox, seedream_client):
    first = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)

    seedream_sandbox.faults.expire_outputs()
    second = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)
    seedream_sandbox.faults.expire_outputs(after_seconds=0)

    assert seedream_sandbox.prediction(first.id)["data_removed"] is True
    assert second.output is not None
    assert seedream_sandbox.prediction(second.id)["output"] is None
    assert seedream_sandbox.config.retention_seconds == 0


def test_clear_turns_every_fault_off(seedream_sandbox, seedream_client):
    faults = seedream_sandbox.faults
    faults.rate_limit_creates(5)
    faults.fail_next("create", 5)
    faults.error_share(1.0)
    faults.drop_create_responses(5)
    faults.interrupt_predictions(5)
    faults.size_drift(5)
    faults.corrupt_outputs(5, kind="truncated")
    faults.slow_downloads(10)

    faults.clear()
    prediction = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)

    assert prediction.status == "succeeded"
    response = httpx.get(prediction.output[0])
    assert response.status_code == 200
    assert _image(response.content).size == (1024, 1024)


@pytest.mark.parametrize(("call", "message"), [
    (lambda f: f.fail_next("upload", 1), "unknown route"),
    (lambda f: f.fail_next("get", 1, status=200), "not an error status"),
    (lambda f: f.error_share(1.5), "share"),
    (lambda f: f.slow_downloads(0), "bytes_per_second"),
    (lambda f: f.size_drift(1, dx=513), "dx must be a whole number of pixels within -512..512"),
    (lambda f: f.size_drift(1, dy=1.5), "dy must be a whole number"),
    (lambda f: f.corrupt_outputs(1, kind="gif"),
     "unknown kind 'gif'; use one of html, truncated, oversized"),
])
def test_bad_fault_settings_are_refused(seedream_sandbox, call, message):
    with pytest.raises(ValueError, match=message):
        call(seedream_sandbox.faults)


def test_update_calls_queue_after_earlier_faults_and_shown_states_replace_them(seedream_sandbox):
    faults = seedream_sandbox.faults
    faults.fail_next("get", 1)
    faults.interrupt_predictions(1)
    faults.size_drift(1)
    faults.corrupt_outputs(1)

    faults.update({"fail_next": {"route": "get", "n": 2, "status": 500},
                   "interrupt_predictions": {"n": 1, "error": "E005"},
                   "size_drift": {"n": 2, "dy": -8},
                   "corrupt_outputs": {"n": 1, "kind": "truncated"}})
    queued = faults.state()
    faults.update({"fail_next": {"create": [[502, 1]]}, "interrupt_predictions": [],
                   "size_drift": [[0, 16]], "corrupt_outputs": []})

    assert queued["fail_next"] == {"get": [[503, 1], [500, 2]]}
    assert queued["interrupt_predictions"] == ["Prediction interrupted; please retry (code: PA)",
                                               "E005"]
    assert queued["size_drift"] == [[16, 0], [16, -8], [16, -8]]
    assert queued["corrupt_outputs"] == ["html", "truncated"]
    assert faults.state()["fail_next"] == {"create": [[502, 1]]}
    assert faults.state()["interrupt_predictions"] == []
    assert faults.state()["size_drift"] == [[0, 16]]
    assert faults.state()["corrupt_outputs"] == []
