"""Render bench/results.json into BENCHMARKS.md and the PNG plots in bench/plots/."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.common import ROOT

DOC = ROOT / "BENCHMARKS.md"
PLOTS = ROOT / "bench" / "plots"


def machine_facts() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    versions = {}
    for name in ("prefect", "replicate", "boto3", "httpx", "moto", "pillow", "prefect-seedream"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gb": mem_gb,
            "python": platform.python_version(), "os": platform.platform(terse=True),
            "packages": versions, "git_commit": git_commit()}


def git_commit() -> str:
    """The checkout's short commit, or "-" without git."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip() or "-"
    except OSError:
        return "-"


def _yes(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**yes**" if ok else "**no**")


def _get(d: Any, *path: Any, default: Any = None) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _rows(figs: dict[str, Any]) -> tuple[list[list[str]], list[str]]:
    """Table rows (figure, ours, baseline, ratio, target, met?) and the missed-figure names."""
    rows: list[list[str]] = []
    missed: list[str] = []

    def add(fig: str, ours: str, base: str, ratio: str, target: str, ok: bool | None,
            key: str) -> None:
        rows.append([fig, ours, base, ratio, target, _yes(ok)])
        if ok is False and key not in missed:
            missed.append(key)

    f1 = figs.get("fig_orchestration", {})
    if "ratios" in f1:
        r = f1["ratios"]["prefect"]
        prefect_s = _get(f1, "wall_s", "prefect")
        add(f"1. Orchestration: {f1['n']} predictions, {f1['latency_s']:g} s latency, "
            f"concurrency {f1['concurrency']} ({f1.get('prefect_path', '')})",
            f"{sorted(prefect_s)[len(prefect_s) // 2]:.1f} s", f"{f1['naive_s']:.1f} s "
            "(naive script, 10 threads)", f"{r:.2f}x", "<= 1.05x", r <= 1.05, "fig1")
        rq = f1.get("requests_per_prediction", {})
        if "prefect" in rq:
            add(f"1c. Replicate API requests per prediction in figure 1 (creates, gets, lists, "
                f"cancels; {f1['latency_s']:g} s predictions end inside the sync window)",
                f"{rq['prefect']:g}", f"{rq.get('naive', 0):g} (naive script: "
                "`replicate.run` polls)", "-", "<= 1.5", rq["prefect"] <= 1.5, "fig1")
        if "empty_flow_s" in f1:
            add("1e. Prefect's fixed cost of one flow run: an empty `@flow` on the same server, "
                "interleaved with figure 1 (creating the run, its states, and joining the "
                "engine's heartbeat thread, which sleeps in 1 s steps)",
                f"{f1['empty_flow_s']:.2f} s", "0 s (no flow run)", "-", "reported", None,
                "fig1")
        if "no_heartbeat" in f1["ratios"]:
            nohb = sorted(_get(f1, "wall_s", "no_heartbeat"))
            add("1f. Figure 1 with the flow engine's heartbeat thread off (diagnosis, "
                "interleaved: `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` unset; the default keeps it)",
                f"{nohb[len(nohb) // 2]:.1f} s", f"{f1['naive_s']:.1f} s",
                f"{f1['ratios']['no_heartbeat']:.2f}x", "reported", None, "fig1")
        st = f1.get("prefect_startup", {})
        add("1b. Prefect start-up (separate): API server start + `import prefect`",
            f"{st.get('server_start_s', 0):.1f} s + {st.get('import_prefect_s', 0):.1f} s",
            "0 s (no server)", "-", "reported", None, "fig1")
    elif f1:
        add("1. Orchestration", "error", "-", "-", "<= 1.05x", None, "fig1")
    f1pg = figs.get("fig_orchestration_pg", {})
    if "ratios" in f1pg:
        r = f1pg["ratios"]["prefect"]
        walls = sorted(_get(f1pg, "wall_s", "prefect"))
        add(f"1. Orchestration on a Postgres-backed `prefect server` (figure 1's run, "
            f"{f1pg['n']} x {f1pg['latency_s']:g} s at {f1pg['concurrency']})",
            f"{walls[len(walls) // 2]:.1f} s", f"{f1pg['naive_s']:.1f} s (naive script, same "
            "run)", f"{r:.2f}x", "<= 1.05x", r <= 1.05, "fig1")
    elif f1pg:
        add("1. Orchestration on Postgres", f1pg.get("skipped") or "error", "-", "-",
            "<= 1.05x", None, "fig1")

    f2 = figs.get("fig_api_calls", {})
    # The flows create in sync mode (`ours_wait60`): that is the shipped path the targets judge.
    # The bare tasks without `wait_seconds` (`ours_default`) are reported beside it.
    for variant, label, judged in (("ours_wait60", "flows, sync mode", True),
                                   ("ours_default", "tasks, no wait_seconds", False)):
        for dur in ("10s", "90s", "20s"):
            t = f2.get(dur)
            if not t or variant not in t or "requests" not in t[variant]:
                continue
            ours = t[variant]
            poll, sync = t.get("base_poll", {}), t.get("base_sync", {})
            if "requests" in poll:
                ratio = ours["requests"] / poll["requests"]
                add(f"2. API calls ({label}), {dur} prediction: vs create + wait() (0.5 s polling)",
                    f"{ours['requests']} requests", f"{poll['requests']} requests",
                    f"{ratio:.2f}x", "<= 0.33x" if judged else "reported",
                    ratio <= 1 / 3 if judged else None, "fig2")
            if "requests" in sync:
                ratio = ours["requests"] / sync["requests"]
                add(f"2. API calls ({label}), {dur} prediction: vs sync mode then polling",
                    f"{ours['requests']} requests", f"{sync['requests']} requests",
                    f"{ratio:.2f}x", "<= 1.0x" if judged else "reported",
                    ratio <= 1.0 if judged else None, "fig2")
            lat = ours.get("added_latency_s")
            if lat is not None:
                add(f"2. Added latency after completion ({label}), {dur} prediction",
                    f"{lat:.2f} s", f"{poll.get('added_latency_s', 0):.2f} s (0.5 s polling)",
                    "-", "< 1 s" if judged else "reported", lat < 1.0 if judged else None,
                    "fig2")

    f3 = figs.get("fig_storage", {})
    mem = f3.get("memory")
    if mem:
        chunk = f3["part_size_mb"]
        limit = 3 * chunk * f3["concurrency"]
        few = mem["stream_5_outputs_mb"]
        independent = abs(mem["stream_growth_mb"] - few) <= max(0.2 * few, 4.0)
        add(f"3. Peak RSS growth storing {f3['outputs']} x 4K outputs "
            f"({f3['image_mb'][0]}-{f3['image_mb'][1]} MB), {f3['concurrency']} at once",
            f"{mem['stream_growth_mb']} MB ({mem['per_transfer_mb']} MB per transfer; "
            f"{few} MB with 5 outputs)",
            f"{mem['naive_growth_mb']} MB (read whole + put_object)", f"{mem['ratio']:.2f}x",
            f"<= 3 parts ({chunk:g} MiB) per transfer = {limit:g} MB, same for 5 and 15 outputs",
            mem["stream_growth_mb"] <= limit and independent, "fig3")
        th = f3["throughput"]
        cpu = th.get("cpu_ms_per_mb", {})
        rounds = th.get("rounds", f3.get("rounds"))
        add(f"4. Storage throughput, sandbox file URL -> moto S3, SHA-256 computed and checked, "
            f"a first attempt (`fresh=True`), previews off (their cost is 4b); median of "
            f"{rounds} interleaved rounds' ratios",
            f"{th['stream_mb_s']} MB/s, {cpu.get('first_attempt', '-')} ms CPU/MB",
            f"{th['naive_mb_s']} MB/s, {cpu.get('naive', '-')} ms CPU/MB (download then "
            "upload)", f"{th['ratio']:.2f}x", ">= 0.95x", th["ratio"] >= 0.95, "fig4")
        if "large" in th:
            lg = th["large"]
            lcpu = lg["cpu_ms_per_mb"]
            add(f"4. Storage throughput of outputs above one part ({lg['outputs']} x "
                f"{lg['image_mb']} MB: multipart, each part uploading while the next downloads, "
                "temporary key + server-side copy)",
                f"{lg['stream_mb_s']} MB/s, {lcpu.get('first_attempt', '-')} ms CPU/MB",
                f"{lg['naive_mb_s']} MB/s, {lcpu.get('naive', '-')} ms CPU/MB",
                f"{lg['ratio']:.2f}x", ">= 0.95x", lg["ratio"] >= 0.95, "fig4")
        if "reattempt_ratio" in th:
            add("4. Storage throughput of a re-attempt (asks S3 for the key before downloading)",
                f"{th['reattempt_mb_s']} MB/s, {cpu.get('reattempt', '-')} ms CPU/MB",
                f"{th['naive_mb_s']} MB/s", f"{th['reattempt_ratio']:.2f}x", "reported", None,
                "fig4")
    pv = f3.get("previews")
    if pv:
        add(f"4b. Previews' cost: `store_outputs` of {f3['outputs']} x 4K outputs, "
            f"{f3['concurrency']} at once, previews on (default) vs `SEEDREAM_PREVIEWS=false`",
            f"{pv['with_s_per_output'] * 1000:.0f} ms per output, {pv['with_growth_mb']} MB "
            f"peak RSS growth",
            f"{pv['without_s_per_output'] * 1000:.0f} ms, {pv['without_growth_mb']} MB",
            f"{pv['time_ratio']:.2f}x time", "reported (issue #16)", None, "fig4")
        alone = pv["alone"]
        add(f"4b. One preview alone: a {alone['image_mb']} MB 4K JPEG fed in download chunks, "
            "draft-mode decode, <= 8 KiB JPEG out",
            f"{alone['ms']} ms, {alone['rss_growth_mb']} MB RSS growth "
            f"({alone['preview_bytes']} B preview)", "-", "-", "reported (issue #16)", None,
            "fig4")

    f5 = figs.get("fig_scaling", {})
    for c, level in f5.get("levels", {}).items():
        add(f"5. Throughput at concurrency {c} ({level['n']} predictions, "
            f"{f5['latency_s']:g} s latency; ideal {level['ideal_per_min']:g}/min)",
            f"{level['prefect']['per_min']:g}/min", f"{level['naive']['per_min']:g}/min",
            f"{level['ratio']:.2f}x", "scales like the baseline (reported)", None, "fig5")

    _large_rows(figs.get("fig_throughput_large", {}), add)

    fe = figs.get("fig_manifest", {})
    if fe.get("ours_peak_mb") is not None:
        add(f"(e) Checking a {fe['rows']:,}-row manifest ({fe['file_mb']} MB JSONL) before any "
            "create: `load_manifest` + each row against the published schema + request keys",
            f"{fe['ours_peak_mb']} MB peak RSS, {fe['ours_s']:.1f} s",
            f"{fe['baseline_peak_mb']} MB, {fe['baseline_s']:.1f} s (`json.loads` of every line; "
            "both processes import the plugin first)",
            f"{fe['ours_peak_mb'] / fe['baseline_peak_mb']:.2f}x memory",
            "<= 300 MB (issue #14)", fe["ours_peak_mb"] <= 300, "fige")

    f6 = figs.get("fig_cold_start", {})
    fc = f6.get("first_create_s", {})
    if fc.get("naive_script"):
        for key, label in (("cli_api_up", "API up"), ("cli_no_api", "no API: temporary server")):
            if fc.get(key) is not None:
                add(f"6. `seedream generate` to first create ({label})", f"{fc[key]:.2f} s",
                    f"{fc['naive_script']:.2f} s (naive script)", f"{f6['ratios'][key]:.2f}x",
                    "reported", None, "fig6")
        imp = f6["import_s"]
        pulls = f6["import_pulls_prefect"]["public"]
        add("6. `import prefect_seedream` (fresh interpreter)",
            f"{imp['public'] * 1000:.0f} ms{' (pulls in Prefect!)' if pulls else ''}",
            f"{imp['replicate_boto3'] * 1000:.0f} ms (`import replicate, boto3`)",
            f"{imp['public'] / imp['replicate_boto3']:.2f}x",
            "light: no Prefect import, <= 1.0x", (not pulls) and
            imp["public"] <= imp["replicate_boto3"], "fig6")

    fa = figs.get("fig_sandbox", {})
    if "loaded_seq" in fa:
        add(f"(a) Sandbox GET p50 / p99, {fa['in_flight']} in flight (sequential)",
            f"{fa['loaded_seq']['p50_ms']:.2f} / {fa['loaded_seq']['p99_ms']:.2f} ms",
            f"{fa['idle_seq']['p50_ms']:.2f} / {fa['idle_seq']['p99_ms']:.2f} ms (1 in flight)",
            f"{fa['ratio_p50_seq']:.2f}x / {fa['ratio_p99_seq']:.2f}x", "reported", None, "a")
        add(f"(a) Sandbox GET p50 / p99, {fa['in_flight']} in flight, {fa['threads']} threads",
            f"{fa['loaded_8t']['p50_ms']:.2f} / {fa['loaded_8t']['p99_ms']:.2f} ms",
            f"{fa['idle_8t']['p50_ms']:.2f} / {fa['idle_8t']['p99_ms']:.2f} ms (1 in flight)",
            f"- / {fa['ratio_p99_8t']:.2f}x", "reported", None, "a")

    fb = figs.get("fig_loop_lag", {})
    if "busy_max_ms" in fb:
        add(f"(b) Event-loop max lag, {fb['tasks']} `agenerate_images` in one async flow "
            f"({fb.get('threads', 40)} worker threads per loop)",
            f"{fb['busy_max_ms']} ms (p99 {fb['busy_p99_ms']} ms)",
            f"{fb['idle_max_ms']} ms (p99 {fb['idle_p99_ms']} ms), idle flow",
            f"{fb['ratio_max']:.1f}x", "max < 100 ms (issue #14)", fb["busy_max_ms"] < 100, "b")
        if "busy_40_threads_max_ms" in fb:
            add("(b) The same, 40 worker threads per loop (anyio's default, the async twins "
                "before `SEEDREAM_ASYNC_WORKER_THREADS`)",
                f"{fb['busy_40_threads_max_ms']} ms (p99 {fb['busy_40_threads_p99_ms']} ms), "
                f"{fb['busy_40_threads_seconds']} s",
                f"{fb['busy_max_ms']} ms, {fb['busy_seconds']} s ({fb['threads']} threads)",
                f"{fb['busy_40_threads_max_ms'] / max(fb['busy_max_ms'], 0.1):.1f}x",
                "reported: what the bound bought", None, "b")

    _batch_memory_rows(figs.get("fig_batch", {}), add)
    fd = figs.get("fig_ledger", {})
    if "latency_ms" in fd:
        lat, per = fd["latency_ms"], fd["per_second_at_16"]
        for path, label in (("flow", "a flow run's request"), ("batch", "a batch item")):
            add(f"(d) Ledger cost per prediction, {label} (before: no claim; after: claimed)",
                f"{lat[f'after_{path}']:.1f} ms, {per[f'after_{path}']:g}/s at "
                f"{fd['threads']} threads",
                f"{lat[f'before_{path}']:.1f} ms, {per[f'before_{path}']:g}/s",
                f"{lat[f'after_{path}'] / lat[f'before_{path}']:.2f}x latency",
                "reported: the claim's price", None, "d")
        if "after_flow_spend_day" in lat:
            add("(d) Spend limit's reservation per prediction (a daily limit; after: reserved "
                "and settled)",
                f"{lat['after_flow_spend_day']:.1f} ms, {per['after_flow_spend_day']:g}/s",
                f"{lat['after_flow']:.1f} ms, {per['after_flow']:g}/s",
                f"{lat['after_flow_spend_day'] / lat['after_flow']:.2f}x latency",
                "reported: the limit's price", None, "d")
    _sustained_rows(figs.get("fig_sustained", {}), add)
    return rows, missed


def _sustained_rows(f6: dict[str, Any], add: Any) -> None:
    """Target 6 (bench/fig_sustained.py): creates/min against the 600/min limit, per run."""
    for name, r in f6.get("runs", {}).items():
        if not isinstance(r, dict) or "ratio" not in r:
            continue
        db, workers, *rest = name.split("_")
        cpu = r["cpu_ms_per_prediction"]
        if rest:  # the diagnosis run without the shared limit: context, not the target
            db += ", no shared limit (diagnosis)"
        # The budget is a token bucket (the limit's burst, refilled at its decay), the shape
        # Replicate's own limit has: no window may hold more than burst + decay x window.
        gcl, window = f6["gcl"], f6["window_s"]
        bound = (gcl["limit"] + gcl["slot_decay_per_second"] * window) * 60 / window
        items = r["workers"] * r["items_per_worker"]
        ok = (r["ratio"] >= 0.95 and r["max_window_per_min"] <= bound * 1.05
              and r["achieved_per_min"] <= 600 and r["succeeded"] == items
              and (r["rate_limited_429"] or 0) <= 0.02 * max(1, r["creates"]))
        commit = f", at {r['measured_at_commit']}" if r.get("measured_at_commit") else ""
        add(f"6. Sustained at the rate limit, {workers[:-1]} worker(s), {db}, "
            f"{f6['duration_s']} s, {f6['latency_s']:g} s latency, {r['max_in_flight']} in "
            f"flight per worker{commit}",
            f"{r['achieved_per_min']:g} creates/min (30 s windows {r['per_window_per_min']}), "
            f"{r['rate_limited_429']} 429s, {r['succeeded']} of {items} items succeeded; "
            "CPU/prediction: worker "
            f"{cpu['worker']:g} ms, Prefect server {cpu['prefect_server']:g} ms, sandbox "
            f"{cpu['sandbox']:g} ms, moto {cpu['moto']:g} ms",
            "600 creates/min (the limit)", f"{r['ratio']:.2f}x",
            f">= 0.95x and <= 600/min overall, no {window:g} s window over the bucket's "
            f"{bound:.0f}/min (burst + decay), 429s <= 2 %, every item stored", ok, "fig6")
    for note in f6.get("analysis", []):
        add("6. analysis", note, "-", "-", "-", None, "fig6")
    if "postgres" in f6:
        add("6. Postgres", str(f6["postgres"]), "-", "-", "-", None, "fig6")


def _batch_memory_rows(fc: dict[str, Any], add: Any) -> None:
    """Figure (c), issue #14 target 4: a batch's peak RSS <= 200 MB, flat from 10 % to 100 %."""
    raw = fc.get("raw") or {}
    if fc.get("status") != "measured" or "rss_at_10pct_mb" not in raw:
        add("(c) Batch peak RSS", "**pending**", "-", "-", fc.get("reason", "not run"), None, "c")
        return
    items, peak = raw["items"], raw["peak_rss_mb"]
    r10, r100, growth = raw["rss_at_10pct_mb"], raw["rss_at_100pct_mb"], raw["growth_10_to_100_pct"]
    label = (f"{items:,} items, {raw['max_in_flight']} in flight, {raw['model_seconds']:g} s "
             f"model, {raw['wall_seconds']:.0f} s wall ({raw['state']})")
    add(f"(c) Batch peak RSS: {label}", f"{peak} MB",
        f"{raw['rss_before_mb']} MB before the batch (Prefect + plugin + boto3 imported)",
        f"{peak / raw['rss_before_mb']:.2f}x", "<= 200 MB (issue #14)", peak <= 200, "c")
    add(f"(c) Batch RSS flat: growth from 10 % to 100 % of {items:,} items",
        f"{r10} -> {r100} MB ({growth:+.1f} %, {raw['slope_mb_per_1000_items']:+.2f} MB per "
        "1,000 items)", f"{r10} MB at 10 %", f"{r100 / r10:.2f}x", "<= +10 % (issue #14)",
        growth <= 10, "c")


def _rss_plot(fc: dict[str, Any], plt: Any) -> str | None:
    """bench/plots/rss_vs_items.png from figure (c)'s (items_done, rss_mb) series."""
    raw = fc.get("raw") or {}
    series = raw.get("series")
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([p[0] for p in series], [p[1] for p in series], label="generate_batch RSS")
    ax.axhline(200, color="r", linestyle=":", label="target 200 MB")
    ax.axhline(raw["rss_before_mb"], color="k", linestyle="--", linewidth=0.8,
               label="before the batch")
    ax.set_xlabel("items completed")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"RSS vs items: {raw['items']:,}-item batch, {raw['max_in_flight']} in flight")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "rss_vs_items.png", dpi=110)
    plt.close(fig)
    return "bench/plots/rss_vs_items.png"


def _ledger_table(fd: dict[str, Any]) -> str:
    rows = [[f"`{name}`", str(fd["requests_per_prediction"][name]),
             f"{fd['latency_ms'][name]:.1f} ms", f"{fd['per_second_at_16'][name]:g}",
             "yes" if fd["claims_two_runs_safely"][name] else "no"]
            for name in ("before_flow", "after_flow", "before_batch", "after_batch",
                         "after_flow_spend_day", "after_flow_spend_day_month")
            if name in fd["latency_ms"]]
    return _table(rows, ["variant", "requests per prediction", "latency (median)",
                         f"per second at {fd['threads']} threads", "two runs pay once?"])


def _table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fig2_table(f2: dict[str, Any]) -> str:
    rows = []
    for dur in ("10s", "90s", "20s"):
        for name, v in sorted(f2.get(dur, {}).items()):
            if "requests" in v:
                rows.append([dur, f"`{name}`", str(v["requests"]), str(v["gets"]),
                             f"{v['added_latency_s']:.2f} s" if v["added_latency_s"] is not None
                             else "-", v.get("caller_saw", "")])
            else:
                rows.append([dur, f"`{name}`", "error", "", "", v.get("error", "")[:80]])
    return _table(rows, ["prediction", "variant", "requests", "GETs", "added latency",
                         "caller saw"])


def _fig5_table(f5: dict[str, Any]) -> str:
    rows = []
    for c, lv in f5.get("levels", {}).items():
        for side in ("prefect", "naive"):
            s = lv[side]
            cpu = ", ".join(f"{k} {v:g}" for k, v in s["cpu_s"].items())
            rows.append([c, side, str(lv["n"]), f"{s['wall_s']:g} s", f"{s['per_min']:g}",
                         f"{s['per_min'] / lv['ideal_per_min']:.2f}",
                         f"{s['machine_cpu_busy']:.2f}", cpu])
    return _table(rows, ["concurrency", "side", "predictions", "wall", "per minute",
                         "of ideal", "machine CPU busy", "CPU seconds by process"])


def _plots(results: dict[str, Any]) -> list[str]:
    PLOTS.mkdir(parents=True, exist_ok=True)
    figs = results.get("figures", {})
    made = []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - the `bench` extra installs it
        print("[bench] matplotlib missing (pip install -e '.[bench]'); no plots", file=sys.stderr)
        return made
    f5 = figs.get("fig_scaling", {})
    if f5.get("levels"):
        cs = [int(c) for c in f5["levels"]]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(cs, [f5["levels"][str(c)]["ideal_per_min"] for c in cs], "k:", label="ideal")
        ax.plot(cs, [f5["levels"][str(c)]["naive"]["per_min"] for c in cs], "o-",
                label="naive script (threads)")
        ax.plot(cs, [f5["levels"][str(c)]["prefect"]["per_min"] for c in cs], "s-",
                label=f"prefect-seedream ({f5.get('prefect_path', '')})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_xlabel("concurrency")
        ax.set_ylabel("predictions per minute")
        ax.set_title(f"Throughput vs concurrency ({f5['latency_s']:g} s model latency)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(PLOTS / "throughput_vs_concurrency.png", dpi=110)
        plt.close(fig)
        made.append("bench/plots/throughput_vs_concurrency.png")
    f3 = figs.get("fig_storage", {})
    if f3.get("series"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, label in (("stream", "store_outputs (streamed)"),
                            ("naive", "read whole + put_object")):
            pts = f3["series"][name]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label)
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS growth (MB)")
        ax.set_title(f"Memory while storing {f3['outputs']} x 4K outputs, "
                     f"{f3['concurrency']} at once")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(PLOTS / "memory_while_storing.png", dpi=110)
        plt.close(fig)
        made.append("bench/plots/memory_while_storing.png")
    rss_plot = _rss_plot(figs.get("fig_batch", {}), plt)
    if rss_plot:
        made.append(rss_plot)
    return made


def _large_rows(f: dict[str, Any], add: Any) -> None:
    """Figure 1d: `generate_batch` at 1,000 / 64 and 2,000 / 256 vs the script, per database."""
    if not f:
        return
    for db, label in (("sqlite", "SQLite test harness"), ("postgres", "Postgres server")):
        result = f.get(db, {})
        if "skipped" in result or "levels" not in result:
            add(f"1d. Throughput at scale ({label})", result.get("skipped", "error"), "-", "-",
                ">= 0.9x", None, "fig1d")
            continue
        for c, errors in result.get("errors", {}).items():
            add(f"1d. Throughput at {c} in flight ({label})", "failed: " + "; ".join(
                f"{side}: {error}" for side, error in errors.items()), "-", "-", ">= 0.9x",
                None, "fig1d")
        for c, level in result["levels"].items():
            p, n = level["prefect"], level["naive"]
            cpu = p["cpu_s"]
            add(f"1d. Throughput, {level['n']:,} predictions at {c} in flight, "
                f"{f['latency_s']:g} s latency ({label}; ideal {level['ideal_per_min']:g}/min)",
                f"{p['per_min']:g}/min (CPU s: client {cpu.get('client', '-')}, "
                f"Prefect server {cpu.get('prefect_server', '-')})",
                f"{n['per_min']:g}/min (naive script, {c} threads)", f"{level['ratio']:.2f}x",
                ">= 0.9x", level["ratio"] >= 0.9, "fig1d")


def _stale_note(figs: dict[str, Any], commit: str | None) -> str:
    """Name the figures an earlier run measured (a `--only` run keeps the others' results)."""
    older = sorted(f"{name} ({fig.get('measured_at_commit', 'an earlier commit')})"
                   for name, fig in figs.items()
                   if isinstance(fig, dict) and fig.get("measured_at_commit") != commit)
    return f" Figures kept from earlier runs: {', '.join(older)}." if older else ""


def render(results: dict[str, Any]) -> None:
    from bench.analysis import analysis_for

    figs = results.get("figures", {})
    rows, missed = _rows(figs)
    plots = _plots(results)
    m = results.get("machine", {})
    pk = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())
    parts = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m bench` (bench/report.py); edit the code, not this file. -->",
        "",
        "Does the Prefect plugin cost anything over a 20-line `replicate` + `boto3` script? Every "
        "figure below is a ratio against a baseline measured **in the same run, interleaved** "
        "(A, B, A, B, ...), against the sandbox (`sandbox/`) and moto's S3 server over loopback. "
        "Nothing here is a test assertion.",
        "",
        "- Reproduce: `make bench` (installs PostgreSQL from the system packages when it can, "
        "then every figure). One figure: `python -m bench --only fig_storage`; re-render: "
        "`python -m bench --render-only`.",
        f"- Last run: `{results.get('command', 'python -m bench')}`, "
        f"{results.get('total_seconds', 0):.0f} s.{_stale_note(figs, m.get('git_commit'))}",
        f"- Generated {results.get('generated_at', '?')} at commit {m.get('git_commit', '?')}"
        " (plus the working tree).",
        f"- Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('memory_gb')} GB RAM, "
        f"{m.get('os')}, Python {m.get('python')}; {pk}.",
        f"- Load average (1/5/15 min) before: {results.get('load_average_before')}, after: "
        f"{results.get('load_average_after')}. The machine is shared; the interleaving is what "
        "keeps the ratios fair, absolute numbers move with load.",
        "",
        "## Summary",
        "",
        _table(rows, ["figure", "ours", "baseline", "ratio", "target", "met?"]),
        "",
    ]
    if plots:
        parts += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    parts += ["## Figure 2 in detail: every await variant", "",
              "Requests = 1 create + GETs + cancels, counted by the sandbox per prediction. "
              "`ours_*` are the shipped tasks; `exp_*` drive "
              "`prefect_seedream.tasks.replicate_client.protocol` with other settings "
              "(experiments, not shipped); `base_*` use the `replicate` client.", "",
              _fig2_table(figs.get("fig_api_calls", {})), "",
              "## Figure 5 in detail: where it stops scaling", "",
              _fig5_table(figs.get("fig_scaling", {})), ""]
    if "latency_ms" in figs.get("fig_ledger", {}):
        parts += ["## Figure d in detail: the prediction ledger, before and after", "",
                  "Before: Prefect Variables for flows (3 API writes on the SQLite test "
                  "server), plain S3 records for batches (PUT + DELETE); neither could stop "
                  "two runs paying for one request. After: one S3 ledger of conditional "
                  "writes (claim `If-None-Match`, then `If-Match` updates; a batch item also "
                  "keeps its run's open pointer). `after_flow_spend_*` add the spend limit: "
                  "each limited period's one record is read and compare-and-swapped at the "
                  "reservation and at the settle, so concurrent creates of a period serialise "
                  "on it (a collision re-reads and retries). Against moto's S3 server, one "
                  "process on loopback.", "", _ledger_table(figs["fig_ledger"]), ""]
    parts += analysis_for(figs, missed)
    parts += ["## How each figure is measured", "",
              "See the docstring at the top of each `bench/fig_*.py`; raw numbers are in "
              "`bench/results.json` and each run's log in `bench/results/` (not committed).", ""]
    DOC.write_text("\n".join(parts))
