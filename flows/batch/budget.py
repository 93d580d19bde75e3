"""The budget: which items a batch submits before its worst case would pass a cap.

Each item reserves its worst case, `max_images` images at the price per image, before it is
submitted, so a cap holds even when every item returns all it may. Pure code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect_seedream.flows.batch.manifest import BatchItem

DEFAULT_PRICE_PER_IMAGE_USD = 0.03  # Seedream 4 on Replicate, per output image


def plan_budget(
    items: list[tuple[BatchItem, str]], *, price: float | Callable[[BatchItem], float],
    max_images_total: int | None, max_cost_usd: float | None,
) -> tuple[list[tuple[BatchItem, str]], list[tuple[BatchItem, str]]]:
    """Split items into (submitted, skipped by budget), reserving each item's worst case.

    `price` is the price per image, or a function giving each item's (rows on other models).

    Submission stops at the first item whose worst case would cross a cap; later items are
    skipped too, so a capped batch is always a prefix of the manifest.

    Example:
        ```python
        from prefect_seedream.flows.batch.budget import plan_budget
        from prefect_seedream.flows.batch.manifest import check_rows

        items = [(item, str(i)) for i, item in enumerate(check_rows(
            [{"prompt": f"p{i}", "size": "1K"} for i in range(5)]))]
        run, skipped = plan_budget(items, price=0.03, max_images_total=3, max_cost_usd=None)
        assert (len(run), len(skipped)) == (3, 2)
        ```
    """
    submitted: list[tuple[BatchItem, str]] = []
    images, cost = 0, 0.0
    for index, (item, key) in enumerate(items):
        worst = images + item.max_images
        worst_cost = cost + item.max_images * (price(item) if callable(price) else price)
        if (max_images_total is not None and worst > max_images_total) or (
                max_cost_usd is not None and worst_cost > max_cost_usd + 1e-9):
            return submitted, items[index:]
        images, cost = worst, worst_cost
        submitted.append((item, key))
    return submitted, []


__all__ = ["DEFAULT_PRICE_PER_IMAGE_USD", "plan_budget"]
