"""The local S3 server the quickstart and the tests run on keeps S3's promise for conditional
writes: of many writers racing on one key, exactly one wins. The prediction ledger's claims and
the spend limit's records rest on it; moto alone checks and then writes, so two could win."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

WRITERS = 24


def _race(endpoint: str, write: Callable[[Any, int], None]) -> int:
    """`WRITERS` threads, each with its own client, released at once; how many writes passed."""
    clients = [boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            config=Config(retries={"max_attempts": 1})) for _ in range(WRITERS)]
    start = threading.Barrier(WRITERS)
    won: list[int] = []

    def writer(n: int) -> None:
        start.wait()
        try:
            write(clients[n], n)
            won.append(n)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] in ("PreconditionFailed",
                                                    "ConditionalRequestConflict"), exc

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(won)


@pytest.mark.parametrize("round_", range(3))
def test_of_many_first_writes_of_one_key_exactly_one_wins(
        s3_endpoint: str, s3_client: Any, bucket: str, round_: int) -> None:
    key = f"_ledger/claims/k{round_}.json"
    won = _race(s3_endpoint, lambda client, n: client.put_object(
        Bucket=bucket, Key=key, Body=f"{n}".encode(), IfNoneMatch="*"))
    assert won == 1


@pytest.mark.parametrize("round_", range(3))
def test_of_many_updates_from_one_etag_exactly_one_wins(
        s3_endpoint: str, s3_client: Any, bucket: str, round_: int) -> None:
    key = f"_ledger/spend/day-{round_}.json"
    etag = s3_client.put_object(Bucket=bucket, Key=key, Body=b"0")["ETag"]
    won = _race(s3_endpoint, lambda client, n: client.put_object(
        Bucket=bucket, Key=key, Body=f"{n + 1}".encode(), IfMatch=etag))
    assert won == 1
