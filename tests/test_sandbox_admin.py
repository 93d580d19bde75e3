"""The admin endpoint under /_sandbox, the command line and the Python handle."""

# The fixtures are imported (F401) and then requested by name (F811) until the
# `pytest11` entry point registers prefect_seedream.sandbox.pytest_plugin for the whole suite.
# ruff: noqa: F811

from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ReplicateError

from prefect_seedream.sandbox import Sandbox, SandboxConfig, admin_routes
from prefect_seedream.sandbox.command_line import main
from prefect_seedream.sandbox.pytest_plugin import (  # noqa: F401
    close_client,
    seedream_client,
    seedream_sandbox,
    seedream_sandbox_server,
)

MODEL = "bytedance/seedream-4"
TEXT = {"prompt": "a red fox in snow", "aspect_ratio": "1:1", "size": "1K"}
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def admin(seedream_sandbox):
    with httpx.Client(base_url=f"{seedream_sandbox.base_url}/_sandbox") as c:
        yield c


def test_admin_needs_no_token_and_v1_rejects_it_without_one(seedream_sandbox, admin):
    assert admin.get("/counters").status_code == 200
    assert httpx.get(f"{seedream_sandbox.base_url}/v1/account").status_code == 401


def test_admin_sets_faults_over_http(seedream_sandbox, seedream_client, admin):
    state = admin.post("/faults", json={
        "fail_next": {"route": "account", "n": 1, "status": 503},
        "interrupt_predictions": {"n": 1},
    }).json()

    failed = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)

    assert state["fail_next"] == {"account": [[503, 1]]}
    assert failed.error == "Prediction interrupted; please retry (code: PA)"
    assert seedream_client._request("GET", "/v1/account").status_code == 200  # retried 503
    assert seedream_sandbox.counters()["faults_injected"] == 2


def test_admin_refuses_unknown_faults_and_fields(admin):
    assert admin.post("/faults", json={"explode": {}}).status_code == 400
    assert admin.post("/faults", json={"fail_next": {"route": "nope", "n": 1}}).status_code == 400
    assert admin.post("/config", json={"colour": "red"}).status_code == 400
    assert admin.post("/config", json={"run_seconds": -1}).status_code == 400


def test_admin_changes_timings_at_run_time(seedream_sandbox, seedream_client, admin):
    config = admin.post("/config", json={"queue_seconds": 30.0}).json()

    prediction = seedream_client.models.predictions.create(model=MODEL, input=TEXT)

    assert config["queue_seconds"] == 30.0
    assert seedream_sandbox.config.queue_seconds == 30.0
    assert prediction.status == "starting"
    assert admin.get("/config").json() == seedream_sandbox.config.to_dict()


def test_admin_reads_predictions_and_counters(seedream_sandbox, seedream_client, admin):
    prediction = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)

    one = admin.get(f"/predictions/{prediction.id}").json()
    every = admin.get("/predictions").json()["results"]
    counters = admin.get("/counters").json()

    assert one == seedream_sandbox.prediction(prediction.id)
    assert [p["id"] for p in every] == [prediction.id]
    assert counters["creates"] == 1
    assert counters["per_prediction"][prediction.id]["gets"] == 0
    assert admin.get("/predictions/nosuchid").status_code == 404


def test_admin_expire_and_reset(seedream_sandbox, seedream_client, admin):
    prediction = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)

    admin.post("/faults", json={"expire_outputs": {"prediction_id": prediction.id}})
    removed = seedream_sandbox.prediction(prediction.id)
    assert admin.post("/faults", json={"expire_outputs": {"prediction_id": "nope"}}).status_code \
        == 400
    admin.post("/reset")

    assert removed["data_removed"] is True
    assert seedream_sandbox.predictions() == []
    assert seedream_sandbox.counters()["creates"] == 0


def _busy(sandbox: Sandbox) -> None:
    """Every fault switched on through the Python handle."""
    faults = sandbox.faults
    faults.rate_limit_creates(2, retry_after=3)
    faults.fail_next("get", 2, status=503)
    faults.fail_next("create", 1, status=500)
    faults.error_share(0.25, status=503, routes=["get"])
    faults.drop_create_responses(1)
    faults.interrupt_predictions(1)
    faults.interrupt_predictions(1, error="The output was flagged as sensitive. (E005)")
    faults.size_drift(2, dx=16, dy=-8)
    faults.size_drift(1, dx=0, dy=32)
    faults.corrupt_outputs(1)
    faults.corrupt_outputs(2, kind="truncated")
    faults.slow_downloads(1000)


@pytest.mark.parametrize("busy", [False, True], ids=["no faults", "every fault"])
def test_posting_back_what_get_shows_changes_nothing(seedream_sandbox, admin, busy):
    if busy:
        _busy(seedream_sandbox)
    faults, config = admin.get("/faults").json(), admin.get("/config").json()

    posted = admin.post("/faults", json=faults)
    configured = admin.post("/config", json=config)

    assert posted.status_code == 200, posted.text
    assert posted.json() == faults == admin.get("/faults").json()
    assert configured.status_code == 200, configured.text
    assert configured.json() == config == admin.get("/config").json()


def test_admin_sets_output_faults_in_both_forms(seedream_sandbox, seedream_client, admin):
    called = admin.post("/faults", json={"size_drift": {"n": 1},
                                         "corrupt_outputs": {"n": 1, "kind": "truncated"}})
    shown = admin.post("/faults", json={"size_drift": [*called.json()["size_drift"], [0, 16]],
                                        "corrupt_outputs": ["html"]})

    first, second, third = (seedream_client.models.predictions.create(
        model=MODEL, input=TEXT, wait=True) for _ in range(3))

    assert called.json()["size_drift"] == [[16, 0]]
    assert called.json()["corrupt_outputs"] == ["truncated"]
    assert shown.json()["size_drift"] == [[16, 0], [0, 16]]
    assert shown.json()["corrupt_outputs"] == ["html"]  # the shown state replaced "truncated"
    assert httpx.get(first.output[0]).content.startswith(b"<!DOCTYPE html>")
    assert Image.open(io.BytesIO(httpx.get(second.output[0]).content)).size == (1024, 1040)
    assert Image.open(io.BytesIO(httpx.get(third.output[0]).content)).size == (1024, 1024)
    assert "Generating 1040x1024 image" in first.logs
    assert admin.get("/faults").json()["size_drift"] == []
    assert seedream_sandbox.counters()["faults_injected"] == 3


def test_round_trip_keeps_queued_faults_queued_once(seedream_sandbox, seedream_client, admin):
    admin.post("/faults", json={"rate_limit_creates": {"n": 2}})

    admin.post("/faults", json=admin.get("/faults").json())

    for _ in range(2):
        with pytest.raises(ReplicateError) as throttled:
            seedream_client.models.predictions.create(model=MODEL, input=TEXT)
        assert throttled.value.status == 429
    assert seedream_client.models.predictions.create(model=MODEL, input=TEXT).status \
        in ("starting", "processing")


def test_partly_invalid_body_changes_nothing_and_names_each_field(
    seedream_sandbox, seedream_client, admin
):
    prediction = seedream_client.models.predictions.create(model=MODEL, input=TEXT, wait=True)
    before = admin.get("/faults").json()

    answer = admin.post("/faults", json={
        "rate_limit_creates": {"n": 5},  # valid
        "expire_outputs": {"prediction_id": prediction.id},  # valid
        "drop_create_responses": "lots",
        "fail_next": {"route": "upload", "n": 1},
        "slow_downloads": -5,
        "size_drift": {"n": 1, "dx": 1000},
        "corrupt_outputs": {"n": 1, "kind": "gif"},
    })

    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    detail = answer.json()["detail"]
    assert detail.startswith("Nothing was changed")
    for field in ("drop_create_responses:", "fail_next.route:", "slow_downloads:",
                  "size_drift.dx:", "corrupt_outputs.kind:"):
        assert field in detail
    assert "rate_limit_creates" not in detail
    assert admin.get("/faults").json() == before
    assert seedream_sandbox.prediction(prediction.id)["data_removed"] is False
    assert seedream_client.models.predictions.create(model=MODEL, input=TEXT).id  # no 429


def test_partly_invalid_config_changes_nothing(seedream_sandbox, admin):
    before = admin.get("/config").json()

    bad_range = admin.post("/config", json={"queue_seconds": 5, "run_seconds": -1})
    bad_type = admin.post("/config", json={"queue_seconds": 5, "rate_limits": "no"})

    assert (bad_range.status_code, bad_type.status_code) == (400, 400)
    assert "run_seconds" in bad_range.json()["detail"]
    assert "rate_limits must be true or false" in bad_type.json()["detail"]
    assert admin.get("/config").json() == before


@pytest.mark.parametrize(("body", "field"), [
    ({"explode": {}}, "explode: unknown fault"),
    ({"fail_next": {"route": "get"}}, "fail_next.n: required"),
    ({"fail_next": {"route": "get", "n": 1, "status": 200}}, "fail_next.status"),
    ({"fail_next": {"get": [[503]]}}, "fail_next.get[0]"),
    ({"fail_next": {"upload": [[503, 1]]}}, "unknown route 'upload'"),
    ({"error_share": {"share": 1.5}}, "error_share.share: must be a number within 0..1"),
    ({"error_share": {"share": 0.1, "routes": "get"}}, "error_share.routes"),
    ({"interrupt_predictions": 2}, "interrupt_predictions: must be a list"),
    ({"interrupt_predictions": {"n": 1, "eror": "x"}}, "unknown argument 'eror'"),
    ({"rate_limit_creates": {"n": True}}, "rate_limit_creates.n: must be a whole number"),
    ({"clear": 1}, "clear: must be an object"),
    ({"size_drift": 16}, "size_drift: must be a list of [dx, dy] pairs"),
    ({"size_drift": [[16]]}, "size_drift[0]: must be a [dx, dy] pair"),
    ({"size_drift": [[16, "0"]]}, "size_drift[0].dy: must be a whole number of pixels"),
    ({"size_drift": {"n": 1, "dx": 1.5}}, "size_drift.dx: must be a whole number of pixels"),
    ({"size_drift": {"n": -1}}, "size_drift.n: must be a whole number >= 0"),
    ({"size_drift": {"dx": 16}}, "size_drift.n: required"),
    ({"corrupt_outputs": "html"}, "corrupt_outputs: must be a list of kinds"),
    ({"corrupt_outputs": ["png"]}, "corrupt_outputs[0]: unknown kind 'png'"),
    ({"corrupt_outputs": {"n": 1, "kind": "gif"}}, "corrupt_outputs.kind: unknown kind 'gif'"),
])
def test_refusals_name_the_field(admin, body, field):
    answer = admin.post("/faults", json=body)

    assert answer.status_code == 400
    assert field in answer.json()["detail"]


@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"),
])
def test_body_that_is_not_an_object_is_400(admin, content, message):
    answer = admin.post("/faults", content=content)

    assert answer.status_code == 400
    assert message in answer.json()["detail"]


def _documented_examples() -> list[dict]:
    text = " ".join((admin_routes.__doc__ or "").split())
    return [json.loads(span) for span in re.findall(r'`(\{".*?\})`', text)]


def test_documented_examples_do_what_they_say(seedream_sandbox, seedream_client, admin):
    throttle, drop, share, outputs, clear = _documented_examples()
    fresh = admin.get("/faults").json()

    state = admin.post("/faults", json=throttle).json()
    assert state["rate_limit_creates"] == {"n": 2, "retry_after": 3}
    assert state["fail_next"] == {"get": [[503, 1]]}
    for _ in range(2):
        with pytest.raises(ReplicateError) as throttled:
            seedream_client.models.predictions.create(model=MODEL, input=TEXT)
        assert throttled.value.status == 429
    created = seedream_client.models.predictions.create(model=MODEL, input=TEXT)
    created.reload()  # the client retries the injected 503
    assert seedream_sandbox.counters()["faults_injected"] == 3

    state = admin.post("/faults", json=drop).json()
    assert state["drop_create_responses"] == 1
    with pytest.raises(httpx.HTTPError):
        seedream_client.models.predictions.create(model=MODEL, input=TEXT)
    lost = seedream_sandbox.predictions()[0]  # created although its answer was lost
    assert lost["id"] != created.id
    flagged = seedream_client.predictions.get(lost["id"])
    flagged.wait()
    assert (flagged.status, flagged.error) == \
        ("failed", "The output was flagged as sensitive. (E005)")

    state = admin.post("/faults", json=share).json()
    assert state["error_share"] == {"share": 0.2, "status": 500, "routes": ["get", "list"]}
    assert state["slow_downloads"] == 50000

    admin.post("/faults", json={"clear": {}})
    state = admin.post("/faults", json=outputs).json()
    assert state["size_drift"] == [[16, 0]]
    assert state["corrupt_outputs"] == ["truncated", "truncated"]
    wide = {**TEXT, "aspect_ratio": "16:9", "size": "2K"}
    drifted, cut, whole = (seedream_client.models.predictions.create(
        model=MODEL, input=wide, wait=True) for _ in range(3))
    for prediction in (drifted, cut):
        data = httpx.get(prediction.output[0]).content
        with pytest.raises(OSError, match="truncated"):
            Image.open(io.BytesIO(data)).load()
    assert Image.open(io.BytesIO(httpx.get(drifted.output[0]).content)).size == (2576, 1440)
    image = Image.open(io.BytesIO(httpx.get(whole.output[0]).content))
    image.load()
    assert image.size == (2560, 1440)

    assert admin.post("/faults", json=clear).json() == fresh


def test_readme_curl_bodies_are_the_documented_examples():
    bodies = [json.loads(body) for body in re.findall(r"^curl -d '(.*)' \$S$", README.read_text(),
                                                       re.M)]

    assert bodies == _documented_examples()


def test_python_handle_starts_on_a_free_port_and_stops():
    config = SandboxConfig(run_seconds=0.05, rate_limits=False)
    with Sandbox(api_token="r8_other", config=config) as sb:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sb.base_url)
        client = replicate.Client(api_token="r8_other", base_url=sb.base_url)
        prediction = client.models.predictions.create(model=MODEL, input=TEXT, wait=True)
        close_client(client)
        url = sb.base_url
        assert sb.prediction(prediction.id)["status"] == "succeeded"
        with pytest.raises(KeyError):
            sb.prediction("missing")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_sandbox/counters")


def test_configure_rejects_unknown_fields(seedream_sandbox):
    with pytest.raises(TypeError, match="colour"):
        seedream_sandbox.configure(colour="red")


def test_command_line_prints_usable_exports(capsys):
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(
        main(["--port", "0", "--run-seconds", "0.05"], stop=stop)))
    thread.start()
    try:
        end, out = time.monotonic() + 10, ""
        while "REPLICATE_API_TOKEN=" not in out:
            assert time.monotonic() < end, "no output from the command line"
            time.sleep(0.02)
            out += capsys.readouterr().out
        base_url = re.search(r"REPLICATE_BASE_URL=(\S+)", out).group(1)
        token = re.search(r"REPLICATE_API_TOKEN=(\S+)", out).group(1)
        account = httpx.get(f"{base_url}/v1/account",
                            headers={"Authorization": f"Bearer {token}"})
    finally:
        stop.set()
        thread.join()

    assert token.startswith("r8_sandbox")
    assert account.status_code == 200
    assert result == [0]
