"""Batch manifests: read JSONL, CSV or a list of dicts, check every row.

A generate row has `prompt` plus the options of `generate_images`; an edit row has `instruction`
and `images` plus the options of `edit_image`; either may carry an `id`. Every problem in every
row is collected and raised at once, with line numbers, before anything is submitted.

A manifest is a local file, an `s3://` URI, or a key relative to the destination
(`manifests/nightly.jsonl`: no scheme, not absolute, and no local file of that name), read from
the destination's bucket under its prefix. A manifest that cannot be read at all raises
`ManifestUnreadable`. Pure code, apart from reading the manifest itself.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from prefect_seedream.tasks.errors import InvalidInput
from prefect_seedream.tasks.seedream_input import SeedreamInput, describe_errors

if TYPE_CHECKING:
    from prefect_seedream.blocks.s3_destination import S3Destination

Kind = Literal["generate", "edit"]
OPTIONS = ("size", "aspect_ratio", "width", "height", "max_images", "enhance_prompt")
_INTS = frozenset({"width", "height", "max_images"})
_KNOWN = frozenset({"id", "prompt", "instruction", "images", *OPTIONS})
_MAX_PROBLEMS_SHOWN = 50


class _Unreadable(str):
    """A row that could not even be parsed; the text says why."""


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


@dataclass(frozen=True)
class BatchItem:
    """One checked manifest row."""

    line: int
    id: str
    kind: Kind
    prompt: str
    images: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    row: Mapping[str, Any] = field(default_factory=dict)  # as read, for shard manifests

    @property
    def max_images(self) -> int:
        return int(self.options.get("max_images") or 1)

    def request(self, image_urls: list[str] | tuple[str, ...] = ()) -> SeedreamInput:
        """The Seedream input, with `image_urls` standing in for the sources (edits)."""
        default_ratio = "match_input_image" if self.kind == "edit" else "1:1"
        size = self.options.get("size") or "2K"
        fields: dict[str, Any] = {
            "prompt": self.prompt, "size": size,
            "aspect_ratio": None if size == "custom" else (self.options.get("aspect_ratio")
                                                           or default_ratio),
            "width": self.options.get("width"), "height": self.options.get("height"),
            "max_images": self.max_images, "enhance_prompt": self.options.get("enhance_prompt"),
            "sequential_image_generation": "auto" if self.max_images > 1 else "disabled",
        }
        if image_urls:
            fields["image_input"] = list(image_urls)
        return SeedreamInput(**{k: v for k, v in fields.items() if v is not None})


def _coerce(name: str, value: Any) -> Any:
    """CSV cells are strings: turn numbers, booleans and image lists into their types."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if name in _INTS:
        return int(text) if text.lstrip("-").isdigit() else text
    if name == "enhance_prompt":
        lowered = text.lower()
        return {"true": True, "1": True, "yes": True, "false": False, "0": False,
                "no": False}.get(lowered, text)
    if name == "images":
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split("|") if part.strip()]
    return text


def _check_row(line: int, raw: Any) -> tuple[BatchItem | None, list[str]]:
    where = f"line {line}"
    if isinstance(raw, _Unreadable):
        return None, [f"{where}: {raw}"]
    if not isinstance(raw, Mapping):
        return None, [f"{where}: expected an object with 'prompt' or 'instruction'"]
    row = {str(k).strip(): v for k, v in raw.items() if v is not None and v != ""}
    problems = [f"{where}: unknown field {k!r}" for k in sorted(set(row) - _KNOWN)]
    try:
        clean = {k: _coerce(k, v) for k, v in row.items() if k in _KNOWN}
    except ValueError as exc:
        return None, [*problems, f"{where}: images is not a JSON list ({exc})"]
    has_prompt, has_instruction = "prompt" in clean, "instruction" in clean
    if has_prompt == has_instruction:
        problems.append(f"{where}: needs exactly one of 'prompt' (generate) or 'instruction' "
                        "(edit, with 'images')")
        return None, problems
    kind: Kind = "edit" if has_instruction else "generate"
    images = clean.get("images", [])
    if kind == "generate" and images:
        problems.append(f"{where}: 'images' belongs to edit rows; use 'instruction' to edit")
    if kind == "edit":
        if not images or not isinstance(images, list) or not all(
                isinstance(s, str) for s in images):
            problems.append(f"{where}: an edit needs 'images', a list of s3:// URIs or https URLs")
            images = []
        for i, source in enumerate(images):
            if not source.startswith(("s3://", "https://", "http://")):
                problems.append(f"{where}: images[{i}] must be an s3:// URI or an https URL")
    text = clean.get("prompt", clean.get("instruction"))
    item = BatchItem(
        line=line, id=str(clean.get("id", f"line-{line}")), kind=kind,
        prompt=text if isinstance(text, str) else "", images=tuple(images),
        options={k: clean[k] for k in OPTIONS if k in clean}, row=dict(raw),
    )
    try:
        if kind == "generate" or images:  # an edit without images is already reported
            item.request([f"https://source.invalid/{i}" for i in range(len(images))])
    except ValidationError as exc:
        problems.append(f"{where}: {describe_errors(exc)}")
    except TypeError as exc:
        problems.append(f"{where}: {exc}")
    return (None if problems else item), problems


def check_rows(rows: Iterable[tuple[int, Any]] | list[dict[str, Any]]) -> list[BatchItem]:
    """Check every row; return the items, or raise `ManifestInvalid` naming every problem.

    `rows` are `(line, row)` pairs, or plain dicts (numbered from 1).
    """
    items: list[BatchItem] = []
    problems: list[str] = []
    seen_ids: dict[str, int] = {}
    for number, entry in enumerate(rows, start=1):
        line, raw = entry if isinstance(entry, tuple) else (number, entry)
        item, found = _check_row(line, raw)
        problems.extend(found)
        if item is None:
            continue
        if item.id in seen_ids:
            problems.append(f"line {line}: id {item.id!r} is already used on line "
                            f"{seen_ids[item.id]}")
            continue
        seen_ids[item.id] = line
        items.append(item)
    if problems:
        raise ManifestInvalid(problems)
    if not items:
        raise ManifestInvalid(["the manifest has no rows"])
    return items


def _jsonl_rows(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    for line, text in enumerate(lines, start=1):
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            yield line, json.loads(stripped)
        except json.JSONDecodeError as exc:
            yield line, _Unreadable(f"not valid JSON ({exc.msg})")


def _csv_rows(text: io.TextIOBase | Iterable[str]) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(text)
    for row in reader:
        extra = row.pop(None, None)
        if extra:
            yield reader.line_num, _Unreadable(f"has {len(extra)} more cell(s) than the header")
        else:
            yield reader.line_num, row


def parse_text(text: str, *, name: str) -> list[tuple[int, Any]]:
    """Rows of a manifest's text: CSV when `name` ends in .csv, else JSONL."""
    if name.lower().endswith(".csv"):
        return list(_csv_rows(io.StringIO(text, newline="")))
    return list(_jsonl_rows(text.splitlines()))


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
        raise ManifestUnreadable(name, f"not UTF-8 text (byte {exc.start}); save it as UTF-8 "
                                       "JSONL or CSV") from exc


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


def read_manifest_text(manifest: str, destination: S3Destination | None = None) -> str:
    """The text of a manifest named by a local path, an `s3://` URI or a destination key.

    A name with no scheme that is not absolute and names no local file is a key relative to
    `destination`: `manifests/nightly.jsonl` is read from `s3://{bucket}/{prefix}/manifests/...`.

    Raises:
        ManifestUnreadable: The manifest cannot be read: missing, refused, or not UTF-8 text.
    """
    if manifest.startswith("s3://"):
        return _read_s3(manifest, destination)
    path = Path(manifest).expanduser()
    if path.is_file():
        try:
            return _decode(path.read_bytes(), manifest)
        except OSError as exc:
            raise ManifestUnreadable(manifest, _reason(exc)) from exc
    if "://" in manifest:
        raise ManifestUnreadable(manifest, "only a local file, an s3:// URI or a key relative "
                                           "to the destination can be read")
    if path.exists():
        raise ManifestUnreadable(manifest, "a directory, not a file")
    if destination is None or path.is_absolute() or manifest.startswith((".", "~")):
        raise ManifestUnreadable(manifest, "no such file")
    uri = destination.uri(destination.join_key(manifest))
    return _read_s3(uri, destination, hint=f" (no local file {manifest} either; a manifest name "
                                           "without a scheme is a key under the destination's "
                                           "prefix)")


def load_manifest(
    manifest: str | list[dict[str, Any]], destination: S3Destination | None = None
) -> list[BatchItem]:
    """Read and check a manifest: a local path, an `s3://` URI, a key relative to the
    destination (see `read_manifest_text`), or a list of dicts.

    Raises:
        ManifestUnreadable: The manifest cannot be read at all.
        ManifestInvalid: Every invalid row, with line numbers.
    """
    if isinstance(manifest, list):
        return check_rows(manifest)
    rows = parse_text(read_manifest_text(manifest, destination), name=manifest)
    return check_rows(rows)


def to_jsonl(items: Iterable[BatchItem]) -> str:
    """The items as a JSONL manifest (their rows as read), e.g. one shard of a batch."""
    return "".join(json.dumps(dict(item.row), sort_keys=True) + "\n" for item in items)


__all__ = ["BatchItem", "ManifestInvalid", "ManifestUnreadable", "check_rows", "load_manifest",
           "parse_text", "read_manifest_text", "to_jsonl"]
