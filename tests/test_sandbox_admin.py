"""The admin endpoint under /_sandbox, the command line and the Python handle."""

# The fixtures are imported (F401) and then requested by name (F811) until the
# `pytest11` entry point registers sandbox.pytest_plugin for the whole suite.
# ruff: noqa: F811

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
import replicate

from sandbox import Sandbox, SandboxConfig
from sandbox.command_line import main
from sandbox.pytest_plugin import (  # noqa: F401
    close_client,
    seedream_client,
    seedream_sandbox,
    seedream_sandbox_server,
)

MODEL = "bytedance/seedream-4"
TEXT = {"prompt": "a red fox in snow", "aspect_ratio": "1:1", "size": "1K"}


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
        == 404
    admin.post("/reset")

    assert removed["data_removed"] is True
    assert seedream_sandbox.predictions() == []
    assert seedream_sandbox.counters()["creates"] == 0


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
