"""Sandbox settings and the parsers for the request headers that tune a prediction.

Pure code: `SandboxConfig` holds every knob that can be set at start or changed at run time,
`parse_go_duration` reads a `Cancel-After` value and `parse_prefer_wait` reads a `Prefer` header.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_TOKEN = "r8_sandbox_0000000000000000000000000000000000"
MAX_WAIT_SECONDS = 60

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_PREFER_WAIT = re.compile(r"^wait(?:=(\d+))?$")


@dataclass
class SandboxConfig:
    """Everything the sandbox can be tuned with, at start or later through `Sandbox.configure`.

    Timings apply to predictions created after the change; retention applies to every
    prediction at once (so lowering it expires old outputs early).

    Attributes:
        queue_seconds: Time a new prediction spends in `starting` before `processing`.
        run_seconds: Time a prediction spends in `processing` before it finishes.
        retention_seconds: Time after completion until `data_removed` becomes true.
        create_rate_per_minute: Sustained rate limit for creating predictions.
        other_rate_per_minute: Sustained rate limit for every other /v1 call.
        create_burst: Requests above the sustained rate allowed at once for creates.
        other_burst: Requests above the sustained rate allowed at once for other calls.
        rate_limits: False turns the rate limiter off (injected 429s still apply).
        auto_image_count: With `sequential_image_generation="auto"`, how many images to
            return (capped at max_images); None uses `max_images - max_images // 4`.
        jpeg_quality: JPEG quality of the rendered outputs.
        noise_sigma: Strength of the grain that gives the JPEGs a realistic size.
        webhook_attempts: Delivery attempts per webhook message (the first included).
        webhook_backoff_seconds: Sleep before the first retry; doubles after each failure.
        webhook_timeout_seconds: Timeout of each webhook POST.
        input_fetch_timeout_seconds: Timeout for fetching each `image_input` URL.
        file_cache_bytes: Rendered output files kept in memory, at most this many bytes.
        seed: Seed of the random source used for error shares (None: unseeded).
        sync_data_uri_outputs: A create answered in sync mode (`Prefer: wait`) carries its
            outputs as `data:` URIs, as Replicate's did for a while in late 2024; the sandbox
            serves plain http, which `replicate.run` would hand back as bare strings, so this
            lets Replicate's own examples (`output[0].read()`) run unchanged. GETs keep URLs.
        prerendered_outputs: Bench mode: every output of a size (prompted, no sources, not
            corrupted) is one JPEG rendered once per size and served byte-identical, so a
            prediction costs the sandbox almost no CPU and a benchmark measures its client.
    """

    queue_seconds: float = 0.0
    run_seconds: float = 0.5
    retention_seconds: float = 3600.0
    create_rate_per_minute: int = 600
    other_rate_per_minute: int = 3000
    create_burst: int = 100
    other_burst: int = 500
    rate_limits: bool = True
    auto_image_count: int | None = None
    jpeg_quality: int = 90
    noise_sigma: float = 32.0
    webhook_attempts: int = 3
    webhook_backoff_seconds: float = 0.1
    webhook_timeout_seconds: float = 2.0
    input_fetch_timeout_seconds: float = 10.0
    file_cache_bytes: int = 256 * 1024 * 1024
    seed: int | None = None
    sync_data_uri_outputs: bool = False
    prerendered_outputs: bool = False

    def replace(self, **changes: Any) -> SandboxConfig:
        """A copy with `changes` applied; unknown field names raise `TypeError`.

        Args:
            **changes: Field names and their new values.

        Returns:
            A new, validated config.

        Raises:
            TypeError: A name is not a config field.
            ValueError: A value is out of range.
        """
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown SandboxConfig field(s): {', '.join(unknown)}")
        updated = dataclasses.replace(self, **changes)
        updated.check()
        return updated

    def check(self) -> None:
        """Raise `ValueError` naming the first field whose value makes no sense."""
        for spec in dataclasses.fields(self):
            _check_type(spec.name, str(spec.type), getattr(self, spec.name))
        for name in ("queue_seconds", "run_seconds", "retention_seconds",
                     "webhook_backoff_seconds"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("create_rate_per_minute", "other_rate_per_minute", "create_burst",
                     "other_burst", "webhook_attempts"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.auto_image_count is not None and self.auto_image_count < 1:
            raise ValueError("auto_image_count must be >= 1 or None")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be within 1..100")

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return dataclasses.asdict(self)


# What each annotation of a `SandboxConfig` field accepts (a float field takes an int too).
_TYPES: dict[str, tuple[str, tuple[type, ...]]] = {
    "float": ("a number", (int, float)),
    "int": ("a whole number", (int,)),
    "bool": ("true or false", (bool,)),
    "int | None": ("a whole number or null", (int, type(None))),
}


def _check_type(name: str, annotation: str, value: Any) -> None:
    described, allowed = _TYPES.get(annotation, ("", (object,)))
    if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
        raise ValueError(f"{name} must be {described}, not {value!r}")


def image_count(max_images: int, sequential: str, auto_image_count: int | None) -> int:
    """How many images the sandbox returns for a request.

    Args:
        max_images: The request's `max_images`.
        sequential: The request's `sequential_image_generation`.
        auto_image_count: The configured count for "auto", or None for the default rule.

    Returns:
        1 when sequential generation is disabled, else fewer than or equal to max_images.
    """
    if sequential != "auto":
        return 1
    if auto_image_count is not None:
        return max(1, min(auto_image_count, max_images))
    return max(1, max_images - max_images // 4)


def parse_go_duration(text: str) -> float:
    """Seconds in a Go-style duration such as `30s`, `5m`, `1h30m` or `500ms`.

    Args:
        text: The header value.

    Returns:
        The duration in seconds, greater than zero.

    Raises:
        ValueError: The text is not a positive Go duration.
    """
    value = text.strip()
    pos, total = 0, 0.0
    while pos < len(value):
        match = _DURATION_PART.match(value, pos)
        if match is None:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not value or pos != len(value):
        raise ValueError(
            f"invalid duration {text!r}: use a Go-style duration such as 30s, 5m, 1h30m or 500ms"
        )
    if total <= 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return total


def parse_prefer_wait(text: str | None) -> int | None:
    """Seconds to hold a create open for a `Prefer` header, or None for no sync mode.

    Args:
        text: The header value (`wait` or `wait=N` with N in 1..60), or None.

    Returns:
        None without the header, else the wait window in seconds.

    Raises:
        ValueError: The header is present but does not match `wait` or `wait=1..60`.
    """
    if text is None:
        return None
    match = _PREFER_WAIT.match(text.strip())
    if match is None:
        raise ValueError(f"invalid Prefer header {text!r}: use 'wait' or 'wait=N' with N in 1..60")
    if match.group(1) is None:
        return MAX_WAIT_SECONDS
    seconds = int(match.group(1))
    if not 1 <= seconds <= MAX_WAIT_SECONDS:
        raise ValueError(f"invalid Prefer header {text!r}: N must be within 1..60")
    return seconds
