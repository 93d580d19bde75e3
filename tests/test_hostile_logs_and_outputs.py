"""Secrets never reach a log, whatever loggers are on; an oversized output is quarantined.

The log test runs the flows in a child process, so Prefect's own logging setup applies
`PREFECT_LOGGING_EXTRA_LOGGERS=httpx` (httpx's records go to the Prefect API) as it would for a
user; the child logs httpx, httpcore, botocore, boto3, s3transfer and urllib3 at DEBUG and keeps
every record as it reaches the root logger. The parent then reads the Prefect API's logs, the
child's console and those records, looking for the presigned URL's signature and credential
(as the sandbox received them) and for the base URL's password.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image
from pydantic import SecretStr

from prefect_seedream import OutputInvalid, generate_images
from prefect_seedream.blocks import S3Destination
from prefect_seedream.sandbox.rendering import OVERSIZED_BYTES

pytestmark = pytest.mark.usefixtures("prefect_harness")

PASSWORD = "hunter2-Pw-7f3a9c"

CHILD = textwrap.dedent('''
    import json, logging, os, sys

    cfg = json.loads(sys.argv[1])
    seen = []

    class Grab(logging.Handler):
        """Keeps each record as it arrives, before any filter of its own."""

        def handle(self, record):
            text = record.getMessage()
            if record.exc_info:
                text += logging.Formatter().formatException(record.exc_info)
            seen.append(f"{record.name}|{text}|{record.exc_text or ''}")
            return True

    import prefect  # Prefect's logging setup, with PREFECT_LOGGING_EXTRA_LOGGERS=httpx
    from pydantic import SecretStr

    from prefect_seedream import edit_image, generate_images
    from prefect_seedream.blocks import ReplicateCredentials, S3Destination

    logging.getLogger().addHandler(Grab())
    for name in ("httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    destination = S3Destination(
        bucket=cfg["bucket"], prefix="logs", endpoint_url=cfg["s3"], region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key=SecretStr("testing"))
    credentials = ReplicateCredentials(api_token=SecretStr(cfg["token"]),
                                       base_url=cfg["base_url"])
    out = {}
    images = edit_image("make the sky violet", [f"s3://{cfg['bucket']}/sources/in.jpg"],
                        size="1K", credentials=credentials, destination=destination)
    out["edit"] = [image.uri for image in images]
    os.environ["REPLICATE_API_TOKEN"] = cfg["token"]
    os.environ["REPLICATE_BASE_URL"] = cfg["password_url"]
    try:
        out["env"] = [image.uri for image in generate_images(
            "a lighthouse at dawn", size="1K", destination=destination)]
    except Exception as exc:
        out["env"] = type(exc).__name__
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=60)
    out["records"] = seen
    with open(cfg["out"], "w") as handle:
        json.dump(out, handle)
''')


def _api_logs() -> list[str]:
    from prefect.client.orchestration import get_client

    messages: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            batch = client.read_logs(limit=200, offset=len(messages))
            messages += [log.message for log in batch]
            if len(batch) < 200:
                return messages


def test_no_signature_or_password_in_any_log_with_httpx_logging_on(
    seedream_sandbox: Any, s3_client: Any, s3_endpoint: str, bucket: str, tmp_path: Path,
    record_hostile: Any,
) -> None:
    from prefect.settings import PREFECT_API_URL

    source = io.BytesIO()
    Image.new("RGB", (640, 480), "teal").save(source, "JPEG")
    s3_client.put_object(Bucket=bucket, Key="sources/in.jpg", Body=source.getvalue())
    host = urlsplit(seedream_sandbox.base_url)
    cfg = {"bucket": bucket, "s3": s3_endpoint, "token": seedream_sandbox.api_token,
           "base_url": seedream_sandbox.base_url, "out": str(tmp_path / "out.json"),
           "password_url": f"http://seedream:{PASSWORD}@{host.netloc}"}
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "PREFECT_LOGGING_EXTRA_LOGGERS": "httpx"}
    env.pop("SEEDREAM_MAX_OUTPUT_BYTES", None)
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert len(out["edit"]) == 1
    (edit,) = [p for p in seedream_sandbox.predictions() if p["input"].get("image_input")]
    presigned = edit["input"]["image_input"][0]
    query = parse_qs(urlsplit(presigned).query)
    secrets = {"signature": query["X-Amz-Signature"][0],
               "credential": query["X-Amz-Credential"][0],
               "credential (encoded)": query["X-Amz-Credential"][0].replace("/", "%2F"),
               "password": PASSWORD}
    api_logs = _api_logs()
    places = {"Prefect API logs": "\n".join(api_logs), "the child's console": child.stderr
              + child.stdout, "log records": "\n".join(out["records"])}
    found = {(what, where) for what, value in secrets.items()
             for where, text in places.items() if value in text}
    assert found == set()
    # The leaks were there to be had: httpx's line for the presigned GET reached the API...
    presigned_lines = [m for m in api_logs if "HTTP Request: GET" in m and "X-Amz-" in m]
    assert presigned_lines and all("X-Amz-Signature=[REDACTED]" in m for m in presigned_lines)
    # ...and the base URL with a password was used and logged, without it.
    assert any("REPLICATE_BASE_URL=http://[REDACTED]@" in m for m in api_logs + out["records"])
    outside = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
               if not o["Key"].startswith(("logs/", "sources/"))]
    record_hostile(
        "PREFECT_LOGGING_EXTRA_LOGGERS=httpx (and httpx, botocore, urllib3 at DEBUG) during an "
        "edit of an s3:// source; REPLICATE_BASE_URL=http://user:pw@host",
        "presigned signatures and credentials, Authorization headers and the URL's password "
        f"redacted in Prefect's API logs, console and every record ({len(presigned_lines)} "
        "presigned GET lines, all [REDACTED])",
        created=len(seedream_sandbox.predictions()) - 1,  # beyond the edit that was asked for
        outside_writes=len(outside))


def test_an_oversized_output_is_quarantined_not_stored(
    seedream_sandbox: Any, credentials: Any, s3_endpoint: str, bucket: str, s3_client: Any,
    record_hostile: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SEEDREAM_MAX_OUTPUT_BYTES", raising=False)  # the default cap, 64 MiB
    destination = S3Destination(
        bucket=bucket, prefix="kept", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key=SecretStr("testing"))
    seedream_sandbox.faults.corrupt_outputs(1, kind="oversized")
    with pytest.raises(OutputInvalid) as info:
        generate_images("a harbour at dusk", size="1K", credentials=credentials,
                        destination=destination)
    (prediction,) = seedream_sandbox.predictions()
    key = f"kept/_quarantine/{prediction['id']}/0.bin"
    assert f"s3://{bucket}/{key}" in str(info.value)
    assert "SEEDREAM_MAX_OUTPUT_BYTES" in str(info.value)
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    stored = [k for k in keys if not k.startswith("kept/_ledger/")]  # the ledger's records
    assert stored == [key]  # nothing at the image's key, no temporary part left behind
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    kept = s3_client.head_object(Bucket=bucket, Key=key)
    assert kept["ContentLength"] == OVERSIZED_BYTES  # every byte kept, none dropped
    assert kept["Metadata"]["prediction-id"] == prediction["id"]
    assert kept["ContentType"] == "application/octet-stream"
    record_hostile(
        "an output of 80 MiB: zeros between a valid JPEG header and end marker",
        "OutputInvalid naming s3://.../_quarantine/<id>/0.bin; the 80 MiB kept there whole, "
        "nothing stored as an image (cap SEEDREAM_MAX_OUTPUT_BYTES, 64 MiB)",
        created=len(seedream_sandbox.predictions()),
        outside_writes=len([k for k in keys if not k.startswith("kept/")]))


@pytest.mark.parametrize(("text", "expected"), [
    ("GET https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
     "&X-Amz-Credential=AKIA%2F20250101%2Fus-east-1&X-Amz-Signature=9f0e&X-Amz-Expires=900",
     "GET https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
     "&X-Amz-Credential=[REDACTED]&X-Amz-Signature=[REDACTED]&X-Amz-Expires=900"),
    ("u=https%3A%2F%2Fh%2Fk%3FX-Amz-Security-Token%3DFwoG%26a%3D1",
     "u=https%3A%2F%2Fh%2Fk%3FX-Amz-Security-Token%3D[REDACTED]%26a%3D1"),
    ("base URL http://alice:s3cret@proxy:8080/v1", "base URL http://[REDACTED]@proxy:8080/v1"),
    ("{'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=ab12'}",
     "{'Authorization': b'[REDACTED]'}"),
    ("Signature:\n" + "ab" * 32, "Signature:\n[REDACTED]"),
    ("token r8_0123456789abcdefABCDEF", "token [REDACTED]"),
    ("https://replicate.delivery/x/0.jpg 200 OK", "https://replicate.delivery/x/0.jpg 200 OK"),
])
def test_redact_removes_signatures_credentials_and_passwords(text: str, expected: str) -> None:
    from prefect_seedream.tasks.redaction import redact

    assert redact(text) == expected


def test_the_redacting_filter_rewrites_arguments_and_tracebacks() -> None:
    import logging

    from prefect_seedream.tasks.redaction import RedactingFilter

    try:
        raise ValueError("GET http://u:pw@h/x?Signature=abc failed")
    except ValueError:
        record = logging.LogRecord("httpx", logging.INFO, __file__, 1, "GET %s", (
            "https://h/k?X-Amz-Signature=abc",), sys.exc_info())
    assert RedactingFilter().filter(record)  # never drops a record
    assert record.getMessage() == "GET https://h/k?X-Amz-Signature=[REDACTED]"
    assert record.exc_text is not None and "pw" not in record.exc_text
    assert "Signature=[REDACTED]" in record.exc_text


def test_the_image_probe_refuses_bytes_past_its_cap() -> None:
    from prefect_seedream.tasks.s3_storage.checks import ImageProbe, ImageTooLarge

    image = io.BytesIO()
    Image.new("RGB", (64, 64)).save(image, "JPEG")
    data = image.getvalue()
    exact = ImageProbe(max_bytes=len(data))
    exact.feed(data)
    exact.finish()  # at the cap: fine
    over = ImageProbe(max_bytes=len(data) - 1)
    with pytest.raises(ImageTooLarge, match="SEEDREAM_MAX_OUTPUT_BYTES"):
        over.feed(data)
