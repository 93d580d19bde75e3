"""The local S3 server the quickstart and the tests run on keeps S3's promise for conditional
writes: of many writers racing on one key, exactly one wins. The prediction ledger's claims and
the spend limit's records rest on it; moto alone checks and then writes, so two could win."""

from __future__ import annotations

import threading
import time
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



def test_a_read_never_sees_a_published_copy_without_its_metadata(
        s3_endpoint: str, s3_client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image is published by a conditional `CopyObject` that sets its metadata; a
    concurrent run of the same request HEADs the key and trusts the metadata to say whose
    object it is. S3 shows the copy whole or not at all; moto makes the key visible and then
    sets its metadata, and in CI the other run read in between and refused to store ("already
    holds another object"). moto's window is widened here to 0.2 s (the server runs in this
    process) so that a read lands in it every time unless the server keeps reads out."""
    from moto.s3.models import FakeKey

    set_metadata = FakeKey.set_metadata

    def slow_set_metadata(self: Any, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.2)
        set_metadata(self, *args, **kwargs)

    s3_client.put_object(Bucket=bucket, Key="_incomplete/p.part", Body=b"x" * 4096)
    monkeypatch.setattr(FakeKey, "set_metadata", slow_set_metadata)
    copy = threading.Thread(target=lambda: s3_client.copy_object(
        Bucket=bucket, Key="runs/p/0.jpg", IfNoneMatch="*", MetadataDirective="REPLACE",
        CopySource={"Bucket": bucket, "Key": "_incomplete/p.part"},
        Metadata={"prediction-id": "p", "index": "0"}))
    copy.start()
    reader = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    seen: list[dict[str, str]] = []
    deadline = time.monotonic() + 30  # the copy thread died if nothing shows by then
    while (copy.is_alive() or not seen) and time.monotonic() < deadline:
        try:
            seen.append(reader.head_object(Bucket=bucket, Key="runs/p/0.jpg")["Metadata"])
        except ClientError as exc:
            assert exc.response["Error"]["Code"] in ("404", "NoSuchKey"), exc
        time.sleep(0.01)
    copy.join()

    assert seen, "the copy never published the object"
    assert all(meta == {"prediction-id": "p", "index": "0"} for meta in seen), seen
