"""Batch manifests: check every row of a JSONL or CSV manifest, or of a list of dicts.

A generate row has `prompt` plus the options of `generate_images`; an edit row has `instruction`
and `images` plus the options of `edit_image`; either may carry an `id` and a `model`
(`owner/name[:version]`, else the batch's; its published schema is checked by
`flows.batch.models` before anything is submitted). Every problem in every
row is collected and raised at once, with line numbers, before anything is submitted: unknown
fields (never echoed, a close field name suggested), numbers of absurd length, a `prompt` or
`instruction` over `MAX_PROMPT_CHARS`, and whatever Seedream's own input model refuses.

Reading and parsing the text (where a manifest comes from, strict JSONL and CSV) is
`prefect_seedream.flows.batch.manifest_text`; a manifest that cannot be read at all raises
`ManifestUnreadable`. Pure code, apart from reading the manifest itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from prefect_seedream.flows.batch.manifest_text import (
    FIELDS,
    KNOWN_FIELDS,
    MAX_DIGITS,
    OPTIONS,
    FieldProblem,
    Huge,
    ManifestInvalid,
    ManifestUnreadable,
    Unparsed,
    parse_json,
    parse_text,
    read_manifest_text,
    unknown_field,
)
from prefect_seedream.tasks.model_schemas import MODEL_NAME
from prefect_seedream.tasks.seedream_input import (
    MAX_SIDE,
    MAX_TOTAL_IMAGES,
    MIN_SIDE,
    SeedreamInput,
    describe_errors,
)

if TYPE_CHECKING:
    from prefect_seedream.blocks.s3_destination import S3Destination

Kind = Literal["generate", "edit"]
_INTS = frozenset({"width", "height", "max_images"})
_RANGES = {"width": (MIN_SIDE, MAX_SIDE), "height": (MIN_SIDE, MAX_SIDE),
           "max_images": (1, MAX_TOTAL_IMAGES)}
#: Longest `prompt` or `instruction` of a row, in characters. Seedream's guidance is a few
#: hundred words; 8,000 characters leave ample room and stop a runaway CSV quote or a file
#: pasted into a cell.
MAX_PROMPT_CHARS = 8_000
_INTEGER = re.compile(r"-?[0-9]+")
_LINE = re.compile(r"line ([0-9]+):")


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
    model: str | None = None  # the row's own model; None: the batch's

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


def _huge(name: str, digits: int) -> FieldProblem:
    low, high = _RANGES.get(name, (None, None))
    expected = f"it must be {low}..{high}" if low is not None else "not a value Seedream takes"
    return FieldProblem(f"{name} is a {digits}-digit number; {expected}")


def _coerce(name: str, value: Any) -> Any:
    """CSV cells are strings: turn numbers, booleans and image lists into their types.

    Raises:
        FieldProblem: The value cannot be one of this field's (a 5000-digit number, say).
    """
    if isinstance(value, Huge):
        raise _huge(name, value.digits)
    if not isinstance(value, str):
        return value
    text = value.strip()
    if name in _INTS:
        if not _INTEGER.fullmatch(text):
            return text  # the model says what it expects
        if len(text.lstrip("-")) > MAX_DIGITS:
            raise _huge(name, len(text.lstrip("-")))
        return int(text)
    if name == "enhance_prompt":
        lowered = text.lower()
        return {"true": True, "1": True, "yes": True, "false": False, "0": False,
                "no": False}.get(lowered, text)
    if name == "images":
        if text.startswith("["):
            try:
                return parse_json(text)
            except FieldProblem as exc:
                raise FieldProblem(f"images is not a JSON list ({exc})") from None
        return [part.strip() for part in text.split("|") if part.strip()]
    if name in ("prompt", "instruction") and len(text) > MAX_PROMPT_CHARS:
        raise FieldProblem(f"{name} has {len(text):,} characters; at most "
                            f"{MAX_PROMPT_CHARS:,} are accepted")
    return text


def _check_row(line: int, raw: Any) -> tuple[BatchItem | None, list[str]]:
    where = f"line {line}"
    if isinstance(raw, Unparsed):
        return None, [f"{where}: {raw}"]
    if not isinstance(raw, Mapping):
        return None, [f"{where}: expected an object with 'prompt' or 'instruction'"]
    row = {str(k).strip(): v for k, v in raw.items() if v is not None and v != ""}
    problems = [f"{where}: " + unknown_field(f"key #{i}", k)
                for i, k in enumerate(row, start=1) if k not in KNOWN_FIELDS]
    clean: dict[str, Any] = {}
    for name in FIELDS:
        if name in row:
            try:
                clean[name] = _coerce(name, row[name])
            except FieldProblem as exc:
                problems.append(f"{where}: {exc}")
    if len(problems) > sum(k not in KNOWN_FIELDS for k in row):
        return None, problems  # a field could not be read; the rest would only repeat it
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
    model = clean.get("model")
    if model is not None and not (isinstance(model, str) and MODEL_NAME.fullmatch(model)):
        problems.append(f"{where}: model must be owner/name or owner/name:<64-hex version>, "
                        "e.g. bytedance/seedream-4.5")
        model = None
    text = clean.get("prompt", clean.get("instruction"))
    item = BatchItem(
        line=line, id=str(clean.get("id", f"line-{line}")), kind=kind,
        prompt=text if isinstance(text, str) else "", images=tuple(images),
        options={k: clean[k] for k in OPTIONS if k in clean}, row=dict(raw), model=model,
    )
    try:
        if kind == "generate" or images:  # an edit without images is already reported
            item.request([f"https://source.invalid/{i}" for i in range(len(images))])
    except ValidationError as exc:
        problems.append(f"{where}: {describe_errors(exc)}")
    except TypeError:
        problems.append(f"{where}: the options do not form a Seedream request")
    return (None if problems else item), problems


def _line_of(problem: str) -> int:
    found = _LINE.match(problem)
    return int(found.group(1)) if found else 0


def check_rows(rows: Iterable[tuple[int, Any]] | list[dict[str, Any]],
               also: Callable[[list[BatchItem]], list[tuple[int, str]]] | None = None,
               ) -> list[BatchItem]:
    """Check every row; return the items, or raise `ManifestInvalid` naming every problem.

    `rows` are `(line, row)` pairs, or plain dicts (numbered from 1). `also` checks the rows
    that passed (each model's published schema, say) and gives `(line, problem)` pairs, which
    are reported in line order beside the rest.
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
            problems.append(f"line {line}: the same id as line {seen_ids[item.id]}; ids must "
                            "be unique")
            continue
        seen_ids[item.id] = line
        items.append(item)
    if also is not None and items:
        found_too = also(items)
        if found_too:
            merged = sorted([*((_line_of(p), p) for p in problems), *found_too],
                            key=lambda pair: pair[0])
            problems = [problem for _, problem in merged]
    if problems:
        raise ManifestInvalid(problems)
    if not items:
        raise ManifestInvalid(["the manifest has no rows"])
    return items


def load_manifest(
    manifest: str | list[dict[str, Any]], destination: S3Destination | None = None,
    also: Callable[[list[BatchItem]], list[tuple[int, str]]] | None = None,
) -> list[BatchItem]:
    """Read and check a manifest: a local path, an `s3://` URI, a key relative to the
    destination (see `read_manifest_text`), or a list of dicts. `also`: see `check_rows`.

    Raises:
        ManifestUnreadable: The manifest cannot be read at all.
        ManifestInvalid: Every invalid row, with line numbers.
    """
    if isinstance(manifest, list):
        return check_rows(manifest, also)
    rows = parse_text(read_manifest_text(manifest, destination), name=manifest)
    return check_rows(rows, also)


def to_jsonl(items: Iterable[BatchItem]) -> str:
    """The items as a JSONL manifest (their rows as read), e.g. one shard of a batch."""
    return "".join(json.dumps(dict(item.row), sort_keys=True) + "\n" for item in items)


__all__ = ["MAX_PROMPT_CHARS", "BatchItem", "ManifestInvalid", "ManifestUnreadable", "check_rows",
           "load_manifest", "parse_text", "read_manifest_text", "to_jsonl"]
