"""Render RELIABILITY.md from the outcomes the fault tests recorded (see `record_outcome`).

Usage: `python tests/render_reliability.py outcomes.json > RELIABILITY.md` (`make reliability`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = """# Reliability under faults

Each row is a fault injected over real HTTP (the sandbox for Replicate, moto's server for S3, a
real Prefect API), what the plugin did, and what the test that produced the row measured.
Targets: predictions created per logical request **1** (0 where nothing should be paid for),
left running afterwards **0**, outputs lost **0**, secret occurrences **0**.
Regenerate with `make reliability` (it reruns the fault tests and rewrites this file).

| Fault | What the plugin did | Created per request | Left running | Outputs lost | Secret occurrences | Test |
|---|---|---|---|---|---|---|
"""


def render(outcomes: list[dict[str, object]]) -> str:
    rows = []
    for o in outcomes:
        test = str(o["test"]).split("::")
        rows.append(
            f"| {o['fault']} | {o['handling']} | {float(o['created_per_request']):g} "  # type: ignore[arg-type]
            f"| {o['left_running']} | {o['outputs_lost']} | {o['secret_occurrences']} "
            f"| `{test[0]}::{test[-1]}` |"
        )
    notes = """
Notes:
- "Outputs expired before storing" loses the outputs by definition (Replicate deleted them); the
  guarantee there is a specific `OutputExpired` error naming the prediction, never a silent gap.
- "Invalid input" and "bad token" rows create 0 predictions: nothing is paid for.
- The S3 row drives the storage task alone (no prediction is involved, hence 0 created): it shows
  an S3 outage is ridden out from the same download, never by generating again.
"""
    return HEADER + "\n".join(rows) + "\n" + notes


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    sys.stdout.write(render(data))
