"""Render RELIABILITY.md from the outcomes the fault tests recorded (see `record_outcome`).

Usage: `python tests/render_reliability.py outcomes.json [more.json ...] > RELIABILITY.md`
(`make reliability`; one file per pytest-xdist worker).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TITLE = """# Reliability under faults

Regenerate with `make reliability` (it reruns the fault tests and rewrites this file).
"""

MATRIX = """
## The fault matrix

Every entry point (columns) under every fault (rows), each cell a test in
`tests/test_fault_matrix*.py` (the deployment column in `tests/e2e/test_fault_matrix_deployment.py`)
that drives the entry point through the real path with the fault injected: the sandbox for
Replicate, moto's S3 server, a real Prefect API. A cell reads **created per request / left
running / outputs lost**, as measured: predictions the sandbox made per logical request, those
still `starting` or `processing` afterwards, and outputs of succeeded predictions that are in the
bucket neither as an image nor as a quarantined copy. Target: **1/0/0** (0 created where the
request is refused); a cell off target is marked **✗**. `n/a` cells say why in the notes below,
`pending` cells wait for a feature, `—` was not measured in this run.

"""

HEADER = """
## Each fault in detail

Each row is a fault injected over real HTTP (the sandbox for Replicate, moto's server for S3, a
real Prefect API), what the plugin did, and what the test that produced the row measured.
Targets: predictions created per logical request **1** (0 where nothing should be paid for),
left running afterwards **0**, outputs lost **0**, secret occurrences **0**.

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


SPEND = """
## The spend limit

Each row is runs against one spend limit (`SEEDREAM_SPEND_LIMIT_*`), through the real path: the
sandbox counts the predictions created, the period's record in S3 holds what was spent. Targets:
predictions created per request past the limit **0**, spend over the limit **0**.

| Runs | Limit | Requests | The limit allows | Created | Created per request past the limit | Spent | Over the limit | Test |
|---|---|---|---|---|---|---|---|---|
"""


def render_spend(outcomes: list[dict[str, object]]) -> str:
    rows = [
        f"| {o['runs']} | {o['limit']} | {o['requests']} | {o['allowed']} | {o['created']} "
        f"| {float(o['created_past_limit']):g} | {float(o['spent']):g} "  # type: ignore[arg-type]
        f"| {float(o['over_limit']):g} | `{_test(o)}` |"  # type: ignore[arg-type]
        for o in outcomes
    ]
    return SPEND + "\n".join(rows) + "\n" if rows else ""


def _test(o: dict[str, object]) -> str:
    test = str(o["test"]).split("::")
    return f"{test[0]}::{test[-1]}"


def _in_order(seen: list[str], preferred: list[str]) -> list[str]:
    """Every `preferred` name (an unmeasured cell shows as such), then any other seen name."""
    return preferred + [n for n in seen if n not in preferred]


def _on_target(o: dict[str, object]) -> bool:
    return (float(o["created_per_request"]) <= 1  # type: ignore[arg-type]
            and o["left_running"] == 0 and o["outputs_lost"] == 0)


def render_matrix(cells: list[dict[str, object]]) -> str:
    """RELIABILITY.md's first section: faults x entry points, `created/left running/lost`."""
    if not cells:
        return ""
    try:
        from test_fault_matrix import ENTRIES, FAULTS
    except ImportError:  # rendered from elsewhere: the order the cells were recorded in
        ENTRIES, FAULTS = {}, {}
    entries = _in_order(list(dict.fromkeys(str(c["entry"]) for c in cells)),
                        list(ENTRIES.values()))
    faults = _in_order(list(dict.fromkeys(str(c["fault"]) for c in cells)),
                       list(FAULTS.values()))
    by_cell = {(str(c["entry"]), str(c["fault"])): c for c in cells}
    notes: dict[str, int] = {}
    off: list[str] = []

    def show(entry: str, fault: str) -> str:
        c = by_cell.get((entry, fault))
        if c is None:
            return "—"
        if "na" in c:
            why = str(c["na"])
            number = notes.setdefault(why, len(notes) + 1)
            return f"{'pending' if why.startswith('pending') else 'n/a'} ({number})"
        text = (f"{float(c['created_per_request']):g}/{c['left_running']}"  # type: ignore[arg-type]
                f"/{c['outputs_lost']}")
        if _on_target(c):
            return text
        off.append(f"- **✗ {fault}, {entry}**: {c['created']} created for {c['requests']} "
                   f"request(s), {c['left_running']} left running, {c['outputs_lost']} output(s) "
                   f"lost ({c['handling']}; `{_test(c)}`).")
        return f"**✗ {text}**"

    lines = ["| Fault | " + " | ".join(entries) + " |",
             "|---|" + "---|" * len(entries)]
    lines += [f"| {fault} | " + " | ".join(show(e, fault) for e in entries) + " |"
              for fault in faults]
    measured = [c for c in cells if "na" not in c]
    summary = (f"\n{len(measured)} cells measured ({sum(map(_on_target, measured))} on target), "
               f"{len(cells) - len(measured)} not applicable or pending.\n")
    text = MATRIX + "\n".join(lines) + "\n" + summary
    if off:
        text += "\nOff target:\n\n" + "\n".join(off) + "\n"
    if notes:
        text += "\nNotes:\n\n" + "\n".join(f"{n}. {why}" for why, n in notes.items()) + "\n"
    handled: dict[str, dict[str, list[str]]] = {}
    for c in measured:
        handled.setdefault(str(c["fault"]), {}).setdefault(str(c["handling"]), []).append(
            str(c["entry"]))
    text += "\nWhat the plugin did, by row:\n\n"
    for fault in faults:
        for handling, where in handled.get(fault, {}).items():
            text += f"- **{fault}** ({', '.join(where)}): {handling}.\n"
    return text


def render(outcomes: list[dict[str, object]]) -> str:
    hostile = [o for o in outcomes if o.get("table") == "hostile"]
    matrix = [o for o in outcomes if o.get("table") == "matrix"]
    spend = [o for o in outcomes if o.get("table") == "spend"]
    outcomes = [o for o in outcomes if o.get("table") not in ("hostile", "matrix", "spend")]
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
    detail = HEADER + "\n".join(rows) + "\n" + notes if rows else ""
    return (TITLE + render_matrix(matrix) + detail + render_spend(spend)
            + render_hostile(hostile))


if __name__ == "__main__":
    data = [row for name in sys.argv[1:]  # one file per pytest-xdist worker
            for row in json.loads(Path(name).read_text(encoding="utf-8"))]
    data.sort(key=lambda row: str(row["test"]))  # the same order whichever worker ran what
    sys.stdout.write(render(data))
