"""Previews as a person sees them: a real `prefect server` with its UI, flows run against the
sandbox and S3, and the artifact pages opened in headless Chromium.

The check is the browser's own: every preview `<img>` (a `data:image/jpeg` URI) on the page has
loaded with a natural width above zero. Skipped, with the reason, where Debian's `chromium` is
not installed (`apt-get install chromium`). Screenshots go to the test's temporary folder, and
to `$SEEDREAM_SCREENSHOTS` when it is set (`SEEDREAM_SCREENSHOTS=docs` refreshes the README's).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import CHROMIUM, Browser
from e2e_support import PYTHON, base_env, free_port, start_prefect_server

pytestmark = [
    pytest.mark.server,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="needs Debian's chromium (apt-get install chromium) for the UI"),
]

RUN_FLOWS = textwrap.dedent("""
    import json, sys, urllib.request
    from pydantic import SecretStr
    from prefect_seedream import (ReplicateCredentials, S3Destination, generate_batch,
                                  generate_images)

    args = json.loads(sys.argv[1])
    credentials = ReplicateCredentials(api_token=SecretStr(args["token"]),
                                       base_url=args["base_url"])
    destination = S3Destination(bucket=args["bucket"], prefix="previews",
                                endpoint_url=args["endpoint"], region_name="us-east-1",
                                aws_access_key_id="testing",
                                aws_secret_access_key=SecretStr("testing"))
    images = generate_images("three lighthouses at dusk", size="1K", aspect_ratio="16:9",
                             max_images=3,
                             credentials=credentials, destination=destination)
    # The batch's first prediction fails (the sandbox's admin route): the gallery must show it.
    urllib.request.urlopen(urllib.request.Request(
        args["base_url"] + "/_sandbox/faults", method="POST",
        data=json.dumps({"interrupt_predictions": {"n": 1, "error": "flagged (E005)"}}).encode(),
        headers={"Content-Type": "application/json"}), timeout=10).read()
    state = generate_batch([{"id": f"mug-{n}", "prompt": f"a ceramic mug, angle {n}",
                             "size": "1K", "aspect_ratio": "4:3"} for n in range(6)],
                           credentials=credentials, destination=destination, max_in_flight=1,
                           item_retries=0, return_state=True)
    print("RESULT " + json.dumps({"images": [i.uri for i in images]}))
""")

EVERY_PREVIEW = """(() => {
  const previews = Array.from(document.images).filter(i => i.src.startsWith('data:image/jpeg'));
  return {count: previews.length,
          loaded: previews.filter(i => i.complete && i.naturalWidth > 0).length,
          widths: previews.map(i => i.naturalWidth),
          text: document.body.innerText};
})()"""


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` with its UI, told where its own API is (else the UI shows only
    "Something went wrong"); the server's URL."""
    base = tmp_path_factory.mktemp("prefect-ui")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**base_env(), "PREFECT_HOME": str(base / "home"),
           "PREFECT_SERVER_UI_ENABLED": "true", "PREFECT_UI_API_URL": f"{url}/api",
           "PREFECT_LOGGING_SERVER_LEVEL": "WARNING"}
    process = start_prefect_server("prefect-ui-server", port, env, base, timeout=120)
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    started = Browser()
    try:
        yield started
    finally:
        started.close()


def _latest_artifact(server: str, key: str) -> dict[str, Any]:
    """The newest artifact under `key` (`/artifacts/{key}/latest` answers with the id of the
    key's collection, which the UI's artifact page does not know)."""
    answer = httpx.post(f"{server}/api/artifacts/filter", timeout=10, json={
        "artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1})
    answer.raise_for_status()
    (artifact,) = answer.json()
    return dict(artifact)


def _keep(png: bytes, name: str, tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(png)
    if folder := os.environ.get("SEEDREAM_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(png)


def test_the_image_artifact_and_the_batch_gallery_show_their_previews_in_the_ui(
    ui_server: str, browser: Browser, e2e_sandbox: Any, e2e_bucket: str, s3_endpoint: str,
    tmp_path: Path,
) -> None:
    script = tmp_path / "run_flows.py"
    script.write_text(RUN_FLOWS)
    result = subprocess.run(
        [PYTHON, str(script), json.dumps({
            "token": e2e_sandbox.api_token, "base_url": e2e_sandbox.base_url,
            "bucket": e2e_bucket, "endpoint": s3_endpoint})],
        env={**base_env(), "PREFECT_API_URL": f"{ui_server}/api"},
        capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    images = json.loads(next(line for line in result.stdout.splitlines()
                             if line.startswith("RESULT ")).removeprefix("RESULT "))["images"]
    assert len(images) == 3

    artifact = _latest_artifact(ui_server, "seedream-images")
    page = browser.open(f"{ui_server}/artifacts/artifact/{artifact['id']}")
    seen = page.wait_for(f"(() => {{ const r = {EVERY_PREVIEW}; "
                         "return r.loaded >= 3 ? r : null; })()") or page.evaluate(EVERY_PREVIEW)
    assert (seen["count"], seen["loaded"]) == (3, 3), seen["widths"]
    assert all(0 < width <= 256 for width in seen["widths"])
    assert images[0].rsplit("/", 1)[-1] in seen["text"]  # the row names the stored image
    assert e2e_sandbox.api_token not in seen["text"] and "Signature" not in seen["text"]
    _keep(page.screenshot(), "preview-artifact.png", tmp_path)
    page.close()

    gallery = _latest_artifact(ui_server, "seedream-batch-gallery")
    page = browser.open(f"{ui_server}/artifacts/artifact/{gallery['id']}")
    seen = page.wait_for(f"(() => {{ const r = {EVERY_PREVIEW}; "
                         "return r.loaded >= 5 ? r : null; })()") or page.evaluate(EVERY_PREVIEW)
    assert (seen["count"], seen["loaded"]) == (5, 5), seen["widths"]  # the failed one has none
    assert all(f"mug-{n}" in seen["text"] for n in range(6))
    assert "failed" in seen["text"]
    _keep(page.screenshot(), "preview-gallery.png", tmp_path)
    page.close()
