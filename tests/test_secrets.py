"""A recognisable token goes through every flow, succeeding and failing; it must appear nowhere a
person or another system can read: logs, parameters, results, artifacts, variables, exceptions,
S3 metadata, stdout/stderr."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr

from prefect_seedream import SeedreamError, edit_image, generate_images
from prefect_seedream.blocks import ReplicateCredentials, S3Destination

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_token_never_leaves_the_block(
    seedream_sandbox: Any, s3_endpoint: str, bucket: str, s3_client: Any,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, record_outcome: Any,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogWorker

    sandbox = seedream_sandbox
    token = sandbox.api_token  # recognisable: "r8_sandbox_test_token"
    destination = S3Destination(
        bucket=bucket, endpoint_url=s3_endpoint, aws_access_key_id="testing",
        aws_secret_access_key=SecretStr("testing"),
    )
    good = ReplicateCredentials(api_token=SecretStr(token), base_url=sandbox.base_url)

    texts: list[str] = []
    images = generate_images("a quiet harbour", size="1K", credentials=good,
                             destination=destination)
    texts.append(json.dumps([image.model_dump() for image in images]))
    source = io.BytesIO()
    Image.new("RGB", (1200, 1200), "white").save(source, format="JPEG")
    s3_client.put_object(Bucket=bucket, Key="in.jpg", Body=source.getvalue())
    images += edit_image("add a boat", [f"s3://{bucket}/in.jpg"], size="1K",
                         credentials=good, destination=destination)

    failures: list[BaseException] = []
    sandbox.faults.interrupt_predictions(1, error="The output was flagged as sensitive. (E005)")
    with pytest.raises(SeedreamError) as failed:
        generate_images("will fail", size="1K", credentials=good, destination=destination)
    failures.append(failed.value)
    with pytest.raises(SeedreamError) as timed_out:
        sandbox.configure(run_seconds=5.0)
        generate_images("too slow", size="1K", credentials=good, destination=destination,
                        timeout_seconds=0.5)
    failures.append(timed_out.value)
    for exc in failures:
        texts += [str(exc), repr(exc), repr(getattr(exc, "__cause__", None))]

    for image in images:
        head = s3_client.head_object(Bucket=image.bucket, Key=image.key)
        texts.append(json.dumps(head["Metadata"]))

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        texts += [log.message for log in client.read_logs()]
        texts += [json.dumps(run.parameters, default=str) for run in client.read_flow_runs()]
        texts += [json.dumps(a.data, default=str) for a in client.read_artifacts()]
        texts += [json.dumps(v.value, default=str) for v in client.read_variables()]
    out, err = capfd.readouterr()
    # Everything logged in this process, except the S3 server's own access log (werkzeug): that
    # is the storage provider's log of requests it received, like S3's server access logs.
    texts += [out, err] + [r.getMessage() for r in caplog.records if r.name != "werkzeug"]

    assert len(texts) > 10
    assert any(image.prediction_id in text for image in images for text in texts)
    leaks = [text[:200] for text in texts if token in text]
    signed = [text[:200] for text in texts if "X-Amz-Signature" in text]
    record_outcome("every flow run with a recognisable token (success, failure, timeout)",
                   "scanned logs, parameters, results, artifacts, variables, errors, S3 metadata",
                   created=len(sandbox.predictions()), requests=len(sandbox.predictions()),
                   left_running=0, secret_occurrences=len(leaks) + len(signed))
    assert leaks == []
    assert signed == []  # presigned URLs never appear with their signature
