"""Benchmark: peak RSS growth and throughput of `store_outputs` vs read-whole-then-`put_object`.

Stores N noise-textured JPEGs of a realistic 4K size (~4-8 MB each), served by a local
`http.server` subprocess, into a moto S3 server subprocess (so neither server's memory counts).
Each mode runs in a fresh Python process; RSS is sampled every 5 ms from /proc/self/status.

Run:
    .venv/bin/python bench/bench_storage.py            # prints one JSON document
    .venv/bin/python bench/bench_storage.py --count 15 --concurrency 4
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


class PeakRss:
    """Samples RSS on a background thread while the block runs."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self.baseline = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def write_jpegs(folder: Path, count: int) -> list[int]:
    """Noise-textured JPEGs (smooth gradient + grain), ~4-8 MB like a detailed 4K render."""
    from PIL import Image, ImageFilter

    sizes = []
    variants = []
    for seed, (w, h) in enumerate([(4096, 4096), (3840, 2160), (4096, 3072)]):
        grain = Image.frombytes("RGB", (w, h), os.urandom(w * h * 3))
        base = Image.linear_gradient("L").resize((w, h)).convert("RGB")
        image = Image.blend(base, grain.filter(ImageFilter.BoxBlur(1)), 0.6 + 0.1 * seed)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=93)
        variants.append(buf.getvalue())
    for i in range(count):
        data = variants[i % len(variants)]
        (folder / f"out-{i}.jpg").write_bytes(data)
        sizes.append(len(data))
    return sizes


def run_mode(
    mode: str, endpoint: str, base_url: str, count: int, concurrency: int
) -> dict[str, Any]:
    import boto3
    import httpx

    from blocks.s3_destination import S3Destination
    from tasks.prediction_model import Prediction
    from tasks.storage import store_outputs

    bucket = f"bench-{mode}-{os.getpid()}"
    dest = S3Destination(bucket=bucket, prefix="bench", endpoint_url=endpoint,
                         region_name="us-east-1", aws_access_key_id="testing",
                         aws_secret_access_key="testing")
    client = dest.get_client()
    client.create_bucket(Bucket=bucket)
    urls = [f"{base_url}/out-{i}.jpg" for i in range(count)]
    # Warm up imports, connection pools and Pillow plugins outside the measurement.
    warm = Prediction.from_api({"id": "warm", "status": "succeeded", "output": urls[:1]})
    from prefect.logging import disable_run_logger

    with disable_run_logger():
        store_outputs.fn(warm, dest)
    httpx.get(urls[0]).raise_for_status()
    del boto3

    def naive(i_url: tuple[int, str]) -> int:
        index, url = i_url
        body = httpx.get(url).content
        client.put_object(Bucket=bucket, Key=f"naive/{index}.jpg", Body=body,
                          ContentType="image/jpeg", ChecksumAlgorithm="SHA256")
        return len(body)

    prediction = Prediction.from_api({"id": "bench", "status": "succeeded", "output": urls})
    start = time.perf_counter()
    with PeakRss() as rss:
        if mode == "stream":
            with disable_run_logger():
                stored = store_outputs.fn(prediction, dest, max_concurrency=concurrency)
            total = sum(s.size_bytes for s in stored)
        else:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                total = sum(pool.map(naive, enumerate(urls)))
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "outputs": count,
        "concurrency": concurrency,
        "total_mb": round(total / 1e6, 1),
        "seconds": round(seconds, 2),
        "mb_per_s": round(total / 1e6 / seconds, 1),
        "baseline_rss_mb": round(rss.baseline / 2**20, 1),
        "peak_rss_growth_mb": round((rss.peak - rss.baseline) / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--child", choices=["stream", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = run_mode(args.child, args.endpoint, args.base_url, args.count, args.concurrency)
        print(json.dumps(result))
        return

    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        sizes = write_jpegs(Path(tmp), args.count)
        s3_port, http_port = free_port(), free_port()
        bindir = Path(sys.executable).parent
        moto = subprocess.Popen(
            [str(bindir / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        files = subprocess.Popen([sys.executable, "-m", "http.server", str(http_port), "--bind",
                                  "127.0.0.1", "--directory", tmp],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(s3_port)
            wait_port(http_port)
            results = []
            for mode in ("stream", "naive"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", mode, "--count", str(args.count),
                     "--concurrency", str(args.concurrency), "--endpoint",
                     f"http://127.0.0.1:{s3_port}", "--base-url", f"http://127.0.0.1:{http_port}"],
                    env=env, check=True, capture_output=True, text=True,
                )
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            for proc in (moto, files):
                proc.terminate()
                proc.wait(10)
    print(json.dumps({
        "image_sizes_mb": sorted({round(s / 1e6, 2) for s in sizes}),
        "part_size_mb": 5 * 1024 * 1024 / 1e6,
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
