"""(c) Peak RSS of the 1,000-item batch, from `bench/bench_batch.py` (another engineer's script).

Runs it as-is in its own process if it exists and reads the last JSON object it prints; if the
script is missing, fails, or prints no RSS figure, the row is reported as pending with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from bench.common import ROOT

SCRIPT = ROOT / "bench" / "bench_batch.py"
TIMEOUT = 240


def _find_rss(value: Any, path: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if "rss" in str(key).lower() and isinstance(item, (int, float)):
                found[name] = item
            else:
                found.update(_find_rss(item, name))
    return found


def run() -> dict[str, Any]:
    if not SCRIPT.exists():
        return {"status": "pending", "reason": "bench/bench_batch.py does not exist yet"}
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=str(ROOT), capture_output=True,
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
