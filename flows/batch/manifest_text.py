"""From a manifest's name to its rows: where it is read from, and strict JSONL and CSV parsing.

A manifest may come from anyone who can start a run, so parsing is strict: a CSV quote that
is never closed, bytes that are not UTF-8, nesting (`[[[[...`), numbers of absurd length and
lines (JSONL) or records (CSV) over `MAX_LINE_CHARS` are each reported with their line. No
message repeats the file's content: a problem names the line, one of our fields or a column,
never a value or an unknown field's name, so pointing a run at `/etc/passwd.csv` tells nothing
about that file. `prefect_seedream.flows.batch.manifest` checks the rows.

Where a manifest is read from (`read_manifest_text`): an `s3://` URI; a local path written as
one (absolute, `./`, `../`, `~`); or a bare name such as `manifests/nightly.jsonl`, a key under
the destination's prefix (without `SEEDREAM_MANIFEST_ROOT`, a local file of that name wins).
With `SEEDREAM_MANIFEST_ROOT` set (deployments), local paths must lie inside that directory.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect_seedream.tasks.errors import InvalidInput
from prefect_seedream.tasks.seedream_settings import get_settings

if TYPE_CHECKING:
    from prefect_seedream.blocks.s3_destination import S3Destination

OPTIONS = ("size", "aspect_ratio", "width", "height", "max_images", "enhance_prompt")
FIELDS = ("id", "prompt", "instruction", "images", *OPTIONS, "model")
KNOWN_FIELDS = frozenset(FIELDS)
#: Longest JSONL line or CSV record (which may span lines inside quotes), in characters: eight
#: times the longest prompt (`manifest.MAX_PROMPT_CHARS`), with room for ten source URLs.
MAX_LINE_CHARS = 65_536
#: Deepest nesting of a JSON row: an object holding a list (`images`); more is refused unparsed.
MAX_DEPTH = 4
#: Most digits of a number in a row (Seedream's have at most four); longer ones are refused.
MAX_DIGITS = 12
_MAX_PROBLEMS_SHOWN = 50
_JSON_NESTING = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')


class Unparsed(str):
    """A row that could not even be parsed; the text says why."""


class FieldProblem(ValueError):
    """A row or one of its fields cannot be used; the text names the field, never its value."""


class Huge:
    """A JSON number too long to be one of Seedream's: only its length is kept."""

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"<a {self.digits}-digit number>"


class ManifestInvalid(InvalidInput):
    """One or more manifest rows are invalid; `problems` lists each as `line N: ...`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(self._describe(problems))
        self.problems = problems

    def _describe(self, problems: list[str]) -> str:
        shown = problems[:_MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        return (f"{len(problems)} invalid manifest row(s); nothing was submitted. Fix them "
                "and run again:\n  " + "\n  ".join(shown)
                + (f"\n  ... and {more} more" if more else ""))


class ManifestUnreadable(ManifestInvalid):
    """The manifest itself cannot be read (missing, refused, not text); no row was looked at.

    `name` is the file or `s3://` URI tried, `reason` what went wrong; `problems` holds the one
    line `cannot read the manifest {name}: {reason}`.
    """

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason
        super().__init__([f"cannot read the manifest {name}: {reason}"])

    def _describe(self, problems: list[str]) -> str:
        return (f"{problems[0].rstrip('.')}. Nothing was submitted; check the path or URI "
                "(and, for S3, the destination's bucket, prefix and credentials) and run again.")


def parse_json(text: str) -> Any:
    """`json.loads` for untrusted text: nesting and number length are checked first.

    Raises:
        FieldProblem: Why the text is not a usable row (never quoting the text).
    """
    depth = 0
    for match in _JSON_NESTING.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise FieldProblem(f"nested more than {MAX_DEPTH} levels deep")
        elif token in ("]", "}"):
            depth -= 1
    try:
        return json.loads(text, parse_int=_number(int, MAX_DIGITS + 1),
                          parse_float=_number(float, 32))
    except json.JSONDecodeError as exc:
        raise FieldProblem(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError):
        raise FieldProblem("not valid JSON") from None


def _number(kind: type[int] | type[float], longest: int) -> Any:
    """A `parse_int`/`parse_float` hook: `Huge` past `longest` characters (never `int()` on
    5000 digits, which raises past Python's 4300-digit limit)."""
    def parse(text: str) -> Any:
        return Huge(text) if len(text) > longest else kind(text)
    return parse


def unknown_field(position: str, name: str) -> str:
    """`key #2 is not a field (did you mean 'size'?)`: the suggestion is ours; the name, which
    may be anything the file holds, is never shown."""
    close = difflib.get_close_matches(name.strip().lower(), FIELDS, n=1, cutoff=0.75)
    hint = f"did you mean {close[0]!r}?" if close else "fields are " + ", ".join(FIELDS)
    return f"{position} is not a field ({hint})"


def _jsonl_rows(text: str) -> Iterator[tuple[int, Any]]:
    # Lines end at \n, \r\n or \r only: a JSON string may hold U+2028 and friends.
    for line, raw in enumerate(io.StringIO(text), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if len(stripped) > MAX_LINE_CHARS:
            yield line, Unparsed(f"{len(stripped):,} characters long; a line may have at most "
                                 f"{MAX_LINE_CHARS:,}")
            continue
        try:
            yield line, parse_json(stripped)
        except FieldProblem as exc:
            yield line, Unparsed(str(exc))


class _CountedLines:
    """The text's lines for `csv.reader`, counting the characters of the current record."""

    def __init__(self, text: str) -> None:
        self._lines = iter(io.StringIO(text, newline=""))
        self.chars = 0

    def __iter__(self) -> _CountedLines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.chars += len(line)
        return line


def _csv_error(exc: csv.Error) -> str:
    text = str(exc)
    if "unexpected end of data" in text:
        return ('a quoted cell starts on this line and is never closed (a stray \'"\'?); '
                "the rows after it were not checked")
    if "field limit" in text:
        return (f"a cell runs past {csv.field_size_limit():,} characters (a quote never "
                "closed?); the rows after it were not checked")
    if "expected after" in text:
        return ('a quote inside a quoted cell must be doubled (""); the rows after it were '
                "not checked")
    return "not valid CSV; the rows after it were not checked"


def _csv_header(cells: list[str]) -> tuple[list[str | None], list[str]]:
    """The header's fields (None for a column that is not one) and its problems (line 1)."""
    names: list[str | None] = []
    problems: list[str] = []
    for column, cell in enumerate(cells, start=1):
        name = cell.strip().lstrip("\ufeff")
        if name not in KNOWN_FIELDS:
            problems.append(unknown_field(f"column {column}", name))
            names.append(None)
        elif name in names:
            problems.append(f"column {column} repeats the field {name!r}")
            names.append(None)
        else:
            names.append(name)
    return names, problems


def _csv_rows(text: str) -> Iterator[tuple[int, Any]]:
    lines = _CountedLines(text)
    reader = csv.reader(lines, strict=True)
    header: list[str | None] | None = None
    while True:
        start, lines.chars = reader.line_num + 1, 0
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # quoting: where the record starts is what the user can fix
            yield start, Unparsed(_csv_error(exc))
            return
        if lines.chars > MAX_LINE_CHARS:
            yield start, Unparsed(f"the row is {lines.chars:,} characters long (with any "
                                  f"quoted line breaks); a row may have at most {MAX_LINE_CHARS:,}")
        elif header is None:
            header, problems = _csv_header(cells)
            if not any(header):
                yield start, Unparsed("the header names none of the fields ("
                                         + ", ".join(FIELDS) + "); is this a manifest?")
                return
            yield from ((start, Unparsed(problem)) for problem in problems)
        elif len(cells) > len(header):
            yield start, Unparsed(f"has {len(cells) - len(header)} more cell(s) than the "
                                     "header")
        elif any(cell.strip() for cell in cells):  # a short row leaves its last fields empty
            yield start, {name: cell for name, cell in zip(header, cells, strict=False)
                          if name is not None}


def parse_text(text: str, *, name: str) -> list[tuple[int, Any]]:
    """Rows of a manifest's text: CSV when `name` ends in .csv, else JSONL."""
    if name.lower().endswith(".csv"):
        return list(_csv_rows(text))
    return list(_jsonl_rows(text))


def _reason(exc: Exception) -> str:
    """What went wrong: S3's own words when it answered (`NoSuchKey: ...`), else the error's."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    if isinstance(error, dict) and error.get("Code"):
        return f"{error['Code']}: {error.get('Message') or 'no message'}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestUnreadable(name, f"not UTF-8 text (line {line}, byte {exc.start}); save "
                                       "it as UTF-8 JSONL or CSV") from None


def _read_s3(uri: str, destination: S3Destination | None, *, hint: str = "") -> str:
    from prefect_seedream.blocks.s3_destination import parse_s3_uri

    if destination is None:
        raise ManifestUnreadable(uri, "an s3:// manifest needs a destination to read it")
    try:
        bucket, key = parse_s3_uri(uri)
        data = destination.get_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        raise ManifestUnreadable(uri, _reason(exc).rstrip(".") + hint) from exc
    return _decode(data, uri)


def _local_path(manifest: str, root: str | None) -> Path:
    """The file `manifest` names; with a root, resolved against it and refused outside it."""
    path = Path(manifest).expanduser()
    if root is None:
        return path
    base = Path(root).expanduser().resolve()
    full = (base / path).resolve()  # an absolute `path` stays itself; symlinks are followed
    if not full.is_relative_to(base):  # the same answer whether or not the file exists
        raise ManifestUnreadable(manifest, f"outside SEEDREAM_MANIFEST_ROOT ({base}); a local "
                                           "manifest must be inside it")
    return full


def read_manifest_text(manifest: str, destination: S3Destination | None = None) -> str:
    """The text of a manifest named by an `s3://` URI, a local path or a destination key.

    - `s3://bucket/key`: that object, read with the destination's client.
    - A local path written as one: absolute, or starting with `.` or `~`
      (`./week.csv`, `../m.jsonl`, `~/m.jsonl`). Never looked up in S3.
    - Any other name (`manifests/nightly.jsonl`): a key under the destination's prefix, read
      from `s3://{bucket}/{prefix}/manifests/...`. Without `SEEDREAM_MANIFEST_ROOT`, a local
      file of that name (relative to the working directory) is read instead if one exists.

    With `SEEDREAM_MANIFEST_ROOT` set (do set it for deployments), local paths are resolved
    against that directory and refused outside it, and a bare name is always a key.

    Raises:
        ManifestUnreadable: The manifest cannot be read: missing, refused, or not UTF-8 text.
    """
    if manifest.startswith("s3://"):
        return _read_s3(manifest, destination)
    if "://" in manifest:
        raise ManifestUnreadable(manifest, "only a local file, an s3:// URI or a key relative "
                                           "to the destination can be read")
    root = get_settings().manifest_root
    written_as_path = Path(manifest).is_absolute() or manifest.startswith((".", "~"))
    if not written_as_path and (root is not None or not Path(manifest).is_file()):
        if destination is None:
            raise ManifestUnreadable(manifest, "no such file" if root is None else
                                     "a name without ./ or / is a key under the destination, "
                                     "and there is none")
        hint = (" (with SEEDREAM_MANIFEST_ROOT set, a name without ./ or / is a key under the "
                "destination's prefix)" if root is not None else
                f" (no local file {manifest} either; a manifest name without a scheme is a key "
                "under the destination's prefix)")
        return _read_s3(destination.uri(destination.join_key(manifest)), destination, hint=hint)
    path = _local_path(manifest, root)
    if not path.exists():
        raise ManifestUnreadable(manifest, "no such file")
    if not path.is_file():
        raise ManifestUnreadable(manifest, "a directory, not a file" if path.is_dir() else
                                 "not a regular file")
    try:
        return _decode(path.read_bytes(), manifest)
    except OSError as exc:
        raise ManifestUnreadable(manifest, _reason(exc)) from exc


__all__ = ["FIELDS", "MAX_LINE_CHARS", "ManifestInvalid", "ManifestUnreadable", "parse_json",
           "parse_text", "read_manifest_text"]
