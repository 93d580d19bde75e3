"""What the `seedream` command checks before it starts anything: the request, the images, where
the images go and whose token pays.

Only the project's own input model and the environment are read: no Prefect, no server, no
network. A mistake found here is refused at once (exit 2, or 3 for a missing token), before a
temporary Prefect server, a flow run or a prediction exists.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from prefect_seedream.cli_output import EXIT_AUTH, Context, Refused
from prefect_seedream.tasks.seedream_input import SeedreamInput, describe_errors
from prefect_seedream.tasks.seedream_settings import get_settings

TOKEN_URL = "https://replicate.com/account/api-tokens"
# Seedream's field names as the command's flags, for the hint under a refused request.
_FLAGS = {"size": "--size", "width": "--width", "height": "--height",
          "aspect_ratio": "--aspect-ratio", "max_images": "--max-images"}
_REMOTE = ("s3://", "http://", "https://")


def _sources(args: argparse.Namespace) -> list[str]:
    """Stand-ins for the edit's images (URLs, as the model wants), after checking each one."""
    if not args.images:
        raise Refused("edit needs at least one image to edit",
                      'name it after the instruction: seedream edit "make it night" '
                      "s3://my-bucket/photo.jpg (or a local file with --sandbox)")
    stand_ins = []
    for i, image in enumerate(args.images):
        if not image.startswith(_REMOTE):
            if not args.sandbox:
                raise Refused(f"{image!r} is not an s3:// URI or an https URL",
                              "upload it to S3 first and pass its s3:// URI, or try it offline "
                              "with --sandbox, which uploads local files to its own S3")
            if not Path(image).is_file():
                raise Refused(f"no such file: {image}", "check the path of the image to edit")
        stand_ins.append(f"https://source.invalid/{i}")
    return stand_ins


def check_request(args: argparse.Namespace) -> SeedreamInput:
    """The request `generate`/`edit` will send, checked by `SeedreamInput`; `Refused` if bad."""
    edit = args.command == "edit"
    fields: dict[str, Any] = {
        "prompt": args.instruction if edit else args.prompt, "size": args.size,
        "aspect_ratio": None if args.size == "custom" else args.aspect_ratio,
        "width": args.width, "height": args.height, "max_images": args.max_images,
        "sequential_image_generation": "auto" if args.max_images > 1 else "disabled",
        "image_input": _sources(args) if edit else None,
    }
    try:
        return SeedreamInput(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problem = "; ".join(part.removeprefix("input: ")  # a rule on several fields
                            for part in describe_errors(exc).split("; "))
        fields_named = {str(part) for err in exc.errors() for part in err["loc"]}
        flags = [flag for name, flag in _FLAGS.items() if re.search(rf"\b{name}\b", problem)]
        if "prompt" in fields_named:
            what = "the instruction" if edit else "the prompt"
            hint = f'give {what} in quotes, e.g. seedream {args.command} "a red fox in snow"'
        elif "image_input" in fields_named:
            hint = "Seedream 4 takes 1 to 10 images, and at most 15 with --max-images"
        else:
            hint = (f"check {', '.join(flags) or 'the options'} "
                    f"(`seedream {args.command} --help` lists the choices)")
        raise Refused(f"invalid input: {problem}", hint) from exc


def check_destination(args: argparse.Namespace) -> None:
    """Refuse a run whose images would have nowhere to go."""
    if args.sandbox:
        if args.endpoint_url:
            raise Refused("--endpoint-url cannot be used with --sandbox",
                          "--sandbox runs its own local S3 server; drop one of the two")
        return
    settings = get_settings()
    if args.bucket or settings.bucket:
        return
    if settings.destination_block and not args.endpoint_url:
        return  # the saved S3Destination block names the bucket
    raise Refused("no S3 bucket to store the images in",
                  "pass --bucket (or set SEEDREAM_BUCKET); add --endpoint-url for MinIO, R2 or "
                  "a local S3, or try it offline with --sandbox")


def check_token(args: argparse.Namespace, ctx: Context) -> None:
    """Record in `ctx` where the Replicate token comes from and what to do if it is refused.

    The same order as `resolve_credentials`: `--credentials`, then the block named by
    `SEEDREAM_CREDENTIALS_BLOCK`, then `REPLICATE_API_TOKEN`. No token at all is refused (exit 3).
    """
    if args.sandbox:
        ctx.token_from = "the embedded sandbox"
        ctx.token_fix = "the sandbox refused its own token: rerun with --debug and report it"
        return
    name = args.credentials or get_settings().credentials_block
    if name:
        via = "--credentials" if args.credentials else "SEEDREAM_CREDENTIALS_BLOCK"
        ctx.token_from = f"the ReplicateCredentials block {name!r} ({via})"
        ctx.token_fix = (
            f"save a current token ({TOKEN_URL}) in the block {name!r}: Prefect UI > Blocks, or "
            f"ReplicateCredentials(api_token=...).save({name!r}, overwrite=True); "
            "or pass --credentials with another block"
        )
        return
    token = os.environ.get("REPLICATE_API_TOKEN", "").strip()
    if not token:
        raise Refused("no Replicate API token",
                      f"export REPLICATE_API_TOKEN=r8_... ({TOKEN_URL}), pass --credentials "
                      "BLOCK_NAME, or try it offline with --sandbox", EXIT_AUTH)
    base_url = os.environ.get("REPLICATE_BASE_URL")
    ctx.token_from = "REPLICATE_API_TOKEN" + (f" (sent to REPLICATE_BASE_URL={base_url})"
                                              if base_url else "")
    ctx.token_fix = (f"export a current token from {TOKEN_URL} as REPLICATE_API_TOKEN, "
                     "or pass --credentials BLOCK_NAME")
    ctx.secrets.append(token)


def check(args: argparse.Namespace, ctx: Context) -> None:
    """Every check the command can make on its own, in the order a user would fix them."""
    if args.command in ("generate", "edit"):
        check_request(args)
    check_destination(args)
    check_token(args, ctx)


__all__ = ["check", "check_destination", "check_request", "check_token"]
