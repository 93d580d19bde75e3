"""Keep secrets out of logs, whatever loggers a user turns on.

A presigned S3 URL is a bearer credential until it expires, and a base URL may carry a
password (`http://user:pw@proxy`). Our own messages never contain either, but libraries log
URLs: with `PREFECT_LOGGING_EXTRA_LOGGERS=httpx` every `HTTP Request: GET <url>` line goes to
the Prefect API, and botocore at DEBUG logs request headers and signatures.

`RedactingFilter` rewrites a record's message (and its formatted traceback) with `redact()`;
it never drops a record. `install_redaction()` applies it to every record of our loggers and
of the HTTP libraries underneath (httpx, httpcore, botocore, boto3, s3transfer, urllib3,
replicate, uvicorn) and their children as the record is made (a chained log-record factory, so
loggers created later are covered and every handler, a user's too, sees the redacted text), and
puts it on every handler of Prefect's loggers and of the root logger, so a record from any
other logger is redacted before Prefect's console or API handler writes it. Idempotent and
cheap: call it wherever clients are built.

Example:
    ```python
    from prefect_seedream.tasks.redaction import redact

    assert redact("GET https://b.s3/k.jpg?X-Amz-Signature=abc&x=1") == (
        "GET https://b.s3/k.jpg?X-Amz-Signature=[REDACTED]&x=1")
    assert redact("http://user:pw@proxy:8080/v1") == "http://[REDACTED]@proxy:8080/v1"
    ```
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

REDACTED = "[REDACTED]"

#: Query parameters (and `Name=value` pairs in an `Authorization` header) that are secrets.
_SECRET_PARAMS = (
    "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "Signature", "Credential",
    "AWSAccessKeyId", "X-Goog-Signature", "X-Goog-Credential", "sig", "token", "api_token",
    "access_token",
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # name=value in a query string or a header, also URL-encoded (%3D, and %26 ending it).
    (re.compile(r"(?i)(?:(?<![A-Za-z0-9_%-])|(?<=%26)|(?<=%3F))((?:"
                + "|".join(map(re.escape, _SECRET_PARAMS))
                + r")(?:=|%3D))(?:(?!%26)[^&\s'\",;<>)\]}])+"), r"\1" + REDACTED),
    # userinfo in a URL: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"?#<>]+@"), r"\1" + REDACTED + "@"),
    # header values, as dict reprs or raw lines: 'Authorization': b'...', X-Amz-Security-Token: ...
    (re.compile(r"(?i)((?:authorization|x-amz-security-token|proxy-authorization)['\"]?"
                r"\s*[:=]\s*(?-i:b)?['\"]?)[^'\"\r\n]+"), r"\1" + REDACTED),
    # bearer tokens and Replicate tokens wherever they appear
    (re.compile(r"(?i)\b(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1" + REDACTED),
    (re.compile(r"\br8_[A-Za-z0-9]{16,}"), REDACTED),
    # botocore.auth at DEBUG: "Signature:\n<64 hex>"
    (re.compile(r"(?i)(signature:\s*)[0-9a-f]{64}"), r"\1" + REDACTED),
)

#: Loggers whose records (their children's too) are redacted as they are made.
LOGGER_NAMES = (
    "prefect_seedream", "prefect.prefect_seedream", "prefect.flow_runs", "prefect.task_runs",
    "httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3",
    "replicate", "uvicorn",
)
#: Loggers whose handlers redact whatever passes through them (Prefect's console and API).
HANDLER_LOGGER_NAMES = (
    "", "prefect", "prefect.extra", "prefect.flow_runs", "prefect.task_runs", "prefect.workers",
)


def redact(text: str) -> str:
    """`text` without presigned-URL signatures and credentials, URL passwords or tokens."""
    if not text:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message and traceback with `redact()`; drops nothing."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_seedream_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging to report
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        setattr(record, "_seedream_redacted", True)  # noqa: B010
        return True


_FILTER = RedactingFilter()
_lock = threading.Lock()
_prefixes: tuple[str, ...] = ()


def _covered(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in _prefixes)


def _make_factory(previous: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _covered(record.name):
            _FILTER.filter(record)
        return record

    factory._seedream_redacting = True  # type: ignore[attr-defined]
    return factory


def install_redaction(extra_loggers: tuple[str, ...] = ()) -> RedactingFilter:
    """Redact records of our and the HTTP libraries' loggers, and in Prefect's handlers.

    Records of `LOGGER_NAMES`, of the loggers named by `PREFECT_LOGGING_EXTRA_LOGGERS` and
    `extra_loggers`, and of all their children (also those created later) are redacted as they
    are made, by a log-record factory chained to the current one; every handler of Prefect's
    loggers and of the root logger also gets the filter, so nothing that reaches Prefect's
    console or API unredacted. Safe to call often: it only adds what is missing.
    """
    global _prefixes
    from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS

    extra = tuple(PREFECT_LOGGING_EXTRA_LOGGERS.value() or ()) + tuple(extra_loggers)
    names = tuple(dict.fromkeys(LOGGER_NAMES + extra))
    with _lock:
        _prefixes = tuple(dict.fromkeys(_prefixes + names))
        current = logging.getLogRecordFactory()
        if not getattr(current, "_seedream_redacting", False):
            logging.setLogRecordFactory(_make_factory(current))
        for name in HANDLER_LOGGER_NAMES + names:
            for handler in logging.getLogger(name).handlers:
                if _FILTER not in handler.filters:
                    handler.addFilter(_FILTER)
    return _FILTER


__all__ = ["REDACTED", "RedactingFilter", "install_redaction", "redact"]
