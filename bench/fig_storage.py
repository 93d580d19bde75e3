"""Figures 3 and 4: memory and throughput of the storage path.

One sandbox prediction with 15 outputs at 4K (sandbox JPEGs, ~5 MB each), rendered before timing,
stored into moto's S3 server (both servers in their own processes). Each measurement runs in a
fresh Python process that samples its own RSS every 5 ms:

- `stream`: `store_outputs` (streamed, hashed, temp key + server-side copy, and a preview made
  from the streamed bytes: the default), 4 transfers at once;
- `stream-nopreview`: the same with `SEEDREAM_PREVIEWS=false`, so the previews' cost is the
  difference;
- `naive`: 4 threads that each read an output whole (`httpx.get`) and `put_object` it;
- `throughput` (figure 4): one warmed process, previews off, interleaving the naive copy, a
  first attempt (`fresh=True`: a new prediction's outputs, no HEAD first) and a re-attempt
  (asks S3 before downloading) for several rounds; the ratio is the median of each round's
  ratio, and the process's CPU per MB is kept beside it (robust to the machine's load);
- `thumb`: the previewer alone on one 4K output's bytes, fed in the download's chunks (time
  and RSS growth per output).

Interleaved stream, stream-nopreview, naive, ...; plus one run of each with 5 outputs, to show
that peak growth does not depend on the number of images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from bench.common import QUICK, ROOT, RssSampler, bench_env, median
from bench.servers import MotoProcess, SandboxProcess

COUNT = 6 if QUICK else 15
CONCURRENCY = 4
ROUNDS = 1 if QUICK else 3
THROUGHPUT_ROUNDS = 3 if QUICK else 9
LARGE_COUNT = 4 if QUICK else 8


def child(mode: str, endpoint: str, urls: list[str]) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    bench_env()
    import httpx
    from prefect.logging import disable_run_logger

    from bench.common import destination, s3_client
    from prefect_seedream.tasks.replicate_client.prediction import Prediction
    from prefect_seedream.tasks.storage import store_outputs

    bucket = f"bench-{mode}-{os.getpid()}"
    client = s3_client(endpoint)
    client.create_bucket(Bucket=bucket)
    dest = destination(endpoint, bucket)
    http = httpx.Client(timeout=60)
    # Warm imports, connection pools and Pillow plugins outside the measurement.
    warm = Prediction.from_api({"id": "warm", "status": "succeeded", "output": urls[:1]})
    with disable_run_logger():
        store_outputs.fn(warm, dest)
    http.get(urls[0]).raise_for_status()

    def naive(job: tuple[int, str]) -> int:
        index, url = job
        body = http.get(url).content
        client.put_object(Bucket=bucket, Key=f"naive/{index}.jpg", Body=body,
                          ContentType="image/jpeg")
        return len(body)

    prediction = Prediction.from_api({"id": uuid.uuid4().hex[:26], "status": "succeeded",
                                      "output": urls})
    from concurrent.futures import ThreadPoolExecutor

    if mode == "thumb":
        return _thumb(http.get(urls[0]).content)
    if mode == "throughput":
        return _throughput(urls, dest, naive)
    start = time.perf_counter()
    with RssSampler() as rss:
        if mode.startswith("stream"):
            with disable_run_logger():
                stored = store_outputs.fn(prediction, dest, max_concurrency=CONCURRENCY)
            total = sum(s.size_bytes for s in stored)
        else:
            with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
                total = sum(pool.map(naive, enumerate(urls)))
    seconds = time.perf_counter() - start
    return {"mode": mode, "outputs": len(urls), "total_mb": round(total / 1e6, 2),
            "seconds": round(seconds, 3), "mb_per_s": round(total / 1e6 / seconds, 2),
            "baseline_rss_mb": round(rss.baseline / 2**20, 1),
            "peak_growth_mb": rss.growth_mb(), "series": rss.series_mb()}


def _throughput(urls: list[str], dest: Any, naive: Any) -> dict[str, Any]:
    """Figure 4 in one warmed process: naive copy, a first attempt (`fresh=True`, what a batch
    item and a new prediction take) and a re-attempt (asks S3 first), interleaved for
    `THROUGHPUT_ROUNDS` rounds; wall MB/s and this process's CPU ms per MB for each."""
    from concurrent.futures import ThreadPoolExecutor

    from prefect.logging import disable_run_logger

    from prefect_seedream.tasks.replicate_client.prediction import Prediction
    from prefect_seedream.tasks.storage import store_outputs

    def stream(fresh: bool) -> int:
        prediction = Prediction.from_api({"id": uuid.uuid4().hex[:26], "status": "succeeded",
                                          "output": urls})
        with disable_run_logger():
            stored = store_outputs.fn(prediction, dest, max_concurrency=CONCURRENCY, fresh=fresh)
        return sum(s.size_bytes for s in stored)

    def copy() -> int:
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            return sum(pool.map(naive, enumerate(urls)))

    variants = {"naive": copy, "first_attempt": lambda: stream(True),
                "reattempt": lambda: stream(False)}
    for measure in variants.values():  # every connection pool at full width before timing
        measure()
    mb_s: dict[str, list[float]] = {name: [] for name in variants}
    cpu_ms_per_mb: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(THROUGHPUT_ROUNDS):
        for name, measure in variants.items():
            wall, cpu = time.perf_counter(), time.process_time()
            total = measure()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            mb_s[name].append(round(total / 1e6 / wall, 2))
            cpu_ms_per_mb[name].append(round(cpu * 1000 / (total / 1e6), 2))
    return {"mode": "throughput", "rounds": THROUGHPUT_ROUNDS, "mb_s": mb_s,
            "cpu_ms_per_mb": cpu_ms_per_mb}


def _summary(speed: dict[str, Any], image_mb: float) -> dict[str, Any]:
    mb_s = speed["mb_s"]
    ratios = [s / n for s, n in zip(mb_s["first_attempt"], mb_s["naive"], strict=True)]
    return {"image_mb": image_mb, "outputs": LARGE_COUNT,
            "stream_mb_s": median(mb_s["first_attempt"]), "naive_mb_s": median(mb_s["naive"]),
            "ratio": round(median(ratios), 3), "round_ratios": [round(r, 3) for r in ratios],
            "cpu_ms_per_mb": {k: median(v) for k, v in speed["cpu_ms_per_mb"].items()}}


def _thumb(body: bytes) -> dict[str, Any]:
    """The previewer alone over one output: seconds and RSS growth, best of 5."""
    from prefect_seedream.tasks.s3_storage.previews import Thumbnailer
    from prefect_seedream.tasks.s3_storage.upload import DOWNLOAD_CHUNK

    runs = []
    for _ in range(5):
        start = time.perf_counter()
        with RssSampler(interval=0.001) as rss:
            thumbnailer = Thumbnailer(8192)
            for at in range(0, len(body), DOWNLOAD_CHUNK):
                thumbnailer.feed(body[at:at + DOWNLOAD_CHUNK])
            preview = thumbnailer.preview()
        runs.append((time.perf_counter() - start, rss.growth_mb(), len(preview or b"")))
    # Fastest time; largest RSS growth (the first run's, before the allocator reuses memory).
    return {"mode": "thumb", "image_mb": round(len(body) / 1e6, 2),
            "ms": round(min(r[0] for r in runs) * 1000, 1),
            "rss_growth_mb": max(r[1] for r in runs), "preview_bytes": runs[0][2]}


def _spawn(mode: str, endpoint: str, urls: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "SEEDREAM_PREVIEWS": "false" if mode in ("stream-nopreview", "throughput") else "true"}
    out = subprocess.run(
        [sys.executable, "-m", "bench.fig_storage", "--child", mode, endpoint, json.dumps(urls)],
        env=env, cwd=str(ROOT), check=True, capture_output=True, text=True, timeout=300)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run() -> dict[str, Any]:
    bench_env()
    import httpx

    with SandboxProcess(run_seconds=0.0) as sb, MotoProcess() as moto:
        sb.configure(auto_image_count=COUNT)
        with httpx.Client(base_url=sb.base_url, timeout=120,
                          headers={"Authorization": f"Bearer {sb.api_token}"}) as http:
            prediction = http.post(
                "/v1/models/bytedance/seedream-4/predictions", headers={"Prefer": "wait"},
                json={"input": {"prompt": "storage bench", "size": "4K", "aspect_ratio": "4:3",
                                "max_images": COUNT, "sequential_image_generation": "auto"}},
            ).json()
            urls = list(prediction["output"])
            sizes = [len(http.get(url).content) for url in urls]  # render once, cached after
            # Outputs above one 5 MiB part: the multipart path (temporary key, parts that
            # upload while the next one downloads, server-side copy).
            sb.configure(noise_sigma=64.0, jpeg_quality=95)
            large = http.post(
                "/v1/models/bytedance/seedream-4/predictions", headers={"Prefer": "wait"},
                json={"input": {"prompt": "storage bench, large", "size": "4K",
                                "aspect_ratio": "1:1", "max_images": LARGE_COUNT,
                                "sequential_image_generation": "auto"}},
            ).json()
            large_urls = list(large["output"])
            large_mb = round(len(http.get(large_urls[0]).content) / 1e6, 2)
        modes = ("stream", "stream-nopreview", "naive")
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        for _ in range(ROUNDS):
            for mode in modes:
                runs[mode].append(_spawn(mode, moto.endpoint_url, urls))
        few = {mode: _spawn(mode, moto.endpoint_url, urls[:5]) for mode in modes}
        thumb = _spawn("thumb", moto.endpoint_url, urls)
        speed = _spawn("throughput", moto.endpoint_url, urls)
        speed_large = _spawn("throughput", moto.endpoint_url, large_urls)

    def med(mode: str, key: str) -> float:
        return median([r[key] for r in runs[mode]])

    # Figure 4 compares the storage path with a raw copy: previews off (their cost is its own
    # row, 4b); figure 3's memory is the default's, previews on.
    mb_s = speed["mb_s"]
    stream_mbps, naive_mbps = median(mb_s["first_attempt"]), median(mb_s["naive"])
    # Each round's ratio (its runs are neighbours in time, so they saw the same load).
    ratios = [s / n for s, n in zip(mb_s["first_attempt"], mb_s["naive"], strict=True)]
    reattempt = [s / n for s, n in zip(mb_s["reattempt"], mb_s["naive"], strict=True)]
    stream_mem, naive_mem = med("stream", "peak_growth_mb"), med("naive", "peak_growth_mb")
    from prefect_seedream.tasks.s3_storage.upload import DOWNLOAD_CHUNK, PART_SIZE

    plain_s, plain_mem = med("stream-nopreview", "seconds"), med("stream-nopreview",
                                                                 "peak_growth_mb")
    return {
        "previews": {
            "with_s_per_output": round(med("stream", "seconds") / COUNT, 4),
            "without_s_per_output": round(plain_s / COUNT, 4),
            "time_ratio": round(med("stream", "seconds") / plain_s, 3),
            "with_growth_mb": stream_mem, "without_growth_mb": plain_mem,
            "with_mb_s": med("stream", "mb_per_s"), "without_mb_s": stream_mbps,
            "with_runs_s": [r["seconds"] for r in runs["stream"]],
            "without_runs_s": [r["seconds"] for r in runs["stream-nopreview"]],
            "without_5_outputs_mb": few["stream-nopreview"]["peak_growth_mb"],
            "alone": thumb,
        },
        "outputs": COUNT, "concurrency": CONCURRENCY, "rounds": ROUNDS,
        "image_mb": [round(min(sizes) / 1e6, 2), round(max(sizes) / 1e6, 2)],
        "total_mb": round(sum(sizes) / 1e6, 1),
        "part_size_mb": round(PART_SIZE / 2**20, 2), "download_chunk_kb": DOWNLOAD_CHUNK // 1024,
        "throughput": {"stream_mb_s": stream_mbps, "naive_mb_s": naive_mbps,
                       "ratio": round(median(ratios), 3),
                       "round_ratios": [round(r, 3) for r in ratios],
                       "reattempt_mb_s": median(mb_s["reattempt"]),
                       "reattempt_ratio": round(median(reattempt), 3),
                       "cpu_ms_per_mb": {k: median(v) for k, v in
                                         speed["cpu_ms_per_mb"].items()},
                       "rounds": speed["rounds"], "runs": mb_s,
                       "large": _summary(speed_large, large_mb),
                       "spawned_stream_mb_s": med("stream-nopreview", "mb_per_s"),
                       "spawned_naive_mb_s": med("naive", "mb_per_s"),
                       "with_previews_mb_s": med("stream", "mb_per_s")},
        "memory": {"stream_growth_mb": stream_mem, "naive_growth_mb": naive_mem,
                   "ratio": round(stream_mem / naive_mem, 3) if naive_mem else None,
                   "stream_runs": [r["peak_growth_mb"] for r in runs["stream"]],
                   "naive_runs": [r["peak_growth_mb"] for r in runs["naive"]],
                   "per_transfer_mb": round(stream_mem / CONCURRENCY, 2),
                   "stream_5_outputs_mb": few["stream"]["peak_growth_mb"],
                   "naive_5_outputs_mb": few["naive"]["peak_growth_mb"]},
        "series": {"stream": runs["stream"][0]["series"], "naive": runs["naive"][0]["series"]},
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))))
    else:
        print(json.dumps(run(), indent=2))
