"""`sandbox` / `python -m prefect_seedream.sandbox`: run the Seedream 4 sandbox until Ctrl-C."""

from __future__ import annotations

import argparse
import threading

from prefect_seedream.sandbox.config import DEFAULT_TOKEN, SandboxConfig
from prefect_seedream.sandbox.server import Sandbox


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        prog="sandbox",
        description="Serve a local Replicate-compatible API for bytedance/seedream-4.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8787, help="port to bind, 0 for any (8787)")
    parser.add_argument("--token", default=DEFAULT_TOKEN,
                        help="API token to accept (default: a fixed, fake r8_sandbox token)")
    parser.add_argument("--run-seconds", type=float, default=SandboxConfig.run_seconds,
                        help="seconds a prediction spends processing")
    parser.add_argument("--queue-seconds", type=float, default=SandboxConfig.queue_seconds,
                        help="seconds a prediction spends starting")
    parser.add_argument("--retention-seconds", type=float,
                        default=SandboxConfig.retention_seconds,
                        help="seconds outputs are kept after completion")
    parser.add_argument("--no-rate-limits", action="store_true", help="turn rate limits off")
    parser.add_argument(
        "--http-outputs", action="store_true",
        help="answer sync-mode creates with file URLs instead of data: URIs (replicate.run "
             "then returns plain strings, since the sandbox serves http, not https)",
    )
    parser.add_argument(
        "--prerendered-outputs", action="store_true",
        help="bench mode: one JPEG per output size, rendered once and served for every "
             "prompted output of that size (byte-identical), so the sandbox costs little CPU",
    )
    return parser


def main(argv: list[str] | None = None, stop: threading.Event | None = None) -> int:
    """Run the sandbox until interrupted.

    Args:
        argv: Arguments without the program name; None reads `sys.argv`.
        stop: Set it to stop serving (for embedding and tests); Ctrl-C also stops.

    Returns:
        The exit status.
    """
    args = build_parser().parse_args(argv)
    config = SandboxConfig(
        run_seconds=args.run_seconds,
        queue_seconds=args.queue_seconds,
        retention_seconds=args.retention_seconds,
        rate_limits=not args.no_rate_limits,
        sync_data_uri_outputs=not args.http_outputs,
        prerendered_outputs=args.prerendered_outputs,
    )
    try:
        config.check()
    except ValueError as exc:
        print(f"sandbox: {exc}")
        return 2
    stop = stop or threading.Event()
    with Sandbox(api_token=args.token, config=config, host=args.host, port=args.port) as sb:
        print(f"Seedream 4 sandbox serving at {sb.base_url}", flush=True)
        print("Point the replicate client at it:", flush=True)
        print(f"export REPLICATE_BASE_URL={sb.base_url}", flush=True)
        print(f"export REPLICATE_API_TOKEN={sb.api_token}", flush=True)
        print(f"Admin: {sb.base_url}/_sandbox/config  (Ctrl-C to stop)", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            print("sandbox: stopped", flush=True)
    return 0
