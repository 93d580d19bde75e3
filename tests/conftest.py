"""Shared fixtures: one moto S3 server over HTTP and one Prefect test harness per session.

The Replicate sandbox fixture (`seedream_sandbox`) comes from the
`prefect_seedream.sandbox.pytest_plugin` entry point of this distribution.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

# Real HTTP to loopback only; never a real AWS or Replicate account.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("REPLICATE_API_TOKEN", None)
os.environ.pop("REPLICATE_BASE_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# Tasks called outside a flow (a supported use) log locally; Prefect would warn on each line.
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
# Model schemas fetched from the sandbox are cached on disk: never in the user's cache dir.
os.environ.setdefault("SEEDREAM_SCHEMA_CACHE_DIR",
                      os.path.join(tempfile.mkdtemp(prefix="seedream-schemas-"), "schemas"))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, conditional writes atomic as on S3
    (`prefect_seedream.sandbox.local_s3.S3Server`)."""
    from prefect_seedream.sandbox.local_s3 import S3Server

    server = S3Server().start()
    try:
        yield server.endpoint_url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(s3_client: Any) -> str:
    """A fresh, empty bucket for one test."""
    name = f"seedream-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def destination(s3_endpoint: str, bucket: str) -> Any:
    """An `S3Destination` on the test's bucket, prefix `runs` (a test module may define its own)."""
    from pydantic import SecretStr

    from prefect_seedream.blocks import S3Destination

    return S3Destination(
        bucket=bucket, prefix="runs", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key=SecretStr("testing"),
    )


@pytest.fixture
def credentials(seedream_sandbox: Any) -> Any:
    """`ReplicateCredentials` for the session's sandbox (a test module may define its own)."""
    from pydantic import SecretStr

    from prefect_seedream.blocks import ReplicateCredentials

    return ReplicateCredentials(
        api_token=SecretStr(seedream_sandbox.api_token), base_url=seedream_sandbox.base_url
    )


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for the session (it takes ~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


# --- RELIABILITY.md: tests that inject a fault record what they measured ------------------------

_OUTCOMES: list[dict[str, Any]] = []


@pytest.fixture
def record_outcome(request: pytest.FixtureRequest) -> Any:
    """Record one row of RELIABILITY.md from the test that measured it.

    Rows are written to `$SEEDREAM_RELIABILITY_OUT` (JSON) at the end of the session when set;
    `make reliability` runs the fault tests with it and renders RELIABILITY.md.
    """

    def record(fault: str, handling: str, *, created: int, requests: int = 1,
               left_running: int, outputs_lost: int = 0, secret_occurrences: int = 0) -> None:
        _OUTCOMES.append({
            "fault": fault, "handling": handling, "test": request.node.nodeid,
            "created_per_request": created / max(1, requests), "left_running": left_running,
            "outputs_lost": outputs_lost, "secret_occurrences": secret_occurrences,
        })

    return record


@pytest.fixture
def record_hostile(request: pytest.FixtureRequest) -> Any:
    """Record one row of RELIABILITY.md's "bad input and hostile peers" table.

    `sent` is what an outsider sent, `did` what the plugin did; `created` predictions created,
    `outside_writes` objects written outside the destination's prefix, `internal_requests`
    requests the worker made to hosts it should never reach, each as measured by the test.
    """

    def record(sent: str, did: str, *, created: int, outside_writes: int = 0,
               internal_requests: int = 0) -> None:
        _OUTCOMES.append({
            "table": "hostile", "sent": sent, "did": did, "test": request.node.nodeid,
            "created": created, "outside_writes": outside_writes,
            "internal_requests": internal_requests,
        })

    return record


@pytest.fixture
def record_spend(request: pytest.FixtureRequest) -> Any:
    """Record one row of RELIABILITY.md's spend limit table: `requests` creates asked for by
    `runs` against `limit` (its text, e.g. "2 images a day"), of which the limit allows
    `allowed`; `created` predictions the sandbox made and `spent` what the period's record
    settled, in the unit of `limit_value`, as measured by the test."""

    def record(runs: str, limit: str, *, limit_value: float, requests: int, allowed: int,
               created: int, spent: float) -> None:
        past = max(0, created - allowed) / max(1, requests - allowed)
        _OUTCOMES.append({
            "table": "spend", "runs": runs, "limit": limit, "test": request.node.nodeid,
            "requests": requests, "allowed": allowed, "created": created,
            "created_past_limit": past, "spent": spent,
            "over_limit": round(max(0.0, spent - limit_value), 6),
        })

    return record


@pytest.fixture
def record_cell(request: pytest.FixtureRequest) -> Any:
    """Record one measured cell of RELIABILITY.md's fault matrix (rows faults, columns entry
    points): `created` predictions for `requests` logical requests, `left_running` afterwards,
    `outputs_lost` (images Replicate made that are in S3 neither as images nor in quarantine)."""

    def record(entry: str, fault: str, *, created: int, requests: int = 1, left_running: int,
               outputs_lost: int, handling: str) -> None:
        _OUTCOMES.append({
            "table": "matrix", "entry": entry, "fault": fault, "handling": handling,
            "test": request.node.nodeid, "created": created, "requests": requests,
            "created_per_request": created / max(1, requests), "left_running": left_running,
            "outputs_lost": outputs_lost,
        })

    return record


@pytest.fixture
def record_na(request: pytest.FixtureRequest) -> Any:
    """Record a cell of the fault matrix that does not apply, with the reason (`why`); a reason
    starting "pending:" marks a cell waiting for a feature rather than one that cannot apply."""

    def record(entry: str, fault: str, why: str) -> None:
        _OUTCOMES.append({"table": "matrix", "entry": entry, "fault": fault, "na": why,
                          "test": request.node.nodeid})

    return record


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("SEEDREAM_RELIABILITY_OUT")
    if out and _OUTCOMES:
        import json

        worker = os.environ.get("PYTEST_XDIST_WORKER")  # each xdist worker writes its own
        with open(f"{out}.{worker}" if worker else out, "w", encoding="utf-8") as handle:
            json.dump(_OUTCOMES, handle, indent=1)
