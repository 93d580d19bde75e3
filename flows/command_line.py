"""The `seedream` command: generate or edit images, or run the local sandbox.

Exit codes scripts can rely on: 0 done, 2 bad input or usage, 3 credentials refused,
4 the prediction failed, was canceled, aborted or timed out, 5 storage failed, 130 interrupted
(the prediction is cancelled first), 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_AUTH, EXIT_PREDICTION, EXIT_STORAGE = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="2K", choices=["1K", "2K", "4K", "custom"])
    parser.add_argument("--width", type=int, help="with --size custom: 1024..4096")
    parser.add_argument("--height", type=int, help="with --size custom: 1024..4096")
    parser.add_argument("--max-images", type=int, default=1,
                        help="more than 1 turns on sequential generation (1..15)")
    parser.add_argument("--bucket", help="S3 bucket (default: SEEDREAM_BUCKET)")
    parser.add_argument("--prefix", help="key prefix inside the bucket")
    parser.add_argument("--credentials", help="name of a saved ReplicateCredentials block")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (600)")
    parser.add_argument("--out", default="out", help="also save copies here (default ./out)")
    parser.add_argument("--no-copies", action="store_true", help="do not save local copies")
    parser.add_argument(
        "--sandbox", action="store_true",
        help="run offline on the embedded sandbox and a local S3 server (no account, no bill)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seedream", description="Seedream 4 on Replicate, orchestrated by Prefect, into S3."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate images from a prompt")
    generate.add_argument("prompt")
    generate.add_argument("--aspect-ratio", default="1:1")
    _common(generate)
    edit = commands.add_parser("edit", help="edit images with one instruction")
    edit.add_argument("instruction")
    edit.add_argument("images", nargs="+",
                      help="s3:// URIs or https URLs (local files with --sandbox)")
    edit.add_argument("--aspect-ratio", default="match_input_image")
    _common(edit)
    batch = commands.add_parser("batch", help="generate/edit every row of a JSONL or CSV manifest")
    batch.add_argument("manifest", help="a .jsonl or .csv file, or an s3:// URI")
    batch.add_argument("--max-in-flight", type=int, default=16)
    batch.add_argument("--price", type=float, default=0.03, help="USD per output image (0.03)")
    batch.add_argument("--max-images-total", type=int, help="stop submitting past this many")
    batch.add_argument("--max-cost", type=float, help="stop submitting past this many USD")
    for flag, text in (("--bucket", "S3 bucket (default: SEEDREAM_BUCKET)"),
                       ("--prefix", "key prefix inside the bucket"),
                       ("--credentials", "name of a saved ReplicateCredentials block")):
        batch.add_argument(flag, help=text)
    batch.add_argument("--timeout", type=float, default=600.0, help="seconds per prediction")
    batch.add_argument("--sandbox", action="store_true",
                       help="run offline on the embedded sandbox and a local S3 server")
    commands.add_parser(
        "sandbox", add_help=False,
        help="serve the local Replicate-compatible sandbox (seedream sandbox --help)",
    )
    return parser


@contextlib.contextmanager
def _embedded(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The offline stack: the sandbox plus a local S3 server, as flow arguments."""
    from pydantic import SecretStr

    from blocks.replicate_credentials import ReplicateCredentials
    from sandbox import Sandbox
    from sandbox.local_s3 import LocalS3

    with Sandbox() as sb, LocalS3(bucket=args.bucket or "seedream-demo") as s3:
        print(f"Sandbox Replicate API at {sb.base_url}; local S3 at {s3.endpoint_url}", flush=True)
        yield {
            "credentials": ReplicateCredentials(api_token=SecretStr(sb.api_token),
                                                base_url=sb.base_url),
            "destination": s3.destination(prefix=args.prefix or "seedream"),
            "s3": s3,
        }


def _sandbox_sources(images: list[str], s3: Any) -> list[str]:
    """With --sandbox, local files are uploaded to the local S3 server first."""
    sources = []
    for i, image in enumerate(images):
        path = Path(image)
        if not image.startswith(("s3://", "http://", "https://")) and path.is_file():
            key = f"inputs/{i}-{path.name}"
            s3.client().upload_file(str(path), s3.bucket, key)
            sources.append(f"s3://{s3.bucket}/{key}")
        else:
            sources.append(image)
    return sources


@contextlib.contextmanager
def _progress_line(every: float = 5.0) -> Iterator[None]:
    """A line on stderr every few seconds while we wait, so a long run never looks hung."""
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not done.wait(every):
            print(f"  ... waiting for Seedream and S3 ({time.monotonic() - started:.0f}s)",
                  file=sys.stderr, flush=True)

    thread = threading.Thread(target=tick, name="seedream-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _destination(args: argparse.Namespace) -> Any:
    if not args.bucket:
        return None
    from blocks.s3_destination import S3Destination
    from tasks.seedream_settings import get_settings

    settings = get_settings()
    return S3Destination(
        bucket=args.bucket, prefix=args.prefix if args.prefix is not None else settings.prefix,
        endpoint_url=settings.s3_endpoint_url, region_name=settings.region_name,
    )


def _save_copies(images: list[Any], destination: Any, out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    client = destination.get_client()
    for image in images:
        target = folder / f"{image.prediction_id}-{image.index}.{image.key.rsplit('.', 1)[-1]}"
        client.download_file(image.bucket, image.key, str(target))
        print(f"  saved {target}")


def _run(args: argparse.Namespace) -> int:
    from flows.image_flows import edit_image, generate_images

    options: dict[str, Any] = {
        "size": args.size, "aspect_ratio": args.aspect_ratio, "width": args.width,
        "height": args.height, "max_images": args.max_images, "timeout_seconds": args.timeout,
    }
    with contextlib.ExitStack() as stack:
        if args.sandbox:
            stack_args = stack.enter_context(_embedded(args))
            s3 = stack_args.pop("s3")
            options.update(stack_args)
        else:
            options.update(credentials=args.credentials, destination=_destination(args),
                           key_prefix=args.prefix)
        stack.enter_context(_progress_line())
        if args.command == "generate":
            images = generate_images(args.prompt, **options)
        else:
            sources = _sandbox_sources(args.images, s3) if args.sandbox else args.images
            images = edit_image(args.instruction, sources, **options)
        print(f"Stored {len(images)} image(s):")
        for image in images:
            print(f"  {image.uri}  {image.width}x{image.height}  {image.size_bytes:,} bytes")
        if not args.no_copies:
            from tasks.connections import resolve_destination

            _save_copies(images, resolve_destination(options.get("destination")), args.out)
    return EXIT_OK


def _batch(args: argparse.Namespace) -> int:
    """`seedream batch MANIFEST`: the batch flow, a progress bar on stderr, a summary on stdout."""
    from flows.batch_flows import generate_batch
    from flows.batch_report import BatchItemsFailed, BatchResult, ProgressBar, add_listener

    options: dict[str, Any] = {
        "max_in_flight": args.max_in_flight, "price_per_image_usd": args.price,
        "max_images_total": args.max_images_total, "max_cost_usd": args.max_cost,
        "timeout_seconds": args.timeout,
    }
    with contextlib.ExitStack() as stack:
        if args.sandbox:
            embedded = stack.enter_context(_embedded(args))
            options.update(credentials=embedded["credentials"],
                           destination=embedded["destination"])
        else:
            options.update(credentials=args.credentials, destination=_destination(args),
                           key_prefix=args.prefix)
        stack.callback(add_listener(ProgressBar(sys.stderr)))
        state = generate_batch(args.manifest, return_state=True, **options)
        data = state.result(raise_on_failure=False)
        if isinstance(data, BaseException) and not isinstance(data, BatchItemsFailed):
            raise data  # e.g. ManifestInvalid: exit 2, every bad row listed
        result = data.result if isinstance(data, BatchItemsFailed) else data
        assert isinstance(result, BatchResult)
        print(result.summary())
        print(f"Results manifest: {result.results_uri}")
        for item in result.failed[:20]:
            print(f"  failed: {item.id} (line {item.line}): {item.error_type}: {item.error}")
    return EXIT_PREDICTION if result.failed else EXIT_OK


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an error, so scripts can tell what went wrong."""
    from tasks import errors

    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, (errors.InvalidInput, ValueError)):
        return EXIT_INPUT
    if isinstance(exc, errors.AuthenticationFailed):
        return EXIT_AUTH
    if isinstance(exc, (errors.PredictionFailed, errors.PredictionCanceled,
                        errors.PredictionAborted, errors.PredictionTimedOut,
                        errors.OutputExpired, errors.OutputInvalid)):
        return EXIT_PREDICTION
    if isinstance(exc, errors.StorageFailed):
        return EXIT_STORAGE
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `seedream` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sandbox"]:  # its options belong to the sandbox's own parser
        from sandbox.command_line import main as sandbox_main

        return sandbox_main(argv[1:])
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        return _batch(args) if args.command == "batch" else _run(args)
    except KeyboardInterrupt:
        print("Interrupted: the prediction was cancelled.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        print(f"seedream: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exit_code_for(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
