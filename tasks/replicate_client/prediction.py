"""The Replicate prediction as this plugin sees it: every field the API sends, `aborted` included.

replicate-python 1.0.7 models neither `aborted`, `deadline` nor `data_removed`, so responses are
parsed here from the raw JSON. Pure code.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PredictionStatus(str, Enum):
    """A prediction's status; `aborted` means its deadline passed before it started (not billed)."""

    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ABORTED = "aborted"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {PredictionStatus.SUCCEEDED, PredictionStatus.FAILED, PredictionStatus.CANCELED,
     PredictionStatus.ABORTED}
)


class Prediction(BaseModel):
    """A snapshot of one prediction, as returned by `GET /v1/predictions/{id}`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    status: PredictionStatus
    model: str | None = None
    version: str | None = None
    input: dict[str, Any] = Field(default_factory=dict)
    output: Any = None
    logs: str | None = None
    error: str | None = None
    data_removed: bool = False
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    deadline: str | None = None
    urls: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Prediction:
        """Parse an API body; unknown statuses fail loudly rather than poll forever."""
        clean = {k: v for k, v in data.items() if v is not None or k == "output"}
        return cls.model_validate(clean)

    @property
    def output_urls(self) -> list[str]:
        """The outputs as a list of URLs (https or data:); Seedream 3 returned a bare string."""
        if self.output is None:
            return []
        if isinstance(self.output, str):
            return [self.output]
        return [str(item) for item in self.output]

    @property
    def prompt(self) -> str | None:
        value = self.input.get("prompt")
        return value if isinstance(value, str) else None

    def summary(self) -> dict[str, Any]:
        """A small dict safe to log or put in an artifact (no input images, no logs)."""
        return {
            "id": self.id,
            "status": self.status.value,
            "model": self.model,
            "outputs": len(self.output_urls),
            "predict_time": self.metrics.get("predict_time"),
            "total_time": self.metrics.get("total_time"),
        }
