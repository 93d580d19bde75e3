"""(c) RSS vs items of a 10,000-item batch (QUICK: 1,000), from `bench/bench_batch.py`.

64 in flight, sandbox at 0.2 s with prerendered outputs and rate limits off; the batch's process
is measured alone (sandbox, moto and `prefect server` in their own processes). Runs the script
in its own process and reads the last JSON object it prints: peak RSS, RSS at 10 % and 100 % of
items, the slope (MB per 1,000 items) and the (items_done, rss_mb) series for the plot. If the
script fails or prints no RSS figure, the row is reported as pending with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from bench.common import QUICK, ROOT

SCRIPT = ROOT / "bench" / "bench_batch.py"
ITEMS = 1_000 if QUICK else 10_000
IN_FLIGHT = 64
TIMEOUT = 600 if QUICK else 2400


def _find_rss(value: Any, path: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if "rss" in str(key).lower() and isinstance(item, (int, float)) \
                    and not isinstance(item, bool):
                found[name] = item
            else:
                found.update(_find_rss(item, name))
    return found


def run() -> dict[str, Any]:
    if not SCRIPT.exists():
        return {"status": "pending", "reason": "bench/bench_batch.py does not exist yet"}
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT), "--items", str(ITEMS),
                               "--in-flight", str(IN_FLIGHT), "--run-seconds", "0.2"],
                              cwd=str(ROOT), capture_output=True,
                              text=True, timeout=TIMEOUT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        return {"status": "pending", "reason": f"bench_batch.py ran over {TIMEOUT} s"}
    if proc.returncode != 0:
        return {"status": "pending",
                "reason": f"bench_batch.py exited {proc.returncode}: {proc.stderr[-300:]}"}
    document: Any = None
    text = proc.stdout.strip()
    try:
        document = json.loads(text)
    except ValueError:
        for line in reversed(text.splitlines()):
            try:
                document = json.loads(line)
                break
            except ValueError:
                continue
    rss = _find_rss(document)
    if not rss:
        return {"status": "pending", "reason": "bench_batch.py printed no RSS figure",
                "output_tail": text[-500:]}
    return {"status": "measured", "rss": rss, "raw": document}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
