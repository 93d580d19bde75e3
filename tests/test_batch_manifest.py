"""The pure parts of a batch: manifest rows, item keys, the budget plan, shard splitting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prefect_seedream.flows.batch.budget import plan_budget
from prefect_seedream.flows.batch.keys import item_key
from prefect_seedream.flows.batch.manifest import (
    ManifestInvalid,
    ManifestUnreadable,
    check_rows,
    load_manifest,
    parse_text,
)
from prefect_seedream.flows.batch.shards import split


def test_csv_cells_become_typed_options_and_image_lists() -> None:
    rows = parse_text(
        "id,prompt,instruction,images,size,width,height,max_images,enhance_prompt\n"
        "a,a red fox,,,custom,1536,1024,3,yes\n"
        "b,,warmer,https://x.test/1.jpg|https://x.test/2.jpg,1K,,,,\n",
        name="week.csv",
    )
    first, second = check_rows(rows)
    assert (first.line, first.kind, first.max_images) == (2, "generate", 3)
    assert first.request().to_request()["width"] == 1536
    assert first.request().enhance_prompt is True
    assert (second.line, second.kind, second.images) == (
        3, "edit", ("https://x.test/1.jpg", "https://x.test/2.jpg"))


def test_every_bad_row_is_named_with_its_line() -> None:
    text = ('{"prompt": "ok", "aspect_ratio": "1:1"}\n[1, 2]\n\n'
            '{"prompt": "a", "instruction": "b"}\n')
    with pytest.raises(ManifestInvalid) as info:
        check_rows(parse_text(text, name="m.jsonl"))
    assert [p.split(":")[0] for p in info.value.problems] == ["line 2", "line 4"]
    assert "nothing was submitted" in str(info.value)


def test_csv_row_with_too_many_cells_is_reported() -> None:
    with pytest.raises(ManifestInvalid, match="line 3: has 1 more cell"):
        check_rows(parse_text("prompt,size\nok,1K\nbad,1K,extra\n", name="m.csv"))


def test_item_key_ignores_ids_and_defaults_but_not_options_or_source_bytes() -> None:
    a, b, c = check_rows([
        {"id": "x", "prompt": "a fox", "size": "2K"},
        {"id": "y", "prompt": "a fox", "aspect_ratio": "1:1"},  # the same request, by defaults
        {"prompt": "a fox", "size": "1K"},
    ])
    assert item_key("m", a, {}) == item_key("m", b, {}) != item_key("m", c, {})
    assert item_key("m", a, {}) != item_key("other/model", a, {})
    [edit] = check_rows([{"instruction": "warmer", "images": ["s3://bkt/a.jpg"]}])
    assert item_key("m", edit, {"s3://bkt/a.jpg": "00" * 32}) != item_key(
        "m", edit, {"s3://bkt/a.jpg": "11" * 32})


def test_budget_plan_is_a_prefix_of_the_manifest() -> None:
    items = [(item, str(i)) for i, item in enumerate(check_rows(
        [{"prompt": "one", "size": "1K"},
         {"prompt": "three", "size": "1K", "max_images": 3},
         {"prompt": "one more", "size": "1K"}]))]
    run, skipped = plan_budget(items, price=0.03, max_images_total=None, max_cost_usd=0.12)
    assert [key for _, key in run] == ["0", "1"] and [key for _, key in skipped] == ["2"]
    run, skipped = plan_budget(items, price=0.03, max_images_total=3, max_cost_usd=None)
    assert [key for _, key in run] == ["0"] and len(skipped) == 2
    assert plan_budget(items, price=0.03, max_images_total=None, max_cost_usd=None)[1] == []


def test_split_keeps_order_and_balances() -> None:
    assert split(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert [n for part in split(list(range(1000)), 7) for n in part] == list(range(1000))


def test_a_manifest_that_cannot_be_read_says_so_and_not_that_rows_are_invalid(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ManifestUnreadable) as info:
        load_manifest(str(missing))
    assert str(info.value).startswith(f"cannot read the manifest {missing}: no such file.")
    assert "invalid manifest row" not in str(info.value)
    assert info.value.problems == [f"cannot read the manifest {missing}: no such file"]

    binary = tmp_path / "photo.jsonl"
    binary.write_bytes(b"\xff\xd8\xff\xe0 a JPEG, not a manifest")
    with pytest.raises(ManifestUnreadable, match=r"^cannot read the manifest .*photo\.jsonl: "
                                                 r"not UTF-8 text"):
        load_manifest(str(binary))
    with pytest.raises(ManifestUnreadable, match=re.escape(
            "cannot read the manifest https://x.test/m.jsonl: only a local file, an s3:// URI")):
        load_manifest("https://x.test/m.jsonl")
    with pytest.raises(ManifestUnreadable, match=re.escape(
            f"cannot read the manifest {tmp_path}: a directory")):
        load_manifest(str(tmp_path))
