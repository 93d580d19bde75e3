"""Keys and records: what makes a batch resumable, what it keeps in S3, how it finds it again.

The item key is the request identity the prediction ledger uses (`request_identity`: model and
normalised Seedream input), with each source image named by the SHA-256 of its bytes (so a
re-signed URL or a renamed copy does not count as new, and a changed source does). Source
digests: an `s3://` source uses the object's full-object `ChecksumSHA256` when S3 has one
(objects this plugin stores always do), else its bytes are streamed and hashed; an https source
is streamed and hashed. Never held whole in memory.

Layout under the key prefix:

- `batch/{item_key}/{prediction_id}/{index}.jpg`: an item's images (written by `store_outputs`);
- `batch/{item_key}/result.json`: written last, only when every image is stored; its presence
  is what "done" means, so a re-run skips the item and creates nothing;
- `_ledger/items/{item_key}.json`: the item's prediction-ledger record (claimed before its
  create, so two runs never both pay for it; see `prefect_seedream.tasks.prediction_ledger`);
- `batch/results/{run}.jsonl`: one line per item of a run, for downstream pipelines;
- `batch/shards/{run}/{i}.jsonl`: the manifest of each shard handed to a deployment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from prefect_seedream.blocks.s3_destination import join_key_parts, parse_s3_uri
from prefect_seedream.flows.batch.manifest import BatchItem, ManifestInvalid
from prefect_seedream.tasks.errors import InvalidInput
from prefect_seedream.tasks.prediction_ledger import request_identity

if TYPE_CHECKING:
    from prefect_seedream.blocks.s3_destination import S3Destination

RESULT_NAME = "result.json"
_CHUNK = 1024 * 1024


def item_key(model: str, item: BatchItem, source_digests: Mapping[str, str]) -> str:
    """The item's resumability key: its request identity (`prediction_ledger.request_identity`,
    sources named by the SHA-256 of their bytes), cut to 32 hex chars.

    Example:
        ```python
        from prefect_seedream.flows.batch.keys import item_key
        from prefect_seedream.flows.batch.manifest import check_rows

        [a, b] = check_rows([{"prompt": "a fox", "size": "1K"},
                             {"prompt": "a fox", "size": "1K", "id": "other"}])
        assert item_key("m", a, {}) == item_key("m", b, {})  # the id is not part of the input
        ```
    """
    if item.kind == "generate":
        return request_identity(model, item.request().to_request())[:32]
    placeholders = [f"https://source.invalid/{i}" for i in range(len(item.images))]
    digests = [source_digests[source] for source in item.images]
    return request_identity(model, item.request(placeholders).to_request(), digests)[:32]


def item_prefix(prefix: str, key: str) -> str:
    """Where one item's images and result live: `{prefix}/batch/{key}`."""
    return join_key_parts(prefix, "batch", key)


def _digest_s3(source: str, destination: S3Destination) -> str:
    """SHA-256 of an `s3://` source in a bucket the destination may read (checked before any
    request), streamed and capped at `SEEDREAM_SOURCE_MAX_BYTES`."""
    from prefect_seedream.flows.source_images import check_source_bucket, too_large
    from prefect_seedream.tasks.seedream_settings import get_settings

    bucket, key = parse_s3_uri(source)
    check_source_bucket(bucket, destination)
    limit = get_settings().source_max_bytes
    client = destination.get_client()
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    if int(head.get("ContentLength") or 0) > limit:
        raise too_large(limit)
    checksum = head.get("ChecksumSHA256")
    if checksum and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
        return base64.b64decode(checksum).hex()
    sha = hashlib.sha256()
    read = 0
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(_CHUNK), b""):
        read += len(chunk)
        if read > limit:
            raise too_large(limit)
        sha.update(chunk)
    return sha.hexdigest()


def _digest_http(source: str, http: httpx.Client) -> str:
    """SHA-256 of a URL source: checked and pinned like every source read, no redirect
    followed, capped at `SEEDREAM_SOURCE_MAX_BYTES` (`flows.source_images`)."""
    from prefect_seedream.flows.source_images import open_source, read_capped
    from prefect_seedream.tasks.seedream_settings import get_settings

    settings = get_settings()
    sha = hashlib.sha256()
    with open_source(source, client=http, settings=settings) as response:
        response.raise_for_status()
        for chunk in read_capped(response, settings.source_max_bytes):
            sha.update(chunk)
    return sha.hexdigest()


def source_digests(
    items: Iterable[BatchItem], destination: S3Destination, *, max_workers: int = 8
) -> dict[str, str]:
    """SHA-256 of every edit source, once per distinct source.

    Raises:
        ManifestInvalid: Every source that cannot be read, with the lines that use it.
    """
    users: dict[str, list[int]] = {}
    for item in items:
        for source in item.images:
            users.setdefault(source, []).append(item.line)
    if not users:
        return {}
    digests: dict[str, str] = {}
    problems: list[str] = []
    with httpx.Client(timeout=30.0, follow_redirects=True) as http, ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="batch-digest") as pool:
        def one(source: str) -> str:
            if source.startswith("s3://"):
                return _digest_s3(source, destination)
            return _digest_http(source, http)

        futures = {source: pool.submit(one, source) for source in users}
        for source, future in futures.items():
            try:
                digests[source] = future.result()
            except InvalidInput as exc:  # refused by the source rules: say which rule
                lines = ", ".join(str(n) for n in users[source][:5])
                problems.append(f"line {lines}: {exc}")
            except Exception as exc:
                lines = ", ".join(str(n) for n in users[source][:5])
                problems.append(f"line {lines}: cannot read source {source.split('?')[0]} "
                                f"({type(exc).__name__}); check the URI and the "
                                "destination's credentials")
    if problems:
        raise ManifestInvalid(problems)
    return digests


def find_done(destination: S3Destination, prefix: str, keys: set[str]) -> set[str]:
    """Which of `keys` already have a `result.json`: one listing, not one request per item."""
    client = destination.get_client()
    root = join_key_parts(prefix, "batch") + "/"
    done: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=destination.bucket, Prefix=root):
        for obj in page.get("Contents", []):
            rest = obj["Key"][len(root):]
            key, _, name = rest.partition("/")
            if name == RESULT_NAME and key in keys:
                done.add(key)
    return done


def read_results(destination: S3Destination, prefix: str, keys: Iterable[str],
                 *, max_workers: int = 16) -> dict[str, dict[str, Any]]:
    """The stored `result.json` of each key (fetched concurrently)."""
    client = destination.get_client()

    def one(key: str) -> dict[str, Any]:
        obj = client.get_object(Bucket=destination.bucket,
                                Key=join_key_parts(item_prefix(prefix, key), RESULT_NAME))
        data: dict[str, Any] = json.loads(obj["Body"].read())
        return data

    wanted = list(keys)
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="batch-read") as pool:
        return dict(zip(wanted, pool.map(one, wanted), strict=True))


def write_result(destination: S3Destination, prefix: str, key: str,
                 payload: Mapping[str, Any]) -> None:
    """Mark an item done: written after its last image, so presence means complete."""
    destination.get_client().put_object(
        Bucket=destination.bucket, Key=join_key_parts(item_prefix(prefix, key), RESULT_NAME),
        Body=json.dumps(payload, sort_keys=True).encode(), ContentType="application/json",
    )


def write_jsonl(destination: S3Destination, key: str, lines: Iterable[Mapping[str, Any]]) -> str:
    """Stream JSON lines to `key` through a temporary file; returns the object's s3:// URI."""
    with tempfile.TemporaryFile() as spool:
        for line in lines:
            spool.write(json.dumps(line, sort_keys=True, default=str).encode() + b"\n")
        spool.seek(0)
        destination.get_client().upload_fileobj(
            spool, destination.bucket, key,
            ExtraArgs={"ContentType": "application/x-ndjson"},
        )
    return destination.uri(key)


def read_jsonl(destination: S3Destination, uri: str) -> list[dict[str, Any]]:
    """The JSON lines of an `s3://` object, or [] when it does not exist."""
    bucket, key = parse_s3_uri(uri)
    client = destination.get_client()
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except client.exceptions.NoSuchKey:
        return []
    return [json.loads(line) for line in body.iter_lines() if line.strip()]


__all__ = [
    "RESULT_NAME",
    "find_done",
    "item_key",
    "item_prefix",
    "read_jsonl",
    "read_results",
    "source_digests",
    "write_jsonl",
    "write_result",
]
