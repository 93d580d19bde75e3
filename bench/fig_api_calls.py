"""Figure 2: requests the sandbox received per prediction, and latency added after completion.

A 10 s and a 90 s prediction, each awaited by every variant at once (one sandbox per duration,
counters per prediction), so the whole figure takes ~95 s. Requests = 1 create + GETs + cancels.
Added latency = when the caller had the finished prediction - the sandbox's `completed_at`.

Variants:
- `ours_default`: `create_prediction` + `await_prediction` as shipped (PollSchedule 0.5 s x1.5 up
  to 5 s, no history of earlier run times);
- `ours_wait60`: the same with `create_prediction(wait_seconds=60)` (sync mode);
- experiments driving `prefect_seedream.tasks.replicate_client.protocol` directly with other
  settings:
  `exp_wait60_poll1` (sync create; no GET if it came back finished; then poll every 1 s),
  `exp_history` (no sync; `expected_seconds` known, as after one prediction of that size),
  `exp_wait60_history` (sync create + `expected_seconds` as `plan_wait` would pass it today);
- baselines with the `replicate` client: `base_poll` (`create` + `wait()`, 0.5 s polling),
  `base_sync` (`create(wait=True)`, i.e. `Prefer: wait`, then `wait()`), `base_run`
  (`replicate.run`, which does the same but trusts any non-`starting` status as final).
"""

from __future__ import annotations

import threading
import time
import traceback
from datetime import datetime
from typing import Any

from bench.common import MODEL, QUICK, bench_env, credentials, replicate_client

DURATIONS = (10.0, 20.0) if QUICK else (10.0, 90.0)


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _variants(base_url: str, token: str, size: str) -> dict[str, Any]:
    from prefect_seedream.tasks.connections import replicate_api
    from prefect_seedream.tasks.prediction_support import retry_policy
    from prefect_seedream.tasks.predictions import await_prediction, create_prediction
    from prefect_seedream.tasks.replicate_client import protocol
    from prefect_seedream.tasks.seedream_input import SeedreamInput

    creds = credentials(base_url, token)
    api = replicate_api(creds)
    inp = {"prompt": "api calls", "size": size, "aspect_ratio": "1:1"}

    def ours(wait: int | None) -> Any:
        def go() -> str:
            created = create_prediction.fn(SeedreamInput(**inp), credentials=creds,
                                           wait_seconds=wait)
            final = await_prediction.fn(created, credentials=creds, timeout_seconds=600)
            return str(final.id), final.status.value
        return go

    def experiment(wait: int | None, schedule: dict[str, Any], skip_terminal: bool) -> Any:
        def go() -> str:
            created = api.run(protocol.create(
                MODEL, SeedreamInput(**inp).to_request(), now=protocol.utcnow,
                policy=retry_policy(), wait_seconds=wait, cancel_after_seconds=660))
            if skip_terminal and created.status.is_terminal:
                return str(created.id), created.status.value
            final = api.run(protocol.wait(
                created.id, timeout_seconds=600, now=protocol.utcnow, policy=retry_policy(),
                schedule=protocol.PollSchedule(**schedule)))
            return str(final.id), final.status.value
        return go

    client = replicate_client(base_url, token)

    def base_poll() -> str:
        prediction = client.models.predictions.create(model=MODEL, input=inp)
        prediction.wait()
        return str(prediction.id), prediction.status

    def base_sync() -> str:
        prediction = client.models.predictions.create(model=MODEL, input=inp, wait=True)
        if prediction.status not in ("succeeded", "failed", "canceled"):
            prediction.wait()
        return str(prediction.id), prediction.status

    def base_run() -> str:
        before = {p.id for p in client.predictions.list().results}
        output = client.run(MODEL, input=inp)
        made = [p.id for p in client.predictions.list().results if p.id not in before]
        return str(made[0]), "succeeded" if output else "returned no output (still running)"

    return {
        "ours_default": ours(None),
        "ours_wait60": ours(60),
        "exp_wait60_poll1": experiment(60, {"initial": 1.0, "factor": 1.0, "max_interval": 1.0},
                                       True),
        "exp_history": None,  # filled per duration (needs the expected run time)
        "exp_wait60_history": None,
        "base_poll": base_poll,
        "base_sync": base_sync,
        "base_run": base_run,
        "_experiment": experiment,
    }


def run() -> dict[str, Any]:
    bench_env()
    from prefect_seedream.sandbox import Sandbox, SandboxConfig

    sandboxes = [Sandbox(config=SandboxConfig(run_seconds=d, rate_limits=False)).start()
                 for d in DURATIONS]
    jobs: list[tuple[float, str, Any, Sandbox]] = []
    for duration, sb, size in zip(DURATIONS, sandboxes, ("1K", "2K"), strict=True):
        variants = _variants(sb.base_url, sb.api_token, size)
        experiment = variants.pop("_experiment")
        variants["exp_history"] = experiment(None, {"expected_seconds": duration}, False)
        variants["exp_wait60_history"] = experiment(60, {"expected_seconds": duration}, True)
        jobs += [(duration, name, fn, sb) for name, fn in variants.items()]

    done: dict[tuple[float, str], dict[str, Any]] = {}

    def worker(duration: float, name: str, fn: Any) -> None:
        try:
            prediction_id, status = fn()
            done[(duration, name)] = {"id": prediction_id, "done_at": time.time(),
                                      "status": status}
        except Exception as exc:
            traceback.print_exc()
            done[(duration, name)] = {"error": f"{type(exc).__name__}: {exc}"[:300]}

    threads = [threading.Thread(target=worker, args=(d, n, f)) for d, n, f, _ in jobs]
    for thread in threads:
        thread.start()
        time.sleep(0.02)  # creates 20 ms apart, not a thundering herd
    for thread in threads:
        thread.join()
    out: dict[str, Any] = {"durations_s": list(DURATIONS)}
    for duration, sb in zip(DURATIONS, sandboxes, strict=True):
        counters = sb.counters()
        table: dict[str, Any] = {}
        for (d, name), info in done.items():
            if d != duration:
                continue
            if "error" in info:
                table[name] = info
                continue
            per = counters["per_prediction"].get(info["id"], {})
            prediction = sb.prediction(info["id"])
            completed = _ts(prediction.get("completed_at"))
            table[name] = {
                "requests": 1 + per.get("gets", 0) + per.get("cancels", 0),
                "gets": per.get("gets", 0),
                "caller_saw": info["status"],
                "added_latency_s": None if completed is None
                else round(info["done_at"] - completed, 3),
            }
        out[f"{int(duration)}s"] = table
        sb.stop()
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
