"""The spend limit as people read it: one markdown report, published as the `seedream-spend`
artifact by every flow that ran under a limit, and printed by `seedream spend`.

It shows the current day's and month's records of the ledger (spent, reserved by open
predictions, the limit and what is left) and who spent it, per deployment or flow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prefect_seedream.tasks import spend_limit
from prefect_seedream.tasks.prediction_ledger import Ledger

if TYPE_CHECKING:
    from prefect_seedream.blocks.s3_destination import S3Destination

logger = logging.getLogger("prefect_seedream.spend")

ARTIFACT_KEY = "seedream-spend"


def _money(images: float, usd: float) -> str:
    return f"{images:g} images (${usd:.2f})"


def _limit(row: Mapping[str, Any]) -> str:
    parts = [f"{row['limit_images']:g} images" if row["limit_images"] else "",
             f"${row['limit_usd']:.2f}" if row["limit_usd"] else ""]
    return " and ".join(p for p in parts if p) or "none"


def _left(row: Mapping[str, Any]) -> str:
    parts = []
    if row["limit_images"]:
        parts.append(f"{row['limit_images'] - row['settled_images'] - row['reserved_images']:g}"
                     " images")
    if row["limit_usd"]:
        parts.append(f"${row['limit_usd'] - row['settled_usd'] - row['reserved_usd']:.2f}")
    return " and ".join(parts) or "—"


def spend_markdown(guard: spend_limit.SpendGuard) -> str:
    """The report of `guard`'s current periods (reads the day's and month's records)."""
    rows = guard.summary()
    lines = [
        "# Seedream spend",
        "",
        f"Kept at `s3://{guard.at.destination.bucket}/{guard.at.root}/spend/`; time zone "
        f"{guard.time_zone}; each prediction at its model's price per image. A period without "
        "a limit is not recorded.",
        "",
        "| Period | Spent | Reserved by open predictions | Limit | Left |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['period']} | {_money(r['settled_images'], r['settled_usd'])} "
              f"| {_money(r['reserved_images'], r['reserved_usd'])}, {r['open']} open "
              f"| {_limit(r)} | {_left(r)} |" for r in rows]
    for row in rows:
        if not row["by"]:
            continue
        lines += ["", f"## Who spent it in {row['period']}", "", "| Spender | Spent |",
                  "|---|---|"]
        lines += [f"| {who} | {_money(spent['images'], spent['usd'])} |"
                  for who, spent in sorted(row["by"].items(),
                                           key=lambda kv: (-float(kv[1]["usd"]), kv[0]))]
    return "\n".join(lines)


def publish_spend(destination: S3Destination) -> None:
    """Publish the `seedream-spend` artifact in the current flow run when a limit is set.

    Never raises: the report is a view of the ledger, and a run whose images are stored must
    not fail because it could not be drawn."""
    from prefect.artifacts import create_markdown_artifact

    try:
        guard = spend_limit.guard_for(Ledger(destination, destination.prefix))
        if guard is None:
            return
        create_markdown_artifact(markdown=spend_markdown(guard), key=ARTIFACT_KEY,
                                 description="Seedream spend against the limit, today and "
                                             "this month",
                                 _sync=True)  # type: ignore[call-arg]
    except Exception as exc:
        logger.warning("could not publish the spend report: %s", type(exc).__name__)


__all__ = ["ARTIFACT_KEY", "publish_spend", "spend_markdown"]
