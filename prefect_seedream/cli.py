"""The `seedream` command: generate or edit images, or run the local sandbox.

Exit codes scripts can rely on: 0 done, 2 bad input or usage, 3 credentials refused,
4 the prediction failed, was canceled, aborted or timed out, 5 storage failed, 130 interrupted
(the prediction is cancelled first), 1 anything else.

An error is one line (`seedream: error: ...`) and a hint; `--debug` adds the traceback and
Prefect's own log. What the command can check itself is refused before anything starts
(`prefect_seedream.cli_checks`); while it waits it names what it waits for
(`prefect_seedream.cli_progress`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect_seedream.cli_output import (
    EXIT_AUTH,
    EXIT_ERROR,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PREDICTION,
    EXIT_STORAGE,
    Context,
    exit_code_for,
    report,
)
from prefect_seedream.cli_progress import Progress, following_runs, prefect_api

__all__ = [
    "EXIT_AUTH", "EXIT_ERROR", "EXIT_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PREDICTION",
    "EXIT_STORAGE", "build_parser", "exit_code_for", "main",
]


def _storage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bucket", help="S3 bucket (default: SEEDREAM_BUCKET)")
    parser.add_argument("--prefix", help="key prefix inside the bucket (default: seedream)")
    parser.add_argument("--endpoint-url",
                        help="S3-compatible endpoint: MinIO, R2, a local moto server "
                             "(default: SEEDREAM_S3_ENDPOINT_URL, else AWS)")
    parser.add_argument("--credentials", help="name of a saved ReplicateCredentials block "
                                              "(default: REPLICATE_API_TOKEN)")
    parser.add_argument("--model", help="Replicate model, owner/name or owner/name:version "
                        "(default: SEEDREAM_MODEL, bytedance/seedream-4)")
    parser.add_argument("--debug", action="store_true",
                        help="also print Prefect's own log, and an error's traceback")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="2K", choices=["1K", "2K", "4K", "custom"])
    parser.add_argument("--width", type=int, help="with --size custom: 1024..4096")
    parser.add_argument("--height", type=int, help="with --size custom: 1024..4096")
    parser.add_argument("--max-images", type=int, default=1,
                        help="more than 1 turns on sequential generation (1..15)")
    _storage_flags(parser)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (600)")
    parser.add_argument("--request-id",
                        help="name this request (an order number): every run with the same id "
                             "and input shares one prediction, so a repeat never pays again")
    parser.add_argument("--out", default="out", help="also save copies here (default ./out)")
    parser.add_argument("--no-copies", action="store_true", help="do not save local copies")
    parser.add_argument(
        "--sandbox", action="store_true",
        help="run offline on the embedded sandbox and a local S3 server (no account, no bill)",
    )


def build_parser() -> argparse.ArgumentParser:
    from prefect_seedream.tasks.seedream_input import ASPECT_RATIOS

    ratios = ", ".join(ratio for ratio in ASPECT_RATIOS if ratio != "match_input_image")
    parser = argparse.ArgumentParser(
        prog="seedream", description="Seedream 4 on Replicate, orchestrated by Prefect, into S3."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate images from a prompt")
    generate.add_argument("prompt")
    generate.add_argument("--aspect-ratio", default="1:1", help=f"{ratios} (1:1)")
    _common(generate)
    edit = commands.add_parser("edit", help="edit images with one instruction")
    edit.add_argument("instruction")
    edit.add_argument("images", nargs="*",
                      help="s3:// URIs or https URLs (local files with --sandbox)")
    edit.add_argument("--aspect-ratio", default="match_input_image",
                      help=f"match_input_image (the default), {ratios}")
    _common(edit)
    batch = commands.add_parser("batch", help="generate/edit every row of a JSONL or CSV manifest")
    batch.add_argument("manifest", help="a .jsonl or .csv file, or an s3:// URI")
    batch.add_argument("--max-in-flight", type=int, default=16,
                       help="most predictions running at once (default 16)")
    batch.add_argument("--price", type=float,
                       help="USD per output image (default: the model's, $0.03 for Seedream 4)")
    batch.add_argument("--max-images-total", type=int, help="stop submitting past this many")
    batch.add_argument("--max-cost", type=float, help="stop submitting past this many USD")
    _storage_flags(batch)
    batch.add_argument("--timeout", type=float, default=600.0, help="seconds per prediction")
    batch.add_argument("--sandbox", action="store_true",
                       help="run offline on the embedded sandbox and a local S3 server")
    spend = commands.add_parser("spend", help="print today's and this month's spend and limits")
    _storage_flags(spend)
    commands.add_parser(
        "sandbox", add_help=False,
        help="serve the local Replicate-compatible sandbox (seedream sandbox --help)",
    )
    return parser


@contextlib.contextmanager
def _embedded(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The offline stack: the sandbox plus a local S3 server, as flow arguments."""
    from pydantic import SecretStr

    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
    from prefect_seedream.sandbox.local_s3 import LocalS3
    from prefect_seedream.sandbox.server import Sandbox

    with Sandbox() as sb, LocalS3(bucket=args.bucket or "seedream-demo") as s3:
        print(f"Sandbox Replicate API at {sb.base_url}; local S3 at {s3.endpoint_url}", flush=True)
        yield {
            "credentials": ReplicateCredentials(api_token=SecretStr(sb.api_token),
                                                base_url=sb.base_url),
            "destination": s3.destination(prefix=args.prefix or "seedream"),
            "s3": s3,
            "token": sb.api_token,
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


def _destination(args: argparse.Namespace) -> Any:
    """An `S3Destination` from the flags (then `SEEDREAM_*`), or None for the block named by
    `SEEDREAM_DESTINATION_BLOCK`; `cli_checks` has made sure one of them exists."""
    from prefect_seedream.blocks.s3_destination import S3Destination
    from prefect_seedream.tasks.seedream_settings import get_settings

    settings = get_settings()
    bucket = args.bucket or settings.bucket
    if not bucket:
        return None
    return S3Destination(
        bucket=bucket, prefix=args.prefix if args.prefix is not None else settings.prefix,
        endpoint_url=args.endpoint_url or settings.s3_endpoint_url,
        region_name=settings.region_name,
    )


def _where(destination: Any, key_prefix: str | None) -> str:
    """Where the images go, for the progress line."""
    if destination is None:
        return "the S3Destination block named by SEEDREAM_DESTINATION_BLOCK"
    prefix = str(key_prefix if key_prefix is not None else destination.prefix).strip("/")
    return f"s3://{destination.bucket}/{prefix + '/' if prefix else ''}"


@contextlib.contextmanager
def _targets(args: argparse.Namespace, ctx: Context) -> Iterator[dict[str, Any]]:
    """The flow's credentials and destination: the embedded stack, or the flags and settings."""
    if args.sandbox:
        with _embedded(args) as embedded:
            ctx.secrets.append(embedded.pop("token"))
            yield embedded
        return
    yield {"credentials": args.credentials, "destination": _destination(args),
           "key_prefix": args.prefix}


def _save_copies(images: list[Any], destination: Any, out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    client = destination.get_client()
    for image in images:
        target = folder / f"{image.prediction_id}-{image.index}.{image.key.rsplit('.', 1)[-1]}"
        client.download_file(image.bucket, image.key, str(target))
        print(f"  saved {target}")


def _run(args: argparse.Namespace, ctx: Context, progress: Progress) -> int:
    from prefect_seedream.flows.image_flows import edit_image, generate_images

    options: dict[str, Any] = {
        "size": args.size, "aspect_ratio": args.aspect_ratio, "width": args.width,
        "height": args.height, "max_images": args.max_images, "timeout_seconds": args.timeout,
        "request_id": args.request_id, "model": args.model,
    }
    with _targets(args, ctx) as targets:
        s3 = targets.pop("s3", None)
        options.update(targets)
        prefect_api(progress)
        progress.phase("checking the bucket, then waiting for Seedream to make the images")
        where = _where(options["destination"], options.get("key_prefix"))
        with following_runs(progress, storing_in=where, secrets=ctx.secrets):
            if args.command == "generate":
                images = generate_images(args.prompt, **options)
            else:
                sources = _sandbox_sources(args.images, s3) if s3 is not None else args.images
                images = edit_image(args.instruction, sources, **options)
        progress.close()  # the progress lines end before the result
        print(f"Stored {len(images)} image(s):")
        for image in images:
            print(f"  {image.uri}  {image.width}x{image.height}  {image.size_bytes:,} bytes")
        if not args.no_copies:
            from prefect_seedream.tasks.connections import resolve_destination

            _save_copies(images, resolve_destination(options["destination"]), args.out)
    return EXIT_OK


def _batch(args: argparse.Namespace, ctx: Context, progress: Progress) -> int:
    """`seedream batch MANIFEST`: the batch flow, a progress bar on stderr, a summary on stdout."""
    from prefect_seedream.flows.batch.flow import generate_batch
    from prefect_seedream.flows.batch.progress import add_listener
    from prefect_seedream.flows.batch.report import BatchItemsFailed, BatchResult, ProgressBar

    options: dict[str, Any] = {
        "max_in_flight": args.max_in_flight, "price_per_image_usd": args.price,
        "max_images_total": args.max_images_total, "max_cost_usd": args.max_cost,
        "timeout_seconds": args.timeout, "model": args.model,
    }
    with contextlib.ExitStack() as stack:
        targets = stack.enter_context(_targets(args, ctx))
        targets.pop("s3", None)
        options.update(targets)
        prefect_api(progress)
        progress.phase("reading the manifest and listing what the bucket already holds")
        stack.enter_context(following_runs(progress, storing_in="S3", secrets=ctx.secrets))
        stack.callback(add_listener(lambda event: progress.hand_over()))  # the bar takes over
        stack.callback(add_listener(ProgressBar(sys.stderr)))
        state = generate_batch(args.manifest, return_state=True, **options)
        data = state.result(raise_on_failure=False)
        progress.close()
        if isinstance(data, BaseException) and not isinstance(data, BatchItemsFailed):
            raise data  # e.g. ManifestInvalid: exit 2, every bad row listed
        result = data.result if isinstance(data, BatchItemsFailed) else data
        assert isinstance(result, BatchResult)
        print(result.summary())
        print(f"Results manifest: {result.results_uri}")
        for item in result.failed[:20]:
            print(f"  failed: {item.id} (line {item.line}): {item.error_type}: {item.error}")
    return EXIT_PREDICTION if result.failed else EXIT_OK


def _spend(args: argparse.Namespace) -> int:
    """`seedream spend`: the spend limit's periods as the ledger in the bucket holds them, in
    the markdown of the `seedream-spend` artifact."""
    from prefect_seedream.flows.spend_report import spend_markdown
    from prefect_seedream.tasks.connections import resolve_destination
    from prefect_seedream.tasks.prediction_ledger import Ledger
    from prefect_seedream.tasks.seedream_settings import get_settings
    from prefect_seedream.tasks.spend_limit import Limits, SpendGuard

    settings = get_settings()
    target = resolve_destination(_destination(args))
    from prefect_seedream.tasks.model_prices import price_per_image

    price = price_per_image(settings.model, settings.price_per_image_usd) or 0.0
    guard = SpendGuard(Ledger(target, target.prefix), Limits.of(settings),
                       price, settings.spend_time_zone)
    print(spend_markdown(guard))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `seedream` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sandbox"]:  # its options belong to the sandbox's own parser
        from prefect_seedream.sandbox.command_line import main as sandbox_main

        return sandbox_main(argv[1:])
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not args.debug and "prefect" not in sys.modules:
        # Prefect's console log (its tracebacks included) only with --debug; the flow run's
        # statuses and warnings reach the user through the progress lines instead.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from prefect_seedream.cli_checks import check

    ctx = Context(args)
    try:
        if args.command == "spend":
            return _spend(args)
        check(args, ctx)
        with Progress() as progress:
            progress.phase("loading Prefect and the flows")
            return (_batch if args.command == "batch" else _run)(args, ctx, progress)
    except KeyboardInterrupt:
        print("seedream: interrupted; a running prediction was cancelled.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        _drain_prefect()
        return report(exc, ctx, debug=args.debug)


def _drain_prefect(timeout: float = 10.0) -> None:
    """Send what Prefect's event and log workers still hold before the error is printed: they
    drain at exit, and a slow server made their "Still processing items" warning the last line
    of stderr, after the error and its hint (which must end the output)."""
    if "prefect" not in sys.modules:
        return
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for worker in (EventsWorker, APILogWorker):
            worker.drain_all(timeout=timeout)
    except Exception:  # the error below matters more than Prefect's bookkeeping
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
