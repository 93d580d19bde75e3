"""Figure 6: cold start of the `seedream` command, and import time of `prefect_seedream`.

- CLI: wall time from spawning `seedream generate ...` to the first create request the sandbox
  receives, with no Prefect API (Prefect starts its temporary server, the first-run experience)
  and with the API already up (`PREFECT_API_URL` of a running test server). Baseline: spawning
  the naive script (`python -c "import replicate ...; run(...)"`) to its first create.
- Imports: `import prefect_seedream` (the public face) in a fresh interpreter vs
  `import replicate, boto3` (what the naive script needs), and, for reference,
  `import prefect_seedream.tasks.predictions` (which pulls in Prefect).
All interleaved, median of the repeats. (`--sandbox` embeds its own sandbox, so the CLI is pointed
at this figure's sandbox with REPLICATE_BASE_URL instead; the code path is the same after that.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import QUICK, ROOT, bench_env, interleave, median
from bench.servers import MotoProcess

REPEATS = 2 if QUICK else 3
IMPORT_REPEATS = 3 if QUICK else 7

_IMPORT = ("import time, sys; t = time.perf_counter(); import {mod}; "
           "print(time.perf_counter() - t, 'prefect' in sys.modules)")
_NAIVE = ("import replicate, boto3, httpx, os; "
          "c = replicate.Client(api_token=os.environ['REPLICATE_API_TOKEN'], "
          "base_url=os.environ['REPLICATE_BASE_URL']); "
          "out = c.run('bytedance/seedream-4', "
          "input={'prompt': 'cold naive', 'size': '1K', 'aspect_ratio': '1:1'}); "
          "s3 = boto3.client('s3', endpoint_url=os.environ['SEEDREAM_S3_ENDPOINT_URL']); "
          "s3.put_object(Bucket='bench-cold', Key='naive.jpg', Body=httpx.get(out[0]).content)")


def _import_seconds(module: str) -> tuple[float, bool]:
    out = subprocess.run([sys.executable, "-c", _IMPORT.format(mod=module)], cwd=str(ROOT),
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                         text=True, check=True)
    seconds, prefect = out.stdout.split()
    return float(seconds), prefect == "True"


def run() -> dict[str, Any]:
    bench_env()
    from prefect.testing.utilities import prefect_test_harness

    from prefect_seedream.sandbox import Sandbox, SandboxConfig

    out: dict[str, Any] = {"repeats": REPEATS}
    imports = interleave({
        "public": lambda n: _import_seconds("prefect_seedream"),
        "replicate_boto3": lambda n: _import_seconds("replicate, boto3"),
        "tasks_predictions": lambda n: _import_seconds("prefect_seedream.tasks.predictions"),
        "flows_command_line": lambda n: _import_seconds("prefect_seedream.cli"),
    }, IMPORT_REPEATS)
    out["import_s"] = {k: round(median([s for s, _ in v]), 3) for k, v in imports.items()}
    out["import_pulls_prefect"] = {k: v[0][1] for k, v in imports.items()}

    seedream = str(Path(sys.executable).parent / "seedream")
    with Sandbox(config=SandboxConfig(run_seconds=0.5, rate_limits=False)) as sb, \
            MotoProcess() as moto:
        import boto3

        boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1").create_bucket(
            Bucket="bench-cold")
        base_env = {**os.environ, "PYTHONPATH": str(ROOT), "REPLICATE_API_TOKEN": sb.api_token,
                    "REPLICATE_BASE_URL": sb.base_url, "SEEDREAM_BUCKET": "bench-cold",
                    "SEEDREAM_S3_ENDPOINT_URL": moto.endpoint_url,
                    "SEEDREAM_REGION_NAME": "us-east-1"}
        base_env.pop("PREFECT_API_URL", None)

        def first_create(argv: list[str], env: dict[str, str]) -> float | str:
            known = {p["id"] for p in sb.predictions()}
            start = time.time()
            proc = subprocess.run(argv, env=env, cwd=str(ROOT), capture_output=True, text=True,
                                  timeout=180)
            if proc.returncode != 0:
                return f"error: exit {proc.returncode}: {proc.stderr[-300:]}"
            new = [p for p in sb.predictions() if p["id"] not in known]
            created = min(datetime.fromisoformat(p["created_at"].replace("Z", "+00:00"))
                          .timestamp() for p in new)
            return round(created - start, 3)

        cli = [seedream, "generate", "cold start", "--size", "1K", "--no-copies",
               "--bucket", "bench-cold"]
        with prefect_test_harness(server_startup_timeout=120):
            from prefect.settings import PREFECT_API_URL

            api_env = {**base_env, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
            runs = interleave({
                "naive_script": lambda n: first_create([sys.executable, "-c", _NAIVE], base_env),
                "cli_api_up": lambda n: first_create(cli, api_env),
                "cli_no_api": lambda n: first_create(cli, base_env),
            }, REPEATS)
    out["first_create_runs_s"] = runs
    ok = {k: [x for x in v if isinstance(x, float)] for k, v in runs.items()}
    out["first_create_s"] = {k: round(median(v), 3) if v else None for k, v in ok.items()}
    base = out["first_create_s"]["naive_script"]
    out["ratios"] = {k: round(v / base, 2) for k, v in out["first_create_s"].items()
                     if v is not None and base}
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
