"""What the `seedream` command prints when something goes wrong: one line, one hint, an exit code.

`seedream: error: WHAT` then `  hint: WHAT TO DO`, both naming the command's own flags; the
traceback only with `--debug`. Nothing printed here ever holds a token or a presigned URL's
query string. Imports nothing heavy, so refusing bad input stays instant.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, TextIO

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_AUTH, EXIT_PREDICTION, EXIT_STORAGE = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130

_URL_QUERY = re.compile(r"(https?://[^\s?#'\"]+)\?[^\s'\"]*")
_TOKEN = re.compile(r"\br8_[A-Za-z0-9_]+")
_DEBUG_HINT = "rerun with --debug to see the traceback"
_PAGE = "https://replicate.com/p/"


class Refused(Exception):
    """A problem the command found itself, before or instead of running a flow."""

    def __init__(self, message: str, hint: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


@dataclass
class Context:
    """What the hints need to know about this run: the flags given and where the token is from."""

    args: Any
    token_from: str = "the Replicate token"  # e.g. "REPLICATE_API_TOKEN", "the block 'prod'"
    token_fix: str = "check the token"
    secrets: list[str] = field(default_factory=list)


def redact(text: str, secrets: list[str]) -> str:
    """`text` without the given secrets, `r8_` tokens or URL query strings (signatures)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _TOKEN.sub("r8_***", _URL_QUERY.sub(r"\1?<redacted>", text))


def known_secrets() -> list[str]:
    """Secrets this process could print by accident: the token and AWS keys in the environment."""
    names = ("REPLICATE_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    return [value for name in names if len(value := os.environ.get(name, "").strip()) >= 4]


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an error, so scripts can tell what went wrong."""
    from prefect_seedream.tasks import errors

    if isinstance(exc, Refused):
        return exc.code
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


def _split(message: str) -> tuple[str, str]:
    """The project's messages read "what happened; what to do": split them at the first "; "
    outside parentheses."""
    depth = 0
    for i, char in enumerate(message):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and message.startswith("; ", i):
            return message[:i], message[i + 2:]
    return message, ""


def _storage_hint(ctx: Context) -> str:
    args = ctx.args
    if getattr(args, "sandbox", False):
        return f"the embedded local S3 failed; {_DEBUG_HINT}"
    flags = "--bucket" + (f" and --endpoint-url ({args.endpoint_url})" if args.endpoint_url
                          else " (and --endpoint-url for MinIO, R2 or a local S3)")
    return f"check {flags}, and that your AWS credentials can write there"


def explain(exc: BaseException, ctx: Context) -> tuple[str, str]:
    """The error line and the hint line for `exc`, in the command's own terms."""
    from prefect_seedream.tasks import errors

    if isinstance(exc, Refused):
        return exc.message, exc.hint
    if not isinstance(exc, errors.SeedreamError):
        text = str(exc).strip() or type(exc).__name__
        head, rest = _split(text)
        if "block document" in text:
            return head, "check the name with `prefect block ls` (on the same PREFECT_API_URL)"
        return f"{type(exc).__name__}: {head}", rest or _DEBUG_HINT
    first, *details = exc.message.splitlines() or [""]  # e.g. every bad manifest row
    head, rest = (first, "") if isinstance(exc, errors.PredictionFailed) else _split(first)
    rest = rest.rstrip(":")
    made = f" (prediction {exc.prediction_id})" if exc.prediction_id else ""
    timeout = f"{getattr(ctx.args, 'timeout', 0):g}"
    if isinstance(exc, errors.AuthenticationFailed):
        if exc.message.startswith("no Replicate credentials"):
            return "no Replicate API token", ctx.token_fix
        return f"{head}; the token came from {ctx.token_from}", ctx.token_fix
    if isinstance(exc, errors.StorageFailed) and not exc.prediction_id:
        return f"{head}; nothing was paid for", _storage_hint(ctx)
    hints: list[tuple[type[BaseException], str]] = [
        (errors.StorageFailed, rest or _storage_hint(ctx)),
        (errors.PredictionTimedOut,
         f"raise --timeout (now {timeout} s) for long runs"),
        (errors.PredictionAborted, f"raise --timeout (now {timeout} s) if Replicate is queueing"),
        (errors.PredictionFailed, "change the prompt or the images and run again (a failed "
         f"prediction is not retried: it may be billed); details at {_PAGE}{exc.prediction_id}"),
        (errors.PredictionCanceled, "it was cancelled on Replicate; run the command again"),
        (errors.RateLimited,
         "Replicate is throttling this token; wait a minute (or lower --max-in-flight)"),
        (errors.ReplicateUnavailable, rest or "nothing was created; run again in a minute"),
    ]
    hint = next((text for kind, text in hints if isinstance(exc, kind)), rest or _DEBUG_HINT)
    return "\n".join([head + made, *details]), hint


def report(exc: BaseException, ctx: Context, *, debug: bool, stream: TextIO | None = None) -> int:
    """Print `exc` as the user should see it; return the exit code."""
    out = stream or sys.stderr
    secrets = [*ctx.secrets, *known_secrets()]
    if debug:
        print(redact("".join(traceback.format_exception(exc)), secrets), file=out, end="")
    message, hint = explain(exc, ctx)
    first, *details = redact(message, secrets).splitlines() or [""]
    print(f"seedream: error: {first}", file=out)
    for line in details:  # e.g. every bad manifest row
        print(f"  {line.strip()}", file=out)
    print(f"  hint: {redact(hint, secrets)}", file=out, flush=True)
    return exit_code_for(exc)
