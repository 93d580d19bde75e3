"""The prediction ledger: one durable record per logical request, so nothing is paid twice or
left running, whichever process, retry or run asks.

Records live in S3 beside the images, under `{prefix}/_ledger/`, and every change is a
conditional write: a claim is `PutObject(IfNoneMatch="*")`, so of two runs that want the same
request at once exactly one creates it and the other attaches to that prediction; an update is
`PutObject(IfMatch=<etag>)`, so nobody overwrites a record that changed under them. Records are
small and hold no prompt (a request is found again by `RequestMatch`: field names and a digest).

- `{prefix}/_ledger/runs/{flow_run_id}/{key}.json`: a flow's or task's request, scoped to its flow
  run (its retries and re-runs share it; `idempotency_key` tells deliberate repeats apart);
- `{prefix}/_ledger/items/{key}.json`: a batch item, shared by every run of that batch prefix;
- `{prefix}/_ledger/requests/{key}.json`: a request named by the caller's `request_id` (an
  order number, an event id), shared by every run that names it, like a batch item;
- `{prefix}/_ledger/open/{flow_run_id}/{scope}/{key}`: a pointer to a shared record the run owns
  and has not seen finish, for its cancellation and crash hooks.

A record moves `sending` (claimed; the create is on its way) -> `created` (the prediction id is
known) -> `ended`; or `sending` -> `released` (the create failed and made nothing). Nothing is
ever deleted but a run's own open pointers. The key names the request by what was asked for
(`request_identity`: an S3 source by its URI and ETag, never by the presigned URL an attempt
sends). The claim protocol itself (attach, wait, reconcile, take over) is
`prefect_seedream.tasks.prediction_support.CreatePlan.obtain`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prefect_seedream.blocks.s3_destination import join_key_parts
from prefect_seedream.tasks.replicate_client.prediction import PredictionStatus

if TYPE_CHECKING:
    from prefect_seedream.blocks.s3_destination import S3Destination

logger = logging.getLogger("prefect_seedream.ledger")

#: Scope of batch items: shared by every run that writes under the same prefix.
ITEMS = "items"
#: Scope of requests named by the caller (`request_id`): shared by every run, like items.
REQUESTS = "requests"
SENDING, CREATED, ENDED, RELEASED = "sending", "created", "ended", "released"


def source_identity(source: str, etag: str | None = None) -> str:
    """What an image source is, the same on every attempt: never a presigned URL.

    An `s3://bucket/key` URI is named with its ETag (`s3://bucket/key#<etag>`), so a new
    version of the object is a new source; an http(s) URL is named as given; a `data:` URI by
    the SHA-256 of its text (`sha256:<hex>`).

    Example:
        ```python
        from prefect_seedream.tasks.prediction_ledger import source_identity

        assert source_identity("s3://photos/beach.jpg", '"9b2cf5"') == "s3://photos/beach.jpg#9b2cf5"
        ```
    """
    if source.startswith("s3://"):
        version = (etag or "").strip('"')
        return f"{source}#{version}" if version else source
    if source.startswith("data:"):
        return "sha256:" + hashlib.sha256(source.encode()).hexdigest()
    return source


def request_identity(
    model: str, input: Mapping[str, Any], sources: Sequence[str] | None = None
) -> str:
    """The SHA-256 (64 hex chars) of one logical request: what was asked for, not what was sent.

    The basis is the model and the normalised input, with `image_input` replaced by `sources`
    when given: one name per image, in order (`source_identity` for a flow's sources, content
    digests for a batch's), so a URL presigned afresh by each attempt does not make it a new
    request. Without `sources`, the input itself is the identity.

    Raises:
        ValueError: `sources` does not name exactly the images in `input["image_input"]`.

    Example:
        ```python
        from prefect_seedream.tasks.prediction_ledger import request_identity

        first = {"prompt": "dusk", "image_input": ["https://s3.example/a.jpg?X-Amz-Signature=1"]}
        retry = {"prompt": "dusk", "image_input": ["https://s3.example/a.jpg?X-Amz-Signature=2"]}
        assert (request_identity("m", first, ["s3://photos/a.jpg#9b2c"])
                == request_identity("m", retry, ["s3://photos/a.jpg#9b2c"]))
        ```
    """
    body = dict(input)
    if sources is not None:
        images = body.get("image_input") or []
        if len(sources) != len(images):
            raise ValueError(f"sources names {len(sources)} image(s) but image_input holds "
                             f"{len(images)}; pass one source per image, in order")
        if sources:
            body["image_input"] = list(sources)
    basis = json.dumps({"model": model, "input": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(basis.encode()).hexdigest()


def request_key(
    model: str, input: Mapping[str, Any], idempotency_key: str | None = None,
    sources: Sequence[str] | None = None,
) -> str:
    """The ledger's key for one logical request: its `request_identity`, or the caller's key.

    Raises:
        ValueError: `sources` does not name exactly the images in the input.
    """
    identity = request_identity(model, input, sources)
    if idempotency_key is not None:
        return hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
    return identity[:24]


def current_flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    value = flow_run.id
    return str(value) if value else None


def named_key(request_id: str, identity: str) -> str:
    """The key of a request the caller named: its `request_id` with what was asked for, so
    the same id with another input is another request, never someone else's images."""
    return hashlib.sha256(f"{request_id}\n{identity}".encode()).hexdigest()[:32]


def run_scope(flow_run_id: str) -> str:
    """The scope of a flow run's own requests."""
    return f"runs/{flow_run_id}"


# Claims this process holds while their create is on its way: a `sending` record written by
# this host and process under a token not in here belongs to an attempt that already ended.
_live: set[str] = set()
_lock = threading.Lock()
_HOST = f"{socket.gethostname()}:{os.getpid()}"


def new_token() -> str:
    token = f"{_HOST}:{uuid.uuid4().hex[:12]}"
    with _lock:
        _live.add(token)
    return token


def retire(token: str) -> None:
    with _lock:
        _live.discard(token)


def owner_gone(token: object) -> bool:
    """Whether a claim's owner is known to be gone: an attempt of this very process that ended.
    An owner elsewhere cannot be told apart from a slow one, so it is waited for."""
    text = str(token or "")
    host, _, _ = text.rpartition(":")
    with _lock:
        return host == _HOST and text not in _live


class Ledger:
    """The ledger under one prefix of a destination (`{prefix}/_ledger/`)."""

    def __init__(self, destination: S3Destination, prefix: str) -> None:
        self.destination = destination
        self.prefix = prefix
        self.root = join_key_parts(prefix, "_ledger")

    def path(self, scope: str, key: str) -> str:
        return join_key_parts(self.root, scope, f"{key}.json")

    def open_path(self, run: str, scope: str, key: str) -> str:
        return join_key_parts(self.root, "open", run, scope, key)

    def read(self, path: str) -> tuple[dict[str, Any], str] | None:
        """A record and its ETag, or None when there is none."""
        client = self.destination.get_client()
        try:
            obj = client.get_object(Bucket=self.destination.bucket, Key=path)
        except client.exceptions.NoSuchKey:
            return None
        value = json.loads(obj["Body"].read())
        return (value if isinstance(value, dict) else {}), str(obj["ETag"])

    def write(self, path: str, record: Mapping[str, Any], *, etag: str | None) -> str | None:
        """Write `record` only if `path` is absent (`etag` None) or unchanged since `etag` was
        read; the new ETag, or None when another writer got there first."""
        from botocore.exceptions import ClientError

        body = json.dumps({**record, "nonce": uuid.uuid4().hex}, sort_keys=True).encode()
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        try:
            answer = self.destination.get_client().put_object(
                Bucket=self.destination.bucket, Key=path, Body=body,
                ContentType="application/json", **condition,  # type: ignore[arg-type]
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412) or error.get("Code") in (
                    "PreconditionFailed", "ConditionalRequestConflict"):
                return None
            raise
        return str(answer["ETag"])

    def mark_open(self, run: str, scope: str, key: str) -> None:
        self.mark_open_soon(run, scope, key).result()

    def mark_open_soon(self, run: str, scope: str, key: str) -> Future[None]:
        """Start writing the run's open pointer to a shared record; `.result()` waits for it
        (and raises what the write raised). After any earlier change of the same pointer."""
        return _in_order(self._pointer_id(run, scope, key), lambda: self._put_pointer(
            run, scope, key))

    def close(self, run: str, scope: str, key: str) -> None:
        """Delete the run's own open pointer (never another run's)."""
        self.close_soon(run, scope, key).result()

    def close_soon(self, run: str, scope: str, key: str) -> Future[None]:
        """`close` off the caller's path: a pointer left behind only makes the run's hooks
        read a record that shows its prediction ended. A later `mark_open_soon` of the same
        pointer waits for it, so a re-claimed item is never left without its pointer."""
        return _in_order(self._pointer_id(run, scope, key), lambda: self._delete_pointer(
            run, scope, key))

    def _pointer_id(self, run: str, scope: str, key: str) -> str:
        return f"{self.destination.bucket}/{self.open_path(run, scope, key)}"

    def _put_pointer(self, run: str, scope: str, key: str) -> None:
        self.destination.get_client().put_object(
            Bucket=self.destination.bucket, Key=self.open_path(run, scope, key),
            Body=self.path(scope, key).encode(), ContentType="text/plain",
        )

    def _delete_pointer(self, run: str, scope: str, key: str) -> None:
        self.destination.get_client().delete_object(
            Bucket=self.destination.bucket, Key=self.open_path(run, scope, key))

    def _keys(self, prefix: str) -> list[str]:
        client = self.destination.get_client()
        found: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.destination.bucket, Prefix=prefix + "/"):
            found += [str(obj["Key"]) for obj in page.get("Contents", [])]
        return found

    def records_of(self, flow_run_id: str) -> list[dict[str, Any]]:
        """Every record a flow run owns: its own scope, and the shared records it holds open."""
        paths = self._keys(join_key_parts(self.root, run_scope(flow_run_id)))
        client = self.destination.get_client()
        for pointer in self._keys(join_key_parts(self.root, "open", flow_run_id)):
            try:
                body = client.get_object(Bucket=self.destination.bucket, Key=pointer)["Body"]
            except client.exceptions.NoSuchKey:
                continue  # closed between the listing and the read: nothing left to cancel
            paths.append(body.read().decode())
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="ledger-read") as pool:
            reads = list(pool.map(self.read, paths))
        return [read[0] for read in reads
                if read is not None and read[0].get("run") == flow_run_id]


# Open pointers change off the callers' paths (the claim's PUT and the pointer's go out at once;
# a pointer's removal does not hold up its item), but the changes of one pointer stay in order.
_pointers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ledger-pointer")
_last_change: dict[str, Future[None]] = {}


def _in_order(pointer: str, change: Callable[[], None]) -> Future[None]:
    def run(before: Future[None] | None) -> None:
        if before is not None:
            with contextlib.suppress(Exception):  # its own caller sees its error
                before.result()
        change()

    with _lock:
        # FIFO: an earlier change is picked up before this one, so waiting on it cannot stall.
        future = _pointers.submit(run, _last_change.get(pointer))
        _last_change[pointer] = future
    future.add_done_callback(lambda done: _forget(pointer, done))
    return future


def _forget(pointer: str, done: Future[None]) -> None:
    with _lock:
        if _last_change.get(pointer) is done:
            del _last_change[pointer]


def flush_pointers(timeout: float = 30.0) -> None:
    """Wait for every open-pointer change queued so far (the end of a batch)."""
    with _lock:
        pending = list(_last_change.values())
    wait(pending, timeout=timeout)


@dataclass
class Claim:
    """One request's record, as this attempt last read or wrote it."""

    ledger: Ledger
    scope: str
    key: str
    run: str
    token: str = ""  # set by each `send`
    record: dict[str, Any] = field(default_factory=dict)
    etag: str | None = None
    stray_pointer: bool = False  # a lost claim's pointer, kept until the record shows whose


    @property
    def path(self) -> str:
        return self.ledger.path(self.scope, self.key)

    @property
    def shared(self) -> bool:
        return self.scope in (ITEMS, REQUESTS)

    @property
    def mine(self) -> bool:
        return self.record.get("owner") == self.token

    def refresh(self) -> dict[str, Any] | None:
        read = self.ledger.read(self.path)
        self.record, self.etag = read if read is not None else ({}, None)
        if self.stray_pointer and self.record.get("run") != self.run:
            self.stray_pointer = False  # another run's record: the pointer is not ours to keep
            self.ledger.close_soon(self.run, self.scope, self.key)
        return read[0] if read is not None else None

    def _put(self, record: dict[str, Any], *, replace: bool) -> bool:
        etag = self.ledger.write(self.path, record, etag=self.etag if replace else None)
        if etag is None:
            return False
        self.record, self.etag = record, etag
        return True

    def send(self, *, sent_at: datetime, match: Mapping[str, Any], window: float,
             replace: bool) -> bool:
        """Claim the request for a create about to be sent: a new record, or (`replace`) one
        judged free (released, ended unpaid, or lost) as last read. False: someone else won.

        Each claim is made under a fresh token, live in this process until the create's
        outcome is recorded (`retire`), so another attempt here can tell a live claim from the
        leftover of one that died."""
        self.token = new_token()
        history = list(self.record.get("history") or [])
        if self.record.get("prediction_id"):
            history.append(self.record["prediction_id"])
        # The run's pointer goes up beside the claim, not after it: a pointer to a record
        # another run won is ignored by this run's hooks (they read only records it owns).
        pointer = self.ledger.mark_open_soon(self.run, self.scope, self.key) \
            if self.shared else None
        won = self._put({
            "v": 1, "key": self.key, "scope": self.scope, "run": self.run, "owner": self.token,
            "state": SENDING, "sent_at": sent_at.isoformat(), "window": window,
            "match": dict(match), "prediction_id": None, "status": None, "history": history,
        }, replace=replace)
        if not won:
            retire(self.token)
        self.stray_pointer = not won and pointer is not None
        if pointer is not None and won:
            pointer.result()  # the create is not sent before the run's hooks can find it
        return won

    def created(self, prediction_id: str, status: PredictionStatus, *, adopt: bool = False
                ) -> bool:
        """Record the prediction this claim's create made (or, `adopt`, the one a lost create
        was found to have made). False: the record changed under us."""
        record = {**self.record, "state": CREATED, "prediction_id": prediction_id,
                  "status": PredictionStatus(status).value}
        if adopt:
            record.update(owner=self.token, run=self.run)
        won = self._put(record, replace=True)
        if won and adopt and self.shared:
            self.ledger.mark_open(self.run, self.scope, self.key)
        return won

    def mark_unknown(self) -> None:
        """This claim's create got no answer and its outcome could not be found out: say so in
        the record, so the next attempt looks for what it made at once."""
        if self.mine and self.record.get("state") == SENDING:
            self._put({**self.record, "unknown": True}, replace=True)

    def release(self) -> None:
        """The create failed and made nothing: the request is free for the next attempt."""
        if self.mine and self.record.get("state") == SENDING:
            self._put({**self.record, "state": RELEASED}, replace=True)
            if self.shared:
                self.ledger.close(self.run, self.scope, self.key)

    def end(self, prediction_id: str, status: PredictionStatus) -> None:
        """Record a prediction's terminal state; a run closes only its own open pointer.

        A batch item's record is left at `created`: its `result.json` is what "done" means,
        and a re-run reads the prediction anyway, so one write per item is saved."""
        for _ in range(0 if self.scope == ITEMS else 3):
            if self.record.get("prediction_id") != prediction_id:
                break
            if self._put({**self.record, "state": ENDED,
                          "status": PredictionStatus(status).value}, replace=True):
                break
            if self.refresh() is None:
                break
        if self.shared and self.record.get("run") == self.run:
            self.ledger.close_soon(self.run, self.scope, self.key)


# The claims of predictions this process created or attached to, by prediction id, so a wait
# that ends can record it with one conditional write.
_claims: dict[str, Claim] = {}


def track(prediction_id: str, claim: Claim) -> None:
    with _lock:
        _claims[prediction_id] = claim


def settle(prediction_id: str, status: PredictionStatus) -> None:
    """Record a prediction's terminal state, if this process holds its claim; failures are
    logged, never raised (the record then shows it open, and a hook's cancel is idempotent)."""
    if not PredictionStatus(status).is_terminal:
        return
    with _lock:
        claim = _claims.pop(prediction_id, None)
    if claim is None:
        return
    try:
        claim.end(prediction_id, status)
    except Exception as exc:
        logger.warning("could not update prediction ledger record %s: %s", claim.key,
                       type(exc).__name__)


def is_open(record: Mapping[str, Any]) -> bool:
    """A record whose prediction may still be running (or whose create may have made one)."""
    if record.get("state") == SENDING:
        return True
    if record.get("state") != CREATED:
        return False
    try:
        return not PredictionStatus(record.get("status")).is_terminal
    except ValueError:
        return True


__all__ = [
    "ITEMS",
    "REQUESTS",
    "Claim",
    "Ledger",
    "current_flow_run_id",
    "is_open",
    "request_identity",
    "request_key",
    "run_scope",
    "settle",
    "source_identity",
]
