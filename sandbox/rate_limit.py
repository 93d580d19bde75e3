"""Token-bucket rate limits shaped like Replicate's (a sustained rate plus a burst)."""

from __future__ import annotations

import math
import threading


class TokenBucket:
    """A bucket of `burst` tokens refilled at `rate_per_minute / 60` tokens a second.

    Args:
        rate_per_minute: Sustained requests per minute.
        burst: Bucket size: how many requests may arrive at once.
    """

    def __init__(self, rate_per_minute: int, burst: int) -> None:
        self._lock = threading.Lock()
        self._rate = rate_per_minute / 60.0
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None

    def take(self, now: float) -> int:
        """Take one token.

        Args:
            now: A monotonic clock reading in seconds.

        Returns:
            0 when the request may pass, else the whole seconds until a token is free
            (at least 1), suitable for a `Retry-After` header.
        """
        with self._lock:
            if self._stamp is not None:
                self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0
            return max(1, math.ceil((1.0 - self._tokens) / self._rate))


def throttled_detail(retry_after: int) -> str:
    """Replicate's 429 message for a given wait."""
    return f"Request was throttled. Your rate limit resets in ~{retry_after}s."
