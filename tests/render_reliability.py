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


HOSTILE = """
## Bad input and hostile peers

Each row is something an outsider can send (an event, a manifest, a webhook, a source), sent
through the real path, and what the test measured. Targets: predictions created **0**, objects
written outside the destination's prefix **0**, requests to internal hosts **0**.

| Sent | What the plugin did | Created | Written outside the prefix | Internal requests | Test |
|---|---|---|---|---|---|
"""


def render_hostile(outcomes: list[dict[str, object]]) -> str:
    rows = [
        f"| {o['sent']} | {o['did']} | {o['created']} | {o['outside_writes']} "
        f"| {o['internal_requests']} | `{_test(o)}` |"
        for o in outcomes
    ]
    return HOSTILE + "\n".join(rows) + "\n" if rows else ""


def _test(o: dict[str, object]) -> str:
    test = str(o["test"]).split("::")
    return f"{test[0]}::{test[-1]}"


def render(outcomes: list[dict[str, object]]) -> str:
    hostile = [o for o in outcomes if o.get("table") == "hostile"]
    outcomes = [o for o in outcomes if o.get("table") != "hostile"]
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
    return HEADER + "\n".join(rows) + "\n" + notes + render_hostile(hostile)


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    sys.stdout.write(render(data))
