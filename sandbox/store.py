"""The thread-safe table of predictions: add, look up, cancel, page through, expire.

Waiting for a prediction (`Prefer: wait`) sleeps on a condition until the next clock
transition or a cancel, never in a polling loop.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prefect_seedream.sandbox.prediction_state import PredictionRecord, PredictionView

PAGE_SIZE = 100


def encode_cursor(direction: str, seq: int) -> str:
    """An opaque cursor: `direction` is "b" (older than seq) or "a" (newer than seq)."""
    return base64.urlsafe_b64encode(f"{direction}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    """The (direction, seq) inside a cursor.

    Raises:
        ValueError: The cursor was not made by `encode_cursor`.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        direction, seq = raw.split(":")
        if direction not in ("a", "b"):
            raise ValueError(direction)
        return direction, int(seq)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc


class PredictionStore:
    """Every prediction of the sandbox, newest last, guarded by one lock.

    Args:
        clock: Returns the current unix time in seconds.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._cond = threading.Condition(threading.RLock())
        self._records: dict[str, PredictionRecord] = {}
        self._order: list[PredictionRecord] = []
        self._seq = 0

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store lock (for reading several records consistently)."""
        with self._cond:
            yield

    def next_seq(self) -> int:
        """A fresh creation sequence number."""
        with self._cond:
            self._seq += 1
            return self._seq

    def add(self, record: PredictionRecord) -> None:
        """Store a new prediction."""
        with self._cond:
            self._records[record.id] = record
            self._order.append(record)
            self._cond.notify_all()

    def get(self, prediction_id: str) -> PredictionRecord | None:
        """The prediction with this id, or None."""
        with self._cond:
            return self._records.get(prediction_id)

    def all(self) -> list[PredictionRecord]:
        """Every prediction, newest first."""
        with self._cond:
            return list(reversed(self._order))

    def clear(self) -> None:
        """Forget every prediction."""
        with self._cond:
            self._records = {}
            self._order = []
            self._cond.notify_all()

    def cancel(self, prediction_id: str) -> PredictionRecord | None:
        """Cancel a prediction unless it is already terminal; None if it does not exist."""
        with self._cond:
            record = self._records.get(prediction_id)
            if record is None:
                return None
            now = self.clock()
            if not record.view(now).terminal:
                record.canceled_at = now
                self._cond.notify_all()
            return record

    def expire(self, prediction_id: str | None, at: float) -> None:
        """Force data removal at `at` for one prediction, or for all with None.

        Raises:
            KeyError: The prediction does not exist.
        """
        with self._cond:
            if prediction_id is None:
                targets = list(self._order)
            elif prediction_id in self._records:
                targets = [self._records[prediction_id]]
            else:
                raise KeyError(prediction_id)
            for record in targets:
                record.removed_at = at

    def wait(self, record: PredictionRecord, seconds: float) -> PredictionView:
        """Block until `record` is terminal or `seconds` pass; return its state then."""
        end = self.clock() + seconds
        with self._cond:
            while True:
                now = self.clock()
                view = record.view(now)
                if view.terminal or now >= end:
                    return view
                until = end if view.next_change is None else min(end, view.next_change)
                self._cond.wait(timeout=max(0.001, until - now))

    def page(
        self,
        cursor: str | None,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> tuple[list[PredictionRecord], str | None, str | None]:
        """One page of predictions, newest first.

        Args:
            cursor: A cursor from an earlier page, or None for the newest page.
            created_after: Only predictions created strictly after this unix time.
            created_before: Only predictions created strictly before this unix time.

        Returns:
            The records, the cursor of the next (older) page and of the previous (newer) page.

        Raises:
            ValueError: The cursor is invalid.
        """
        with self._cond:
            rows = [
                r for r in self._order
                if (created_after is None or r.created > created_after)
                and (created_before is None or r.created < created_before)
            ]
        if cursor is None:
            direction, seq = "b", self._seq + 1
        else:
            direction, seq = decode_cursor(cursor)
        if direction == "b":
            older = [r for r in rows if r.seq < seq]
            chosen = list(reversed(older[-PAGE_SIZE:]))
        else:
            newer = [r for r in rows if r.seq > seq]
            chosen = list(reversed(newer[:PAGE_SIZE]))
        if not chosen:
            return [], None, None
        newest, oldest = chosen[0].seq, chosen[-1].seq
        has_older = any(r.seq < oldest for r in rows)
        has_newer = cursor is not None and any(r.seq > newest for r in rows)
        return (
            chosen,
            encode_cursor("b", oldest) if has_older else None,
            encode_cursor("a", newest) if has_newer else None,
        )
