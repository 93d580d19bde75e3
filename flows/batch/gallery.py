"""The batch gallery: a grid of item previews in one markdown artifact, under a size cap.

Each cell is one manifest item: the preview of its first image (`StoredImage.preview`, a small
JPEG inline as a `data:` URI), its id and its status; a failed item shows as failed with the
kind of error, an item with no image (skipped by the budget, cancelled) with its status only.
The gallery shows the first (or latest) `SEEDREAM_GALLERY_ITEMS` items in manifest order and
never grows past `SEEDREAM_GALLERY_MAX_BYTES`: items that do not fit are left out and the
artifact says how many. Edit sources are never shown, only images this plugin stored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from prefect_seedream.flows.batch.items import ItemOutcome
from prefect_seedream.tasks.s3_storage.previews import preview_data_uri

#: Cells per row of the grid.
COLUMNS = 4
#: Room kept for the closing note, so the whole artifact stays under its cap.
_FOOTER_RESERVE = 600
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+!|~])")
_STATUS_MARK = {"failed": "✗ failed", "cancelled": "✗ cancelled",
                "skipped_budget": "skipped (budget)"}


def _text(text: str, limit: int = 60) -> str:
    """Plain text safe inside a table cell (ids come from a manifest anyone may write)."""
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return _MARKDOWN.sub(r"\\\1", text)


def gallery_cell(item: ItemOutcome) -> str:
    """One grid cell: preview (if any), id and status."""
    status = _STATUS_MARK.get(item.status, item.status)
    if item.status == "failed" and item.error_type:
        status += f" ({_text(item.error_type, 40)})"
    image = next((i for i in item.images if i.preview), None)
    picture = f"![{_text(item.id)}]({preview_data_uri(image.preview)}) " if image and \
        image.preview else ""
    more = f" +{len(item.images) - 1} more" if len(item.images) > 1 else ""
    return f"{picture}**{_text(item.id)}** {status}{more}"


def gallery_markdown(
    items: Sequence[ItemOutcome], *, max_items: int, max_bytes: int,
    show: Literal["first", "latest"] = "first", title: str = "Seedream batch gallery",
) -> str:
    """The gallery artifact's markdown, at most `max_bytes` UTF-8 bytes long.

    Example:
        ```python
        from prefect_seedream.flows.batch.gallery import gallery_markdown
        from prefect_seedream.flows.batch.items import ItemOutcome

        items = [ItemOutcome(id=f"mug-{n}", line=n, kind="generate", item_key=f"k{n}",
                             status="failed", error_type="PredictionFailed") for n in range(9)]
        text = gallery_markdown(items, max_items=4, max_bytes=8192)
        assert "mug-0" in text and "mug-8" not in text and "5 of 9 items are not shown" in text
        ```
    """
    chosen = list(items[:max_items] if show == "first" else items[-max_items:])
    header = [f"### {_text(title, 120)}", "",
              f"{len(items)} item(s); the {show} {len(chosen)} in manifest order "
              "(SEEDREAM_GALLERY_ITEMS, SEEDREAM_GALLERY_SHOW), each with its first image.", "",
              "|" + " |" * COLUMNS, "|" + "---|" * COLUMNS]
    budget = max_bytes - _FOOTER_RESERVE - sum(len(line.encode()) + 1 for line in header)
    rows: list[str] = []
    cells: list[str] = []
    shown = 0
    for item in chosen:
        cell = gallery_cell(item)
        row_bytes = len(" | ".join([*cells, cell]).encode()) + 4
        if budget - row_bytes < 0:
            break
        cells.append(cell)
        shown += 1
        if len(cells) == COLUMNS:
            line = "| " + " | ".join(cells) + " |"
            budget -= len(line.encode()) + 1
            rows.append(line)
            cells = []
    if cells:
        rows.append("| " + " | ".join(cells + [""] * (COLUMNS - len(cells))) + " |")
    left_out = len(items) - shown
    footer = [""]
    if shown < len(chosen):
        footer.append(f"_{left_out} of {len(items)} items are not shown: the gallery is capped "
                      f"at {max_bytes:,} bytes (SEEDREAM_GALLERY_MAX_BYTES)._")
    elif left_out:
        footer.append(f"_{left_out} of {len(items)} items are not shown (the gallery shows "
                      f"{max_items}, SEEDREAM_GALLERY_ITEMS)._")
    footer.append("_Every item, with its S3 URIs, is in the seedream-batch table._")
    if not rows:
        rows = ["| (nothing fits under the cap) |" + " |" * (COLUMNS - 1)]
    return "\n".join(header + rows + footer)


def publish_gallery(items: Sequence[ItemOutcome], *, key: str = "seedream-batch-gallery") -> None:
    """Create the gallery artifact in the current flow run, sized by the settings."""
    from prefect.artifacts import create_markdown_artifact

    from prefect_seedream.tasks.seedream_settings import get_settings

    settings = get_settings()
    create_markdown_artifact(
        markdown=gallery_markdown(items, max_items=settings.gallery_items,
                                  max_bytes=settings.gallery_max_bytes,
                                  show=settings.gallery_show),
        key=key, description=f"Seedream batch gallery: previews of {len(items)} item(s)",
        _sync=True,  # type: ignore[call-arg]
    )


__all__ = ["COLUMNS", "gallery_cell", "gallery_markdown", "publish_gallery"]
