"""The create/await/cancel decisions, driven without I/O: what is sent, when, and what is raised."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from prefect_seedream.tasks.errors import (
    AuthenticationFailed,
    CreateOutcomeUnknown,
    InvalidInput,
    PredictionTimedOut,
    RateLimited,
)
from prefect_seedream.tasks.replicate_client import protocol
from prefect_seedream.tasks.replicate_client.request_builders import (
    ApiRequest,
    ApiResponse,
    format_duration,
    retry_after_seconds,
)

MODEL = "bytedance/seedream-4"
INPUT = {"prompt": "a fox", "size": "1K", "aspect_ratio": "1:1",
         "sequential_image_generation": "disabled", "max_images": 1}
POLICY = protocol.RetryPolicy(base_backoff=0.01, reconcile_delay=0.01)


def pred(pid: str, status: str = "starting", **extra: Any) -> dict[str, Any]:
    return {"id": pid, "model": MODEL, "version": "hidden", "status": status, "input": INPUT,
            "created_at": datetime.now(timezone.utc).isoformat(), **extra}


def ok(body: Any, status: int = 201) -> ApiResponse:
    return ApiResponse(status, {}, body)


class Script:
    """Answers requests from a list; records what was sent and slept."""

    def __init__(self, answers: list[ApiResponse | BaseException | Callable[[ApiRequest], Any]]):
        self.answers = list(answers)
        self.sent: list[ApiRequest] = []
        self.slept: list[float] = []
        self.notes: list[str] = []
        self.clock = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def now(self) -> datetime:
        return self.clock

    def run(self, gen: protocol.Protocol) -> Any:
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = gen.throw(error) if error else gen.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            if isinstance(op, ApiRequest):
                self.sent.append(op)
                answer = self.answers.pop(0)
                if callable(answer) and not isinstance(answer, ApiResponse):
                    answer = answer(op)
                if isinstance(answer, BaseException):
                    error = answer
                else:
                    reply = answer
            elif isinstance(op, protocol.Sleep):
                self.slept.append(op.seconds)
                self.clock += timedelta(seconds=op.seconds)
            elif isinstance(op, protocol.Note):
                self.notes.append(op.message)


def create(script: Script, **kw: Any) -> protocol.Protocol:
    return protocol.create(MODEL, INPUT, now=script.now, policy=POLICY, **kw)


def posts(script: Script) -> int:
    return sum(1 for r in script.sent if r.method == "POST")


def test_create_sends_cancel_after_and_prefer_wait_headers() -> None:
    script = Script([ok(pred("p1"))])
    result = script.run(create(script, wait_seconds=90, cancel_after_seconds=660))
    assert result.id == "p1"
    request = script.sent[0]
    assert request.path == f"/v1/models/{MODEL}/predictions"
    assert request.headers == {"Prefer": "wait=60", "Cancel-After": "11m"}
    assert request.json == {"input": INPUT}


def test_rate_limited_create_waits_as_told_then_creates_once() -> None:
    throttled = ApiResponse(429, {"retry-after": "3"}, {"detail": "Request was throttled."})
    script = Script([throttled, ok(pred("p1"))])
    assert script.run(create(script)).id == "p1"
    assert script.slept == [3.0]
    assert posts(script) == 2


def test_rate_limit_that_never_ends_raises_rate_limited_with_the_wait() -> None:
    body = {"detail": "Request was throttled. Your rate limit resets in ~7s."}
    script = Script([ApiResponse(429, {}, body)] * POLICY.max_create_attempts)
    with pytest.raises(RateLimited) as info:
        script.run(create(script))
    assert info.value.retry_after == 7.0
    assert posts(script) == POLICY.max_create_attempts


def test_lost_create_response_reattaches_instead_of_creating_again() -> None:
    lost = protocol.SendFailed("RemoteProtocolError", maybe_sent=True)
    listing = ok({"results": [pred("made-by-lost-call")], "next": None}, 200)
    script = Script([lost, listing])
    assert script.run(create(script)).id == "made-by-lost-call"
    assert posts(script) == 1


def test_connection_refused_is_retried_without_looking_for_a_prediction() -> None:
    refused = protocol.SendFailed("ConnectError", maybe_sent=False)
    script = Script([refused, ok(pred("p1"))])
    assert script.run(create(script)).id == "p1"
    assert [r.method for r in script.sent] == ["POST", "POST"]


def test_server_error_with_nothing_created_retries_and_cancels_a_late_twin() -> None:
    empty = ok({"results": [], "next": None}, 200)
    late_twin = ok({"results": [pred("twin"), pred("p2")], "next": None}, 200)
    script = Script([ApiResponse(503, {}, {"detail": "unavailable"}), empty, empty, empty,
                     ok(pred("p2")), late_twin, ok(pred("twin", "canceled"), 200)])
    assert script.run(create(script)).id == "p2"
    assert script.sent[-1].path == "/v1/predictions/twin/cancel"
    assert posts(script) == 3  # two creates and one cancel


def test_unanswered_creates_with_nothing_found_stop_with_outcome_unknown() -> None:
    lost = protocol.SendFailed("ReadTimeout", maybe_sent=True)
    empty = ok({"results": [], "next": None}, 200)
    answers: list[Any] = []
    for _ in range(POLICY.max_create_attempts):
        answers += [lost] + [empty] * POLICY.reconcile_attempts
    script = Script(answers)
    with pytest.raises(CreateOutcomeUnknown, match="dashboard"):
        script.run(create(script))


@pytest.mark.parametrize("first", [protocol.SendFailed("ReadTimeout", maybe_sent=True),
                                   ApiResponse(502, {}, {"detail": "bad gateway"})],
                         ids=["answer-lost", "create-502"])
def test_unknown_means_stop_when_the_list_cannot_be_read(first: Any) -> None:
    """The create may have made a prediction and the list that would tell cannot be read: no
    second create is ever sent (it could pay twice); the error says so."""
    unreadable = ApiResponse(503, {}, {"detail": "unavailable"})
    script = Script([first] + [unreadable] * POLICY.reconcile_attempts + [ok(pred("p2"))])
    with pytest.raises(CreateOutcomeUnknown, match="nothing was sent again"):
        script.run(create(script))
    assert posts(script) == 1
    assert [r.method for r in script.sent] == ["POST"] + ["GET"] * POLICY.reconcile_attempts


def test_a_list_that_answers_later_still_finds_the_lost_prediction() -> None:
    lost = protocol.SendFailed("ReadTimeout", maybe_sent=True)
    unreadable = ApiResponse(503, {}, {"detail": "unavailable"})
    found = ok({"results": [pred("p1")], "next": None}, 200)
    script = Script([lost, unreadable, found])
    assert script.run(create(script)).id == "p1"
    assert posts(script) == 1


@pytest.mark.parametrize(("status", "error"), [(401, AuthenticationFailed), (422, InvalidInput)])
def test_client_errors_are_not_retried(status: int, error: type[Exception]) -> None:
    script = Script([ApiResponse(status, {}, {"detail": "nope"})])
    with pytest.raises(error):
        script.run(create(script))
    assert posts(script) == 1


def test_wait_tolerates_early_404_and_5xx_then_returns_terminal() -> None:
    script = Script([
        ApiResponse(404, {}, {"detail": "not found"}),
        ApiResponse(502, {}, None),
        ok(pred("p1", "processing"), 200),
        ok(pred("p1", "succeeded", output=["https://x/0.jpg"]), 200),
    ])
    final = script.run(protocol.wait("p1", timeout_seconds=60, now=script.now, policy=POLICY,
                                     schedule=protocol.PollSchedule()))
    assert final.status.value == "succeeded"
    assert final.output_urls == ["https://x/0.jpg"]


def test_wait_understands_aborted_as_terminal() -> None:
    script = Script([ok(pred("p1", "aborted"), 200)])
    final = script.run(protocol.wait("p1", timeout_seconds=60, now=script.now, policy=POLICY,
                                     schedule=protocol.PollSchedule()))
    assert final.status.value == "aborted"


def test_wait_gives_up_at_the_deadline() -> None:
    script = Script([ok(pred("p1", "processing"), 200)] * 100)
    with pytest.raises(PredictionTimedOut) as info:
        script.run(protocol.wait("p1", timeout_seconds=10, now=script.now, policy=POLICY,
                                 schedule=protocol.PollSchedule()))
    assert info.value.prediction_id == "p1"
    assert sum(script.slept) == pytest.approx(10.0)


def test_polling_starts_fast_and_backs_off_to_a_cap() -> None:
    schedule = protocol.PollSchedule(initial=0.5, factor=2, max_interval=4)
    delays = [schedule.next_delay(0) for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_polling_is_sparse_until_an_expected_finish_then_dense() -> None:
    schedule = protocol.PollSchedule(initial=0.5, max_interval=5, expected_seconds=20,
                                     near_interval=0.75)
    assert schedule.next_delay(0.0) == pytest.approx(19.25)
    assert schedule.next_delay(19.5) <= 0.75


def test_cancel_of_unknown_prediction_is_not_an_error() -> None:
    script = Script([ApiResponse(404, {}, {"detail": "not found"})])
    assert script.run(protocol.cancel("gone", policy=POLICY)) is None


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"retry-after": "12"}, None, 12.0),
        ({}, {"retry_after": 5}, 5.0),
        ({}, {"detail": "Your rate limit resets in ~30s."}, 30.0),
        ({}, {"detail": "slow down"}, None),
    ],
)
def test_retry_after_is_read_from_header_body_or_detail(
    headers: dict[str, str], body: Any, expected: float | None
) -> None:
    assert retry_after_seconds(ApiResponse(429, headers, body)) == expected


@pytest.mark.parametrize(("seconds", "text"), [(30, "30s"), (90, "1m30s"), (5400, "1h30m")])
def test_cancel_after_duration_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
