"""Every Python snippet in README.md runs as written, in order, as a user would paste it.

Each snippet runs in its own interpreter against the sandbox (Replicate), moto's S3 server and the
session's Prefect server, with only what the README tells a user to set: `REPLICATE_API_TOKEN`,
`REPLICATE_BASE_URL` for the sandbox, `AWS_ENDPOINT_URL` for a local S3, and `SEEDREAM_BUCKET`.
The buckets and source images the snippets name (`my-images`, `s3://my-images/beach.jpg`,
`s3://shop/raw/mug.jpg`) are created first; the JSONL example is saved as the file it names.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from prefect_seedream.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
S3_URI = re.compile(r"s3://([a-z0-9][a-z0-9.-]+)/([^\s'\",\]]+)")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _blocks(kind: str) -> list[str]:
    return [body for lang, body in FENCE.findall((ROOT / "README.md").read_text()) if lang == kind]


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (1024, 1024), (90, 120, 160)).save(out, "JPEG")
    return out.getvalue()


def test_readme_has_snippets_to_run() -> None:
    assert len(_blocks("python")) >= 4
    assert len(_blocks("jsonl")) == 1


@pytest.mark.usefixtures("prefect_harness")
def test_every_python_snippet_in_the_readme_runs_as_written(
    seedream_sandbox: Sandbox, s3_endpoint: str, s3_client: Any, tmp_path: Path,
) -> None:
    from prefect.settings import PREFECT_API_URL

    for name in ("my-images", "shop"):
        if name not in {b["Name"] for b in s3_client.list_buckets()["Buckets"]}:
            s3_client.create_bucket(Bucket=name)
    s3_client.put_object(Bucket="my-images", Key="beach.jpg", Body=_jpeg())
    s3_client.put_object(Bucket="shop", Key="raw/mug.jpg", Body=_jpeg())
    (jsonl,) = _blocks("jsonl")
    (tmp_path / "catalogue.jsonl").write_text(jsonl)

    env = {k: v for k, v in os.environ.items() if not k.startswith("SEEDREAM_")}
    env.update(
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        REPLICATE_API_TOKEN=seedream_sandbox.api_token,
        REPLICATE_BASE_URL=seedream_sandbox.base_url,
        AWS_ENDPOINT_URL=s3_endpoint,
        SEEDREAM_BUCKET="my-images",
        SEEDREAM_SOURCE_BUCKETS='["shop"]',  # as the README's batch section says
    )
    def run(number: int, snippet: str) -> None:
        result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (
            f"README snippet {number} failed:\n{snippet}\n{result.stdout[-2000:]}"
            f"{result.stderr[-4000:]}")
        uris = S3_URI.findall(result.stdout)
        assert uris, f"README snippet {number} printed no image URI"
        for bucket, key in uris:  # each one it printed is in S3, made by a prediction
            head = s3_client.head_object(Bucket=bucket, Key=key)
            assert head["ContentLength"] > 0, f"README snippet {number}: s3://{bucket}/{key}"

    first, *rest = _blocks("python")
    run(1, first)  # it saves the blocks the others load by name
    # The others are independent (each its own interpreter): run them side by side.
    with ThreadPoolExecutor(max_workers=3) as pool:
        for done in [pool.submit(run, n, s) for n, s in enumerate(rest, start=2)]:
            done.result()
    assert len(seedream_sandbox.predictions()) >= 1 + len(rest)
