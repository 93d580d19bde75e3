"""Hostile manifests through the real `generate_batch` flow (sandbox, moto's S3 server, Prefect's
test harness): each is refused as `ManifestInvalid` naming the line before anything is paid,
no error repeats the file's content, and `SEEDREAM_MANIFEST_ROOT` confines local paths.

Every manifest also carries a trap row whose edit source is a loopback server counting what it
is asked, so "internal requests" is measured, not assumed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from prefect_seedream import generate_batch
from prefect_seedream.blocks import ReplicateCredentials, S3Destination
from prefect_seedream.flows.batch.manifest import (
    MAX_PROMPT_CHARS,
    ManifestInvalid,
    ManifestUnreadable,
)
from prefect_seedream.flows.batch.manifest_text import MAX_LINE_CHARS

pytestmark = pytest.mark.usefixtures("prefect_harness")

PASSWD = ("root:x:0:0:root:/root:/bin/bash\n"
          "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
          "alice:x:1000:1000:Alice Secretname,,,:/home/alice:/bin/zsh\n")


class Trap:
    """A loopback HTTP server that only counts requests: no manifest row may make us call it."""

    def __init__(self) -> None:
        self.requests = 0
        trap = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                trap.requests += 1
                self.send_response(404)
                self.end_headers()

            do_HEAD = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/internal-admin"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trap() -> Iterator[Trap]:
    server = Trap()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def credentials(seedream_sandbox: Any) -> ReplicateCredentials:
    return ReplicateCredentials(api_token=SecretStr(seedream_sandbox.api_token),
                                base_url=seedream_sandbox.base_url)


@pytest.fixture
def destination(s3_endpoint: str, bucket: str) -> S3Destination:
    return S3Destination(
        bucket=bucket, prefix="cat", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key=SecretStr("testing"),
    )


def outside_writes(s3_client: Any, bucket: str, allowed: set[str] | None = None) -> int:
    """Objects in the bucket outside the destination's prefix `cat/` (or put there by the test)."""
    listing = s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return sum(1 for o in listing
               if not o["Key"].startswith("cat/") and o["Key"] not in (allowed or set()))


def refused(manifest: str, credentials: Any, destination: Any,
            kind: type[ManifestInvalid] = ManifestInvalid) -> ManifestInvalid:
    with pytest.raises(kind) as info:
        generate_batch(manifest, credentials=credentials, destination=destination)
    return info.value


def trap_row(trap: Trap, **extra: Any) -> dict[str, Any]:
    return {"instruction": "warmer", "images": [trap.url], **extra}


# --- CSV quoting -------------------------------------------------------------------------------

def test_an_unterminated_csv_quote_names_its_line_and_swallows_nothing(
    tmp_path: Path, credentials: Any, destination: Any, seedream_sandbox: Any, s3_client: Any,
    trap: Trap, record_hostile: Any,
) -> None:
    rows = [f"row {i} of the catalogue,,,1K" for i in range(3, 500)]
    rows[100] = f",warmer,{trap.url},1K"
    manifest = tmp_path / "week.csv"
    manifest.write_text("prompt,instruction,images,size\n"
                        '"a lighthouse, at dusk,,,1K\n' + "\n".join(rows) + "\n")
    error = refused(str(manifest), credentials, destination)
    assert error.problems == ["line 2: a quoted cell starts on this line and is never closed "
                              "(a stray '\"'?); the rows after it were not checked"]
    assert "row 3 of the catalogue" not in str(error)
    created = seedream_sandbox.counters()["creates"]
    assert created == 0 and trap.requests == 0
    record_hostile("a CSV with an unterminated quote on line 2 of 500",
                   "ManifestInvalid: `line 2: a quoted cell ... is never closed`; no item is "
                   "built from the rest of the file", created=created,
                   outside_writes=outside_writes(s3_client, destination.bucket),
                   internal_requests=trap.requests)


def test_a_bad_quote_and_an_overlong_csv_record_are_reported_per_line(
    tmp_path: Path, credentials: Any, destination: Any, seedream_sandbox: Any,
) -> None:
    record = '"' + "x" * (MAX_LINE_CHARS + 10) + '\nstill the same cell",1K\n'
    long = tmp_path / "long.csv"
    long.write_text("prompt,size\nfine,1K\n" + record + "fine too,1K\n")
    assert refused(str(long), credentials, destination).problems == [
        f"line 3: the row is {len(record):,} characters long (with any quoted line "
        f"breaks); a row may have at most {MAX_LINE_CHARS:,}"]
    stray = tmp_path / "stray.csv"
    stray.write_text('prompt,size\nfine,1K\n"half "quoted",1K\nfine too,1K\n')
    assert [p.split(":")[0] for p in refused(str(stray), credentials, destination).problems] == [
        "line 3"]
    assert seedream_sandbox.counters()["creates"] == 0


# --- bytes, nesting, numbers, sizes ------------------------------------------------------------

@pytest.mark.parametrize("where", ["local", "s3"])
def test_non_utf8_bytes_are_refused_with_their_line(
    where: str, tmp_path: Path, credentials: Any, destination: Any, seedream_sandbox: Any,
    s3_client: Any, trap: Trap, record_hostile: Any,
) -> None:
    data = (json.dumps({"prompt": "a fox", "size": "1K"}) + "\n"
            + json.dumps(trap_row(trap)) + "\n").encode() + b'{"prompt": "caf\xe9 au lait"}\n'
    if where == "local":
        path = tmp_path / "latin1.jsonl"
        path.write_bytes(data)
        manifest = str(path)
    else:
        s3_client.put_object(Bucket=destination.bucket, Key="cat/manifests/latin1.jsonl",
                             Body=data)
        manifest = "manifests/latin1.jsonl"
    error = refused(manifest, credentials, destination, ManifestUnreadable)
    assert isinstance(error, ManifestInvalid)
    assert "not UTF-8 text (line 3, byte " in error.problems[0]
    assert "caf" not in str(error)
    created = seedream_sandbox.counters()["creates"]
    assert created == 0 and trap.requests == 0
    if where == "s3":
        record_hostile("a manifest with non-UTF-8 bytes (line 3 of a JSONL in S3)",
                       "ManifestInvalid (`ManifestUnreadable`): `not UTF-8 text (line 3, byte "
                       "N)`; no UnicodeDecodeError", created=created,
                       outside_writes=outside_writes(s3_client, destination.bucket),
                       internal_requests=trap.requests)
    else:
        record_hostile("a local manifest with non-UTF-8 bytes on line 3",
                       "ManifestInvalid (`ManifestUnreadable`): `not UTF-8 text (line 3, ...)`",
                       created=created,
                       outside_writes=outside_writes(s3_client, destination.bucket),
                       internal_requests=trap.requests)


def test_nesting_bombs_are_refused_without_recursion(
    tmp_path: Path, credentials: Any, destination: Any, seedream_sandbox: Any, s3_client: Any,
    trap: Trap, record_hostile: Any,
) -> None:
    cases = {
        "bomb.json": "[" * 100_000,                                   # past the line cap
        "deep.jsonl": json.dumps(trap_row(trap)) + "\n" + "[" * 60_000 + "\n",  # under it
        "cell.csv": f"instruction,images\nwarmer,{'[' * 50_000}\nwarmer,{trap.url}\n",
    }
    expected = {
        "bomb.json": [f"line 1: 100,000 characters long; a line may have at most "
                      f"{MAX_LINE_CHARS:,}"],
        "deep.jsonl": ["line 2: nested more than 4 levels deep"],
        "cell.csv": ["line 2: images is not a JSON list (nested more than 4 levels deep)"],
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        error = refused(str(tmp_path / name), credentials, destination)
        assert error.problems == expected[name], name
    created = seedream_sandbox.counters()["creates"]
    # The CSV's trap row is valid and its source would be fetched, but the manifest is refused
    # as a whole first.
    assert created == 0 and trap.requests == 0
    record_hostile('`"[" * 100000` as a JSON/JSONL manifest (and 60,000 deep, and in a CSV cell)',
                   "ManifestInvalid: `line 1: 100,000 characters long` / `nested more than 4 "
                   "levels deep`; no RecursionError", created=created,
                   outside_writes=outside_writes(s3_client, destination.bucket),
                   internal_requests=trap.requests)


def test_a_5000_digit_number_is_a_clear_per_field_error(
    tmp_path: Path, credentials: Any, destination: Any, seedream_sandbox: Any, s3_client: Any,
    trap: Trap, record_hostile: Any,
) -> None:
    digits = "9" * 5000
    jsonl = tmp_path / "num.jsonl"
    jsonl.write_text(json.dumps(trap_row(trap)) + "\n"
                     + '{"prompt": "a fox", "max_images": ' + digits + "}\n"
                     + '{"prompt": "a fox", "size": "custom", "width": 1.' + digits
                     + ', "height": -' + digits + "}\n")
    assert refused(str(jsonl), credentials, destination).problems == [
        "line 2: max_images is a 5000-digit number; it must be 1..15",
        "line 3: width is a 5002-digit number; it must be 1024..4096",  # counted as written
        "line 3: height is a 5000-digit number; it must be 1024..4096",
    ]
    csv = tmp_path / "num.csv"
    csv.write_text(f"prompt,max_images\na fox,{digits}\na fox,-{digits}\n")
    error = refused(str(csv), credentials, destination)
    assert error.problems == ["line 2: max_images is a 5000-digit number; it must be 1..15",
                              "line 3: max_images is a 5000-digit number; it must be 1..15"]
    assert "JSON list" not in str(error) and "999" not in str(error)
    created = seedream_sandbox.counters()["creates"]
    assert created == 0 and trap.requests == 0
    record_hostile("a 5000-digit `max_images` (JSONL and CSV)",
                   "ManifestInvalid: `line 2: max_images is a 5000-digit number; it must be "
                   "1..15`", created=created,
                   outside_writes=outside_writes(s3_client, destination.bucket),
                   internal_requests=trap.requests)


def test_oversized_prompts_and_lines_are_reported_per_line(
    tmp_path: Path, credentials: Any, destination: Any, seedream_sandbox: Any, s3_client: Any,
    trap: Trap, record_hostile: Any,
) -> None:
    manifest = tmp_path / "big.jsonl"
    lines = [
        json.dumps({"prompt": "p" * MAX_PROMPT_CHARS, "size": "1K"}),       # at the cap: fine
        json.dumps({"prompt": "p" * (MAX_PROMPT_CHARS + 1), "size": "1K"}),
        json.dumps(trap_row(trap, instruction="i" * (MAX_PROMPT_CHARS + 5))),
        json.dumps({"prompt": "a fox", "id": "x" * MAX_LINE_CHARS}),
    ]
    manifest.write_text("\n".join(lines) + "\n")
    error = refused(str(manifest), credentials, destination)
    assert error.problems == [
        f"line 2: prompt has {MAX_PROMPT_CHARS + 1:,} characters; at most "
        f"{MAX_PROMPT_CHARS:,} are accepted",
        f"line 3: instruction has {MAX_PROMPT_CHARS + 5:,} characters; at most "
        f"{MAX_PROMPT_CHARS:,} are accepted",
        f"line 4: {len(lines[3]):,} characters long; a line may have at most "
        f"{MAX_LINE_CHARS:,}",
    ]
    assert len(str(error)) < 2_000  # nothing of the prompts is repeated
    created = seedream_sandbox.counters()["creates"]
    assert created == 0 and trap.requests == 0
    record_hostile(f"a prompt of {MAX_PROMPT_CHARS + 1:,} characters; a line over "
                   f"{MAX_LINE_CHARS:,}",
                   "ManifestInvalid, one problem per line, naming the field and the cap",
                   created=created, outside_writes=outside_writes(s3_client, destination.bucket),
                   internal_requests=trap.requests)


# --- no echo of the file's content -------------------------------------------------------------

def test_errors_never_echo_the_content_of_the_file_named(
    tmp_path: Path, credentials: Any, destination: Any, seedream_sandbox: Any, s3_client: Any,
    trap: Trap, record_hostile: Any,
) -> None:
    passwd = tmp_path / "passwd.csv"
    passwd.write_text(PASSWD)
    error = refused(str(passwd), credentials, destination)
    assert error.problems == ["line 1: the header names none of the fields (id, prompt, "
                              "instruction, images, size, aspect_ratio, width, height, "
                              "max_images, enhance_prompt, model); is this a manifest?"]
    secrets = ["root", "/bin/bash", "daemon", "alice", "Secretname", "nologin", "x:0:0"]
    assert not [s for s in secrets if s in str(error).replace(str(passwd), "")]

    # A file that happens to have one known column: the others, and every value, stay unsaid.
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("hunter2,prompt,sizee\ns3cr3t-value,,1K\n")
    error = refused(str(mixed), credentials, destination)
    assert error.problems == [
        "line 1: column 1 is not a field (fields are id, prompt, instruction, images, size, "
        "aspect_ratio, width, height, max_images, enhance_prompt, model)",
        "line 1: column 3 is not a field (did you mean 'size'?)",
        "line 2: needs exactly one of 'prompt' (generate) or 'instruction' (edit, with "
        "'images')",
    ]
    assert "hunter2" not in str(error) and "s3cr3t" not in str(error)

    jsonl = tmp_path / "keys.jsonl"
    jsonl.write_text(json.dumps({"id": "private-id-1", "prompt": "a fox", "size": "1K"}) + "\n"
                     + json.dumps({"id": "private-id-1", "prompt": "a fox", "size": "2K"}) + "\n"
                     + json.dumps({"prompt": "a fox", "api_key": "AKIA-leak", "size": "9K"})
                     + "\n" + json.dumps(trap_row(trap)) + "\n")
    error = refused(str(jsonl), credentials, destination)
    assert error.problems[:2] == [
        "line 2: the same id as line 1; ids must be unique",
        "line 3: key #2 is not a field (fields are id, prompt, instruction, images, size, "
        "aspect_ratio, width, height, max_images, enhance_prompt, model)",
    ]
    assert all(s not in str(error) for s in ("private-id", "api_key", "AKIA", "9K"))
    created = seedream_sandbox.counters()["creates"]
    assert created == 0 and trap.requests == 0
    record_hostile("`manifest=/path/passwd.csv` (any CSV on the worker); unknown columns, keys "
                   "and duplicate ids holding secrets",
                   "ManifestInvalid naming lines, columns and our field names only: `line 1: "
                   "the header names none of the fields`; no cell, header or key is echoed",
                   created=created, outside_writes=outside_writes(s3_client, destination.bucket),
                   internal_requests=trap.requests)


# --- where a manifest is read from -------------------------------------------------------------

def test_manifest_root_confines_local_paths_and_bare_names_are_destination_keys(
    tmp_path: Path, credentials: Any, destination: Any, seedream_sandbox: Any, s3_client: Any,
    monkeypatch: pytest.MonkeyPatch, trap: Trap, record_hostile: Any,
) -> None:
    root, elsewhere = tmp_path / "manifests", tmp_path / "private"
    root.mkdir()
    elsewhere.mkdir()
    (elsewhere / "passwd.csv").write_text(PASSWD)
    (elsewhere / "m.jsonl").write_text(json.dumps(trap_row(trap)) + "\n")
    (root / "link.jsonl").symlink_to(elsewhere / "m.jsonl")
    monkeypatch.setenv("SEEDREAM_MANIFEST_ROOT", str(root))

    outside = {str(elsewhere / "passwd.csv"): "exists", str(elsewhere / "missing.csv"): "missing",
               "../private/m.jsonl": "exists", "./../private/m.jsonl": "exists",
               "./link.jsonl": "a symlink out"}
    reasons = set()
    for name in outside:
        error = refused(name, credentials, destination, ManifestUnreadable)
        assert isinstance(error, ManifestUnreadable)
        reasons.add(error.reason)
        assert "root:" not in str(error)
    # The same answer whether or not the file exists: no existence oracle.
    assert reasons == {f"outside SEEDREAM_MANIFEST_ROOT ({root.resolve()}); a local manifest "
                       "must be inside it"}
    hostile_created = seedream_sandbox.counters()["creates"]

    # A bare name is a key under the destination, even with a local file of that name around.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "manifests" / "nightly.jsonl").write_text(json.dumps(trap_row(trap)) + "\n")
    s3_client.put_object(Bucket=destination.bucket, Key="cat/manifests/nightly.jsonl",
                         Body=json.dumps({"id": "from-s3", "prompt": "a fox", "size": "1K"}))
    result = generate_batch("manifests/nightly.jsonl", credentials=credentials,
                            destination=destination)
    assert [item.id for item in result.items] == ["from-s3"]
    # An explicit local path inside the root is read (relative to the root, not the cwd).
    (root / "local.jsonl").write_text(json.dumps({"id": "local", "prompt": "an owl",
                                                  "size": "1K"}) + "\n")
    result = generate_batch("./local.jsonl", credentials=credentials, destination=destination)
    assert [item.id for item in result.items] == ["local"]

    assert seedream_sandbox.counters()["creates"] == 2  # only the two legitimate rows
    assert hostile_created == 0 and trap.requests == 0
    record_hostile("with SEEDREAM_MANIFEST_ROOT set: an absolute path, `../`, a symlink out of the "
                   "root (existing or not); a bare name shadowed by a local file",
                   "ManifestUnreadable `outside SEEDREAM_MANIFEST_ROOT`, the same whether or not "
                   "the file exists; a bare name is read from the destination's prefix only",
                   created=hostile_created,
                   outside_writes=outside_writes(s3_client, destination.bucket),
                   internal_requests=trap.requests)


def test_without_a_root_resolution_is_still_explicit_for_path_forms(
    tmp_path: Path, credentials: Any, destination: Any, seedream_sandbox: Any,
    monkeypatch: pytest.MonkeyPatch, s3_client: Any,
) -> None:
    monkeypatch.delenv("SEEDREAM_MANIFEST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    s3_client.put_object(Bucket=destination.bucket, Key="cat/m.jsonl",
                         Body=json.dumps({"prompt": "a fox", "size": "1K"}).encode())
    # Written as a path: never looked up in S3, even though the key exists there.
    error = refused("./m.jsonl", credentials, destination, ManifestUnreadable)
    assert isinstance(error, ManifestUnreadable) and error.reason == "no such file"
    # A bare name with no local file: the key.
    result = generate_batch("m.jsonl", credentials=credentials, destination=destination)
    assert len(result.items) == 1
    assert seedream_sandbox.counters()["creates"] == 1
