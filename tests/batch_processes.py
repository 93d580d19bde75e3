"""Run `generate_batch` in separate Python processes at once, as two workers (or an overlapping
schedule) would: each process has its own Prefect client, ledger objects and event loop, and
only S3 and the sandbox are shared. Used by the ledger's and the spend limit's tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

BATCH_RUN = textwrap.dedent("""
    import json, sys
    from pydantic import SecretStr
    from prefect_seedream import generate_batch, ReplicateCredentials, S3Destination
    from prefect_seedream.flows.batch.report import BatchItemsFailed

    args = json.loads(sys.argv[1])
    state = generate_batch(
        args["rows"], return_state=True, max_in_flight=args["max_in_flight"],
        credentials=ReplicateCredentials(api_token=SecretStr(args["token"]),
                                         base_url=args["base_url"]),
        destination=S3Destination(bucket=args["bucket"], prefix=args["prefix"],
                                  endpoint_url=args["endpoint"], region_name="us-east-1",
                                  aws_access_key_id="testing",
                                  aws_secret_access_key=SecretStr("testing")))
    data = state.result(raise_on_failure=False)
    result = data.result if isinstance(data, BatchItemsFailed) else data
    print("RESULT " + json.dumps([item.line_json() for item in result.items]))
""")


def run_batches_at_once(sandbox: Any, s3_endpoint: str, bucket: str, tmp_path: Path,
                        manifests: list[list[dict[str, Any]]], *, prefix: str = "shared",
                        max_in_flight: int = 16, env: dict[str, str] | None = None,
                        ) -> list[list[dict[str, Any]]]:
    """One process per manifest, all started before any is waited for; each one's items (as
    the lines of its results manifest), in manifest order. A process that fails fails the test."""
    from prefect.settings import PREFECT_API_URL

    script = tmp_path / "batch_run.py"
    script.write_text(BATCH_RUN)
    environment = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), **(env or {})}
    processes = [subprocess.Popen(
        [sys.executable, str(script), json.dumps({
            "rows": rows, "token": sandbox.api_token, "base_url": sandbox.base_url,
            "bucket": bucket, "prefix": prefix, "endpoint": s3_endpoint,
            "max_in_flight": max_in_flight})],
        env=environment, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for rows in manifests]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        line = next(line for line in out.splitlines() if line.startswith("RESULT "))
        results.append(json.loads(line.removeprefix("RESULT ")))
    return results
