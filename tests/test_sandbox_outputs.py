"""Output files: real JPEGs at Seedream's sizes, edits derived from their inputs, retention."""

# The fixtures are imported (F401) and then requested by name (F811) until the
# `pytest11` entry point registers prefect_seedream.sandbox.pytest_plugin for the whole suite.
# ruff: noqa: F811

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image
from replicate.exceptions import ReplicateError

from prefect_seedream.sandbox.pytest_plugin import (  # noqa: F401
    close_client,
    seedream_client,
    seedream_sandbox,
    seedream_sandbox_server,
)

MODEL = "bytedance/seedream-4"


def _png(size, left=(255, 0, 0), right=(0, 0, 255)) -> bytes:
    image = Image.new("RGB", size, left)
    image.paste(Image.new("RGB", (size[0] // 2, size[1]), right), (size[0] // 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _download(url: str) -> Image.Image:
    response = httpx.get(url)  # no Authorization: output files are public, like the CDN
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


@pytest.fixture
def image_server():
    """A local HTTP server that serves /left-red.png (1600x1200) and 404 elsewhere."""
    files = {"/left-red.png": _png((1600, 1200)), "/notimage.png": b"hello"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            data = files.get(self.path)
            self.send_response(200 if data else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize(("request_input", "size"), [
    ({"aspect_ratio": "4:3"}, (2304, 1728)),
    ({"aspect_ratio": "21:9", "size": "1K"}, (1512, 648)),
    ({"size": "custom", "width": 1500, "height": 1100}, (1500, 1100)),
    ({"aspect_ratio": "1:1", "size": "4K"}, (4096, 4096)),
    ({"size": "1K"}, (1024, 1024)),  # match_input_image with nothing to match: 1:1
])
def test_outputs_are_jpegs_of_seedream_size(seedream_client, request_input, size):
    prediction = seedream_client.models.predictions.create(
        model=MODEL, input={"prompt": "a lighthouse at night", **request_input}, wait=True
    )

    image = _download(prediction.output[0])
    assert (image.format, image.size) == ("JPEG", size)


PROMPT_ONLY = """
import replicate

output = replicate.run("bytedance/seedream-4", input={"prompt": "a cozy reading nook, watercolor"})
with open("output_0.jpg", "wb") as file:
    file.write(output[0].read())
"""


def test_prompt_alone_runs_as_on_replicates_form_and_is_square_2k(seedream_sandbox, tmp_path):
    seedream_sandbox.configure(sync_data_uri_outputs=True)  # as `seedream sandbox` serves
    env = {**os.environ, "REPLICATE_BASE_URL": seedream_sandbox.base_url,
           "REPLICATE_API_TOKEN": seedream_sandbox.api_token}

    result = subprocess.run([sys.executable, "-c", PROMPT_ONLY], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(Path(tmp_path, "output_0.jpg")) as image:
        assert (image.format, image.size) == ("JPEG", (2048, 2048))  # 2K's 1:1 resolution
    (prediction,) = seedream_sandbox.predictions()
    assert prediction["input"] == {"prompt": "a cozy reading nook, watercolor"}
    assert "Generating 2048x2048 image" in prediction["logs"]


def test_jpeg_size_is_realistic_at_2k(seedream_client):
    prediction = seedream_client.models.predictions.create(
        model=MODEL, input={"prompt": "texture", "aspect_ratio": "1:1"}, wait=True
    )

    size = len(httpx.get(prediction.output[0]).content)
    assert 500_000 <= size <= 2_500_000


def test_outputs_of_one_prediction_differ_and_are_cached(seedream_sandbox, seedream_client):
    prediction = seedream_client.models.predictions.create(
        model=MODEL, wait=True,
        input={"prompt": "two cats", "aspect_ratio": "1:1", "size": "1K",
               "sequential_image_generation": "auto", "max_images": 2},
    )

    first, second = (httpx.get(url).content for url in prediction.output)
    again = httpx.get(prediction.output[0]).content

    assert first != second
    assert first == again
    # Bytes are counted once the server has sent them, which may be just after the client has
    # read them: give the last count a moment to land.
    want = 2 * len(first) + len(second)
    for _ in range(50):
        counters = seedream_sandbox.counters()
        if counters["download_bytes"] >= want:
            break
        time.sleep(0.05)
    assert counters["downloads"] == 3
    assert counters["download_bytes"] == 2 * len(first) + len(second)
    assert counters["per_prediction"][prediction.id]["downloads"] == 3



def test_a_download_begun_before_a_reset_is_not_counted_after_it(seedream_sandbox,
                                                                 seedream_client):
    """The sandbox counts a download's bytes once it has sent them. A download still being sent
    when the sandbox is reset (the last test's connection, closed later) counted them into the
    next test's figures, where an exact byte count then failed (CI: 2,277,538 for 1,004,977)."""
    prediction = seedream_client.models.predictions.create(
        model=MODEL, wait=True, input={"prompt": "two cats", "aspect_ratio": "1:1", "size": "1K"})
    seedream_sandbox.faults.slow_downloads(200_000)  # a 1K output takes a second or two
    with httpx.stream("GET", prediction.output[0]) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        seedream_sandbox.reset()
        rest = b"".join(chunks)
    assert first and rest
    time.sleep(0.2)  # the count lands just after the last byte is sent

    counters = seedream_sandbox.counters()
    assert (counters["downloads"], counters["download_bytes"]) == (0, 0)
    assert counters["per_prediction"] == {}


def test_bench_mode_serves_one_prerendered_jpeg_per_size(seedream_sandbox, seedream_client):
    """`--prerendered-outputs`: every prompted output of a size is the same JPEG, rendered
    once, so a benchmark's sandbox spends no CPU per prediction; other sizes get their own."""
    def outputs(prompt: str, size: str) -> list[bytes]:
        prediction = seedream_client.models.predictions.create(
            model=MODEL, wait=True, input={"prompt": prompt, "aspect_ratio": "1:1", "size": size,
                                           "sequential_image_generation": "auto",
                                           "max_images": 2})
        return [httpx.get(url).content for url in prediction.output]

    seedream_sandbox.configure(prerendered_outputs=True)
    try:
        first, second = outputs("two cats", "1K")
        [other, _] = outputs("a lighthouse", "1K")
        [big, _] = outputs("two cats", "2K")
    finally:
        seedream_sandbox.configure(prerendered_outputs=False)
    assert first == second == other
    assert Image.open(io.BytesIO(first)).size == (1024, 1024)
    assert Image.open(io.BytesIO(big)).size == (2048, 2048)
    assert outputs("two cats", "1K")[0] != first  # off again: rendered from the prompt


def test_edit_from_data_uri_derives_output_from_input(seedream_client):
    source = _png((1024, 1024))  # red left half, blue right half
    prediction = seedream_client.models.predictions.create(
        model=MODEL, wait=True,
        input={"prompt": "make it dusk", "image_input": [_data_uri(source)], "size": "1K"},
    )

    image = _download(prediction.output[0]).convert("RGB")
    assert image.size == (1024, 1024)  # match_input_image keeps the 1:1 input ratio
    left = image.crop((0, 700, 400, 1000)).resize((1, 1)).getpixel((0, 0))
    right = image.crop((624, 700, 1024, 1000)).resize((1, 1)).getpixel((0, 0))
    assert left[0] > 150 > left[2]
    assert right[2] > 150 > right[0]


def test_edit_from_http_url_matches_input_ratio(seedream_client, image_server):
    prediction = seedream_client.models.predictions.create(
        model=MODEL, wait=True,
        input={"prompt": "add snow", "image_input": [f"{image_server}/left-red.png"]},
    )

    image = _download(prediction.output[0]).convert("RGB")
    width, height = image.size
    assert abs(width / height - 4 / 3) < 0.02
    assert abs(width * height - 2048 * 2048) / (2048 * 2048) < 0.02
    assert image.crop((0, height // 2, width // 3, height)).resize((1, 1)).getpixel((0, 0))[0] > 150


def test_edit_from_presigned_s3_url(seedream_client):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        s3.create_bucket(Bucket="inputs")
        s3.put_object(Bucket="inputs", Key="photo.png", Body=_png((1200, 1600)))
        url = s3.generate_presigned_url("get_object", Params={"Bucket": "inputs",
                                                              "Key": "photo.png"}, ExpiresIn=60)
        prediction = seedream_client.models.predictions.create(
            model=MODEL, wait=True, input={"prompt": "portrait", "image_input": [url]},
        )
    finally:
        server.stop()

    image = _download(prediction.output[0])
    assert image.size[0] < image.size[1]  # 3:4 input gives a portrait output
    assert "Signature=" in prediction.input["image_input"][0]  # fetched as presigned


@pytest.mark.parametrize(("entry", "reason"), [
    ("/missing.png", "HTTP 404"), ("/notimage.png", "not a readable image"),
])
def test_unusable_input_is_422_naming_the_entry(seedream_sandbox, seedream_client, image_server,
                                                 entry, reason):
    good = _data_uri(_png((64, 64)))
    with pytest.raises(ReplicateError) as caught:
        seedream_client.models.predictions.create(
            model=MODEL, input={"prompt": "x", "image_input": [good, image_server + entry]},
        )

    assert caught.value.status == 422
    assert caught.value.detail.startswith("image_input[1]")
    assert reason in caught.value.detail
    assert seedream_sandbox.predictions() == []


def test_unreachable_input_url_is_422(seedream_client):
    with pytest.raises(ReplicateError) as caught:
        seedream_client.models.predictions.create(
            model=MODEL, input={"prompt": "x", "image_input": ["http://127.0.0.1:9/a.png?sig=s"]},
        )
    assert caught.value.status == 422
    assert "image_input[0]" in caught.value.detail
    assert "sig=s" not in caught.value.detail


def test_retention_removes_output_and_files(seedream_sandbox, seedream_client):
    prediction = seedream_client.models.predictions.create(
        model=MODEL, input={"prompt": "x", "aspect_ratio": "1:1", "size": "1K"}, wait=True
    )
    url = prediction.output[0]
    assert httpx.get(url).status_code == 200

    seedream_sandbox.configure(retention_seconds=0.0)
    after = seedream_client._request("GET", f"/v1/predictions/{prediction.id}").json()

    assert after["data_removed"] is True
    assert after["output"] is None
    assert after["status"] == "succeeded"
    assert httpx.get(url).status_code == 404


def test_expire_outputs_of_one_prediction_now(seedream_sandbox, seedream_client):
    keep, drop = (
        seedream_client.models.predictions.create(
            model=MODEL, input={"prompt": p, "aspect_ratio": "1:1", "size": "1K"}, wait=True)
        for p in ("keep", "drop")
    )

    seedream_sandbox.faults.expire_outputs(drop.id)

    assert seedream_sandbox.prediction(drop.id)["data_removed"] is True
    assert httpx.get(drop.output[0]).status_code == 404
    assert seedream_sandbox.prediction(keep.id)["data_removed"] is False
    assert httpx.get(keep.output[0]).status_code == 200


def test_web_page_links_outputs(seedream_client):
    prediction = seedream_client.models.predictions.create(
        model=MODEL, input={"prompt": "fox", "aspect_ratio": "1:1", "size": "1K"}, wait=True
    )

    page = httpx.get(prediction.urls["web"])

    assert page.status_code == 200
    assert prediction.output[0] in page.text
