"""Batch manifests: read JSONL, CSV or a list of dicts, check every row, key every item.

A generate row has `prompt` plus the options of `generate_images`; an edit row has `instruction`
and `images` plus the options of `edit_image`; either may carry an `id`. Every problem in every
row is collected and raised at once, with line numbers, before anything is submitted.

The item key is what makes a batch resumable: a hash of the model and the normalised Seedream
input, with each source image replaced by the SHA-256 of its bytes (so a re-signed URL or a
renamed copy does not count as new, and a changed source does). Pure code, apart from reading
the manifest itself.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from tasks.errors import InvalidInput
from tasks.seedream_input import SeedreamInput, describe_errors

if TYPE_CHECKING:
    from blocks.s3_destination import S3Destination

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
        shown = problems[:_MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        message = (f"{len(problems)} invalid manifest row(s); nothing was submitted. Fix them "
                   "and run again:\n  " + "\n  ".join(shown)
                   + (f"\n  ... and {more} more" if more else ""))
        super().__init__(message)
        self.problems = problems


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


def item_key(model: str, item: BatchItem, source_digests: Mapping[str, str]) -> str:
    """The item's resumability key: 32 hex chars of SHA-256 over model + normalised input.

    Example:
        ```python
        from flows.batch_manifest import check_rows, item_key

        [a, b] = check_rows([{"prompt": "a fox", "size": "1K"},
                             {"prompt": "a fox", "size": "1K", "id": "other"}])
        assert item_key("m", a, {}) == item_key("m", b, {})  # the id is not part of the input
        ```
    """
    body = item.request().to_request() if item.kind == "generate" else (
        item.request([f"https://source.invalid/{i}" for i in range(len(item.images))]).to_request()
    )
    if item.kind == "edit":
        body["image_input"] = [source_digests[source] for source in item.images]
    basis = json.dumps({"model": model, "input": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


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


def load_manifest(
    manifest: str | list[dict[str, Any]], destination: S3Destination | None = None
) -> list[BatchItem]:
    """Read and check a manifest: a local path, an `s3://` URI, or a list of dicts.

    Raises:
        ManifestInvalid: Every invalid row, with line numbers; or the manifest cannot be read.
    """
    if isinstance(manifest, list):
        return check_rows(manifest)
    if manifest.startswith("s3://"):
        from blocks.s3_destination import parse_s3_uri

        if destination is None:
            raise ManifestInvalid([f"{manifest}: an s3:// manifest needs a destination to read it"])
        try:
            bucket, key = parse_s3_uri(manifest)
            body = destination.get_client().get_object(Bucket=bucket, Key=key)["Body"]
            text = body.read().decode("utf-8-sig")
        except Exception as exc:
            raise ManifestInvalid([f"cannot read {manifest} ({type(exc).__name__})"]) from exc
    else:
        path = Path(manifest).expanduser()
        if not path.is_file():
            raise ManifestInvalid([f"{manifest}: no such file"])
        text = path.read_text(encoding="utf-8-sig")
    rows = parse_text(text, name=manifest)
    return check_rows(rows)


def to_jsonl(items: Iterable[BatchItem]) -> str:
    """The items as a JSONL manifest (their rows as read), e.g. one shard of a batch."""
    return "".join(json.dumps(dict(item.row), sort_keys=True) + "\n" for item in items)


__all__ = ["BatchItem", "ManifestInvalid", "check_rows", "item_key", "load_manifest",
           "parse_text", "to_jsonl"]
