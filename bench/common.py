"""Helpers every figure shares: environment, sampling, interleaving, the naive baseline script."""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL = "bytedance/seedream-4"
#: `BENCH_QUICK=1` shrinks every figure (for developing the suite, not for publishing).
QUICK = os.environ.get("BENCH_QUICK") == "1"


def bench_env() -> None:
    """Process settings for a benchmark child: offline, no analytics, tasks log locally."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # console only; API logs unchanged
    os.environ.pop("REPLICATE_API_TOKEN", None)
    os.environ.pop("REPLICATE_BASE_URL", None)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


class RssSampler:
    """Samples this process's RSS every `interval` s on a thread: peak and a time series."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self.series: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            value = rss_bytes()
            self.peak = max(self.peak, value)
            self.series.append((time.perf_counter() - start, value))
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.baseline = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    def growth_mb(self) -> float:
        return round((self.peak - self.baseline) / 2**20, 1)

    def series_mb(self, points: int = 200) -> list[tuple[float, float]]:
        """The series as (seconds, growth MB), thinned to about `points` points."""
        step = max(1, len(self.series) // points)
        return [(round(t, 3), round((v - self.baseline) / 2**20, 2))
                for t, v in self.series[::step]]


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [float(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class CpuBusy:
    """Machine-wide CPU busy share over a block (1.0 = every core busy)."""

    def __enter__(self) -> CpuBusy:
        self._start = cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = cpu_times()
        self.share = round((busy - self._start[0]) / max(1.0, total - self._start[1]), 3)


def interleave(variants: dict[str, Callable[[int], Any]], rounds: int) -> dict[str, list[Any]]:
    """Run A, B, C, A, B, C, ... `rounds` times; each callable gets the round number."""
    results: dict[str, list[Any]] = {name: [] for name in variants}
    for n in range(rounds):
        for name, fn in variants.items():
            results[name].append(fn(n))
    return results


def replicate_client(base_url: str, token: str) -> Any:
    import replicate

    client = replicate.Client(api_token=token, base_url=base_url)
    # Built now: replicate builds its httpx client lazily without a lock, so 256 threads making
    # their first request at once each build one and close the others' connections under them.
    _ = client._client
    return client


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def naive_generate(client: Any, s3: Any, bucket: str, key: str, prompt: str,
                   size: str = "1K") -> int:
    """The 20-line script a user would write: `replicate.run`, read the bytes, `put_object`.

    `replicate.run` uses sync mode (`Prefer: wait`) and then polls every 0.5 s.
    """
    outputs = client.run(MODEL, input={"prompt": prompt, "size": size, "aspect_ratio": "1:1"})
    total = 0
    for index, output in enumerate(outputs):
        # replicate wraps https URLs in FileOutput; the sandbox's http URLs come back as str.
        body = output.read() if hasattr(output, "read") else _http().get(output).content
        s3.put_object(Bucket=bucket, Key=f"{key}/{index}.jpg", Body=body,
                      ContentType="image/jpeg")
        total += len(body)
    return total


_HTTP: Any = None
_HTTP_LOCK = threading.Lock()


def _http() -> Any:
    global _HTTP
    with _HTTP_LOCK:
        if _HTTP is None:
            import httpx

            _HTTP = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=200))
        return _HTTP


def credentials(base_url: str, token: str) -> Any:
    from pydantic import SecretStr

    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials

    return ReplicateCredentials(api_token=SecretStr(token), base_url=base_url)


def destination(endpoint: str, bucket: str, prefix: str = "bench") -> Any:
    from pydantic import SecretStr

    from prefect_seedream.blocks.s3_destination import S3Destination

    return S3Destination(bucket=bucket, prefix=prefix, endpoint_url=endpoint,
                         region_name="us-east-1", aws_access_key_id="testing",
                         aws_secret_access_key=SecretStr("testing"))


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu() -> dict[str, float]:
    """CPU seconds used so far by this process and by each of its child processes (by name)."""
    me = os.getpid()
    out = {"client": _proc_cpu(me)}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
            ppid = int(text.rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{entry}/cmdline") as cmd:
                argv = cmd.read().split("\0")
            name = "prefect_server" if "uvicorn" in " ".join(argv) or "prefect" in " ".join(argv) \
                else "sandbox" if "sandbox" in argv else "moto" if any("moto" in a for a in argv) \
                else os.path.basename(argv[0])
            out[name] = out.get(name, 0.0) + _proc_cpu(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 2) for k in after}
