"""(e) Checking a 100,000-row manifest before a batch submits anything: time and peak RSS.

A JSONL file of 100,000 generate rows is written once. Each measurement is a fresh Python
process (peak RSS from `ru_maxrss`, less the interpreter's own after its imports):

- `ours`: what `generate_batch` does before its first create: `load_manifest` with every row
  checked against the model's published schema (read from the sandbox once), then every item's
  request key;
- `baseline`: `json.loads` of every line into a list, the least a script that reads the file
  before it starts must hold.

Interleaved ours, baseline, ours, baseline. Issue #14's target: ours <= 300 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import QUICK, ROOT, median

ROWS = 10_000 if QUICK else 100_000
ROUNDS = 1 if QUICK else 2


def child(mode: str, path: str, base_url: str, token: str) -> dict[str, Any]:
    import resource
    import time

    from pydantic import SecretStr

    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
    from prefect_seedream.flows.batch.keys import item_key
    from prefect_seedream.flows.batch.manifest import load_manifest
    from prefect_seedream.flows.batch.models import model_problems

    credentials = ReplicateCredentials(api_token=SecretStr(token), base_url=base_url)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "ours":
        model = "bytedance/seedream-4"
        items = load_manifest(path, also=lambda rows: model_problems(rows, model, credentials))
        keys = [item_key(model, item, {}) for item in items]
        count = len(keys)
    else:
        with open(path) as lines:
            rows = [json.loads(line) for line in lines]
        count = len(rows)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "rows": count, "seconds": round(seconds, 2),
            "peak_mb": round(peak / 1024, 1), "growth_mb": round((peak - before) / 1024, 1)}


def run() -> dict[str, Any]:
    from prefect_seedream.sandbox import Sandbox

    folder = Path(tempfile.mkdtemp(prefix="bench-manifest-"))
    path = folder / "catalogue.jsonl"
    with path.open("w") as out:
        for i in range(ROWS):
            out.write(json.dumps({"id": f"sku-{i:06d}", "prompt": f"product shot of item {i}, "
                                  "white background, soft light", "size": "2K",
                                  "aspect_ratio": "4:3"}) + "\n")
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "baseline": []}
    with Sandbox() as sandbox:
        for _ in range(ROUNDS):
            for mode in runs:
                answer = subprocess.run(
                    [sys.executable, "-m", "bench.fig_manifest", "--child", mode, str(path),
                     sandbox.base_url, sandbox.api_token], cwd=str(ROOT), check=True,
                    capture_output=True, text=True, timeout=900,
                    env={**os.environ, "PYTHONPATH": str(ROOT)})
                runs[mode].append(json.loads(answer.stdout.strip().splitlines()[-1]))
    return {"rows": ROWS, "file_mb": round(path.stat().st_size / 1e6, 1),
            "ours_peak_mb": median([r["peak_mb"] for r in runs["ours"]]),
            "ours_s": median([r["seconds"] for r in runs["ours"]]),
            "baseline_peak_mb": median([r["peak_mb"] for r in runs["baseline"]]),
            "baseline_s": median([r["seconds"] for r in runs["baseline"]]), "runs": runs}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:6])))
    else:
        print(json.dumps(run(), indent=2))
