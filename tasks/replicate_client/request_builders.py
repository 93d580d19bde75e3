"""Pure request builders and response readers for Replicate's HTTP API.

Nothing here does I/O. `prefect_seedream.tasks.replicate_client.protocol` decides *what* to send and
when to retry; `prefect_seedream.tasks.replicate_client.api` is the one place that sends it.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from prefect_seedream.tasks.errors import (
    AuthenticationFailed,
    InvalidInput,
    RateLimited,
    ReplicateUnavailable,
    SeedreamError,
)
from prefect_seedream.tasks.replicate_client.prediction import Prediction

TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class ApiRequest:
    """One HTTP request to Replicate, relative to the client's base URL."""

    method: str
    path: str
    json: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    read_timeout: float | None = None


@dataclass(frozen=True)
class ApiResponse:
    """What came back: status, headers (lower-case names) and the parsed JSON body."""

    status: int
    headers: dict[str, str]
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def detail(self) -> str:
        if isinstance(self.body, dict):
            for key in ("detail", "title", "error"):
                if self.body.get(key):
                    return str(self.body[key])
        return f"HTTP {self.status}"


def format_duration(seconds: float) -> str:
    """Seconds as a Go-style duration for `Cancel-After` (`90` -> `1m30s`)."""
    total = max(1, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{value}{unit}" for value, unit in parts if value)


def build_create(
    model: str,
    input: dict[str, Any],
    *,
    webhook: str | None = None,
    webhook_events_filter: list[str] | None = None,
    wait_seconds: int | None = None,
    cancel_after_seconds: float | None = None,
) -> ApiRequest:
    """`POST /v1/models/{owner}/{name}/predictions` with sync mode and a server-side deadline;
    a pinned `owner/name:version` goes to `POST /v1/predictions` with that `version`."""
    body: dict[str, Any] = {"input": input}
    path = f"/v1/models/{model}/predictions"
    if ":" in model:
        body, path = {"version": model, "input": input}, "/v1/predictions"
    if webhook:
        body["webhook"] = webhook
        if webhook_events_filter:
            body["webhook_events_filter"] = list(webhook_events_filter)
    headers: dict[str, str] = {}
    read_timeout = None
    if wait_seconds:
        wait = min(60, max(1, int(wait_seconds)))
        headers["Prefer"] = f"wait={wait}"
        read_timeout = wait + 5.0
    if cancel_after_seconds:
        headers["Cancel-After"] = format_duration(cancel_after_seconds)
    return ApiRequest("POST", path, body, headers, read_timeout)


def build_get(prediction_id: str) -> ApiRequest:
    return ApiRequest("GET", f"/v1/predictions/{prediction_id}")


def build_cancel(prediction_id: str) -> ApiRequest:
    return ApiRequest("POST", f"/v1/predictions/{prediction_id}/cancel")


def build_list(created_after: datetime | None = None, cursor: str | None = None) -> ApiRequest:
    """`GET /v1/predictions`, newest first; `cursor` is the full `next` URL of a previous page."""
    if cursor:
        return ApiRequest("GET", cursor)
    query = {}
    if created_after is not None:
        query["created_after"] = created_after.astimezone(timezone.utc).isoformat()
    suffix = f"?{urlencode(query)}" if query else ""
    return ApiRequest("GET", f"/v1/predictions{suffix}")


def build_account() -> ApiRequest:
    return ApiRequest("GET", "/v1/account")


_RESETS_IN = re.compile(r"resets in ~?\s*(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)


def retry_after_seconds(response: ApiResponse, now: float | None = None) -> float | None:
    """How long Replicate asked us to wait: `Retry-After` (seconds or HTTP date), the body's
    `retry_after`, or the detail's "resets in ~Ns". None when it did not say."""
    header = response.headers.get("retry-after")
    if header:
        header = header.strip()
        if re.fullmatch(r"\d+(\.\d+)?", header):
            return float(header)
        try:
            when = email.utils.parsedate_to_datetime(header)
            return max(0.0, when.timestamp() - (now if now is not None else time.time()))
        except (TypeError, ValueError):
            pass
    if isinstance(response.body, dict):
        value = response.body.get("retry_after")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        match = _RESETS_IN.search(str(response.body.get("detail") or ""))
        if match:
            return float(match.group(1))
    return None


def error_for(response: ApiResponse, *, prediction_id: str | None = None) -> SeedreamError:
    """The typed error for a non-2xx answer. Messages never include request headers."""
    status, detail = response.status, response.detail
    if status in (401, 403):
        return AuthenticationFailed(
            f"Replicate refused the API token (HTTP {status}: {detail}); "
            "check the token in your ReplicateCredentials block",
            prediction_id=prediction_id,
        )
    if status == 402:
        return SeedreamError(
            f"Replicate needs billing set up or more credit (HTTP 402: {detail})",
            prediction_id=prediction_id,
        )
    if status in (400, 413, 422):
        return InvalidInput(f"Replicate rejected the input: {detail}", prediction_id=prediction_id)
    if status == 404:
        return SeedreamError(
            f"not found on Replicate (HTTP 404: {detail})", prediction_id=prediction_id
        )
    if status == 429:
        return RateLimited(
            f"Replicate rate limit: {detail}",
            retry_after=retry_after_seconds(response),
            prediction_id=prediction_id,
        )
    return ReplicateUnavailable(
        f"Replicate answered HTTP {status}: {detail}", prediction_id=prediction_id
    )


def parse_prediction(response: ApiResponse) -> Prediction:
    if not isinstance(response.body, dict):
        raise ReplicateUnavailable(f"Replicate sent an unreadable body (HTTP {response.status})")
    return Prediction.from_api(response.body)


def parse_page(response: ApiResponse) -> tuple[list[Prediction], str | None]:
    """Predictions on one list page and the next page's cursor."""
    body = response.body if isinstance(response.body, dict) else {}
    items = []
    for raw in body.get("results") or []:
        try:
            items.append(Prediction.from_api(raw))
        except ValueError:
            continue  # another model's prediction with a shape we do not read
    return items, body.get("next")


@dataclass(frozen=True)
class RequestMatch:
    """What finds a request again in the list of recent predictions, safe to store: the model,
    the names of the fields sent and a SHA-256 of their values, never the prompt itself.

    Replicate may rewrite file inputs, so `image_input` counts by length only; fields Replicate
    adds (defaults) do not matter, since only the fields sent are compared.

    Example:
        ```python
        from prefect_seedream.tasks.replicate_client.request_builders import RequestMatch

        match = RequestMatch.of("bytedance/seedream-4", {"prompt": "x" * 6000, "size": "2K"})
        assert match.fields == ("prompt", "size") and len(match.digest) == 64
        ```
    """

    model: str
    fields: tuple[str, ...]
    digest: str

    @classmethod
    def of(cls, model: str, sent_input: dict[str, Any]) -> RequestMatch:
        fields = tuple(sorted(sent_input))
        return cls(model, fields, _values_digest(sent_input, fields))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestMatch:
        return cls(str(data["model"]), tuple(str(f) for f in data["fields"]), str(data["digest"]))

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "fields": list(self.fields), "digest": self.digest}

    def matches(self, prediction: Prediction) -> bool:
        """Whether a listed prediction is one this request made: same model and input."""
        if prediction.model and prediction.model != self.model.partition(":")[0]:
            return False
        return _values_digest(prediction.input, self.fields) == self.digest


def _values_digest(input: dict[str, Any], fields: tuple[str, ...]) -> str:
    values = []
    for name in fields:
        value = input.get(name)
        if name == "image_input":
            value = len(value) if isinstance(value, list) else None
        values.append([name, value])
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def created_at(prediction: Prediction) -> datetime:
    text = (prediction.created_at or "").replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return datetime.fromtimestamp(0, tz=timezone.utc)
