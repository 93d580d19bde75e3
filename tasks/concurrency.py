"""Share Replicate's create budget between every worker: a Prefect global rate limit.

Replicate allows 600 prediction creates a minute per account by default. Many flow runs on many
workers each retrying 429s on their own still stampede it; a Prefect global concurrency limit with
a slot decay is one budget for all of them. It is used only when `SEEDREAM_RATE_LIMIT_NAME` is set,
and then strictly: a limit that does not exist is an error, never a silent unthrottled create.

Create it once per Prefect server (or let `prefect deploy` do it, see prefect.yaml):

    prefect gcl create replicate-create --limit 600 --slot-decay-per-second 10

Example:
    ```python
    from prefect_seedream.tasks.concurrency import acquire_create_slot

    acquire_create_slot()  # blocks until the shared budget allows one more create
    ```
"""

from __future__ import annotations

from prefect_seedream.tasks.errors import SeedreamError
from prefect_seedream.tasks.seedream_settings import get_settings

#: Replicate's default create budget and the matching decay (slots freed per second).
DEFAULT_LIMIT_NAME = "replicate-create"
DEFAULT_CREATES_PER_MINUTE = 600


class RateLimitUnavailable(SeedreamError):
    """The configured global rate limit is missing (or unusable); nothing was created."""


def create_command(name: str = DEFAULT_LIMIT_NAME,
                   creates_per_minute: int = DEFAULT_CREATES_PER_MINUTE) -> str:
    """The one-line Prefect CLI command that creates the limit.

    Example:
        ```python
        from prefect_seedream.tasks.concurrency import create_command

        assert create_command() == (
            "prefect gcl create replicate-create --limit 600 --slot-decay-per-second 10"
        )
        ```
    """
    decay = creates_per_minute / 60
    shown = f"{decay:g}"
    return f"prefect gcl create {name} --limit {creates_per_minute} --slot-decay-per-second {shown}"


def configured_limit() -> str | None:
    """The limit's name from `SEEDREAM_RATE_LIMIT_NAME`, or None when rate limiting is off."""
    name = (get_settings().rate_limit_name or "").strip()
    return name or None


def _unavailable(name: str, exc: Exception) -> RateLimitUnavailable:
    return RateLimitUnavailable(
        f"could not take a slot of the global rate limit {name!r} ({exc}); create it with "
        f"`{create_command(name)}` or unset SEEDREAM_RATE_LIMIT_NAME. Nothing was sent to Replicate"
    )


def acquire_create_slot(name: str | None = None) -> None:
    """Block until the shared create budget has room; no-op when no limit is configured.

    Raises:
        RateLimitUnavailable: The limit does not exist or has no slot decay.
    """
    name = name or configured_limit()
    if not name:
        return
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import rate_limit

    try:
        rate_limit(name, occupy=1, strict=True)
    except ConcurrencySlotAcquisitionError as exc:
        raise _unavailable(name, exc) from exc


async def aacquire_create_slot(name: str | None = None) -> None:
    """Async `acquire_create_slot`."""
    name = name or configured_limit()
    if not name:
        return
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, rate_limit

    try:
        await rate_limit(name, occupy=1, strict=True)
    except ConcurrencySlotAcquisitionError as exc:
        raise _unavailable(name, exc) from exc


__all__ = [
    "DEFAULT_CREATES_PER_MINUTE",
    "DEFAULT_LIMIT_NAME",
    "RateLimitUnavailable",
    "aacquire_create_slot",
    "acquire_create_slot",
    "configured_limit",
    "create_command",
]
