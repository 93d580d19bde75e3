"""One sandbox prediction as a clock-driven state machine.

A `PredictionRecord` never changes status by itself: `view(now)` derives the status, the
timestamps and the output from the creation time, the queue and run durations, an optional
deadline and an optional cancel time. No thread runs per prediction.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from prefect_seedream.tasks.seedream_input import SeedreamInput

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
INTERRUPTED = "Prediction interrupted; please retry (code: PA)"


def new_prediction_id() -> str:
    """A random id shaped like Replicate's (26 lowercase base32 characters)."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def iso(timestamp: float | None) -> str | None:
    """An ISO-8601 UTC timestamp with a trailing Z, or None."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class PredictionView:
    """The state of a prediction at one moment.

    Attributes:
        status: One of starting, processing, succeeded, failed, canceled, aborted.
        started_at: When processing began, if it did.
        completed_at: When the prediction reached its terminal state, if it did.
        next_change: When the status will change next without outside action, if ever.
    """

    status: str
    started_at: float | None
    completed_at: float | None
    next_change: float | None

    @property
    def terminal(self) -> bool:
        """True once the status can no longer change."""
        return self.status in TERMINAL


@dataclass
class PredictionRecord:
    """Everything the sandbox knows about one prediction.

    Attributes:
        id: The prediction id.
        seq: Creation order, used as the list cursor.
        model: `owner/name`.
        version: The version id reported in the prediction object.
        input: The input exactly as sent.
        request: The validated input.
        width: Output width in pixels, as rendered (a `size_drift` moves it off the table).
        height: Output height in pixels, as rendered.
        image_count: How many images a success returns.
        created: Creation time (unix seconds).
        queue_seconds: Time spent in `starting`.
        run_seconds: Time spent in `processing`.
        deadline: `Cancel-After` deadline (unix seconds), if any.
        failure: Error message the prediction fails with, if it is set to fail.
        corruption: How its output files are corrupt (`rendering.CORRUPTIONS`), if they are.
        webhook: Webhook URL, if any.
        webhook_events: Events that trigger a webhook delivery.
        canceled_at: When a cancel request stopped it, if one did.
        removed_at: When its data is removed, if that was forced.
        sources: Decoded input images (first one drives `match_input_image`).
        sent_logs: Logs sent in the last webhook delivery.
        sent_terminal: True once the `completed`/`output` delivery was queued.
    """

    id: str
    seq: int
    model: str
    version: str
    input: dict[str, Any]
    request: SeedreamInput
    width: int
    height: int
    image_count: int
    created: float
    queue_seconds: float
    run_seconds: float
    deadline: float | None = None
    failure: str | None = None
    corruption: str | None = None
    webhook: str | None = None
    webhook_events: frozenset[str] = frozenset()
    canceled_at: float | None = None
    removed_at: float | None = None
    sources: list[Any] = field(default_factory=list)
    sent_logs: str = ""
    sent_terminal: bool = False

    def view(self, now: float) -> PredictionView:
        """The status and timestamps at `now`.

        Args:
            now: Unix seconds.

        Returns:
            The derived state.
        """
        started = self.created + self.queue_seconds
        finished = started + self.run_seconds
        stop, stop_status = None, "canceled"
        if self.canceled_at is not None:
            stop = self.canceled_at
        if self.deadline is not None and (stop is None or self.deadline < stop):
            stop, stop_status = self.deadline, "aborted"
        if stop is not None and stop < finished:
            if now >= stop:
                if stop < started:
                    return PredictionView(stop_status, None, stop, None)
                return PredictionView("canceled", started, stop, None)
            finished_or_stop = stop
        else:
            finished_or_stop = finished
        if now < started:
            return PredictionView("starting", None, None, min(started, finished_or_stop))
        if now < finished_or_stop:
            return PredictionView("processing", started, None, finished_or_stop)
        status = "failed" if self.failure is not None else "succeeded"
        return PredictionView(status, started, finished, None)

    def data_removed(self, view: PredictionView, now: float, retention: float) -> bool:
        """True once inputs and outputs are gone (retention passed or removal forced)."""
        if view.completed_at is None:
            return False
        due = view.completed_at + retention
        if self.removed_at is not None:
            due = min(due, self.removed_at)
        return now >= due

    def logs(self, view: PredictionView) -> str:
        """Log text at the given state, growing like a real run's."""
        if view.started_at is None:
            return "Prediction aborted before it started\n" if view.status == "aborted" else ""
        req = self.request
        lines = []
        if req.image_input:
            lines.append(f"Using {len(req.image_input)} input image(s)")
        if req.size == "custom":
            lines.append(f"Generating {self.width}x{self.height} image at custom resolution")
        else:
            lines.append(
                f"Generating {self.width}x{self.height} image with aspect ratio "
                f"{req.aspect_ratio} at {req.size} resolution"
            )
        if view.status == "succeeded":
            lines.append(f"Generated {self.image_count} image(s) in {self.run_seconds:.1f}sec")
        elif view.status == "failed":
            lines.append(f"Error: {self.failure}")
        elif view.status == "canceled":
            lines.append("Prediction canceled")
        return "".join(line + "\n" for line in lines)

    def to_json(self, now: float, base_url: str, retention: float) -> dict[str, Any]:
        """The prediction object exactly as `GET /v1/predictions/{id}` returns it.

        Args:
            now: Unix seconds.
            base_url: The sandbox root URL, without `/v1`.
            retention: Seconds outputs are kept after completion.

        Returns:
            A JSON-ready dict.
        """
        view = self.view(now)
        removed = self.data_removed(view, now, retention)
        output: list[str] | None = None
        if view.status == "succeeded" and not removed:
            output = [f"{base_url}/files/{self.id}/{i}.jpg" for i in range(self.image_count)]
        metrics: dict[str, Any] = {}
        if view.completed_at is not None:
            metrics["total_time"] = round(view.completed_at - self.created, 6)
            if view.started_at is not None:
                metrics["predict_time"] = round(view.completed_at - view.started_at, 6)
            if view.status == "succeeded":
                metrics["image_count"] = self.image_count
                metrics["image_output_count"] = self.image_count
        api = f"{base_url}/v1/predictions/{self.id}"
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "input": dict(self.input),
            "output": output,
            "logs": self.logs(view),
            "error": self.failure if view.status == "failed" else None,
            "status": view.status,
            "data_removed": removed,
            "created_at": iso(self.created),
            "started_at": iso(view.started_at),
            "completed_at": iso(view.completed_at),
            "deadline": iso(self.deadline),
            "deployment": None,
            "urls": {"get": api, "cancel": f"{api}/cancel", "web": f"{base_url}/p/{self.id}"},
            "metrics": metrics,
        }
