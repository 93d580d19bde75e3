"""Reading a `POST /_sandbox/faults` body into the faults' next state, all or nothing.

Pure code. The state has the shape `GET /_sandbox/faults` shows (`Faults.state()`). In a body,
each key names a fault and its value is either

- what GET shows for that fault, which sets the fault to exactly that (so posting GET's answer
  back changes nothing), or
- an object of the keyword arguments of the `Faults` method of that name, which calls it
  (`fail_next`, `interrupt_predictions`, `size_drift` and `corrupt_outputs` then queue after
  what is already queued).

`expire_outputs` and `clear` take an object of arguments or null; `clear` comes first. Every
key is checked before anything changes, and each refusal names its field.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prefect_seedream.sandbox.prediction_state import INTERRUPTED
from prefect_seedream.sandbox.rendering import CORRUPTIONS

ROUTES = frozenset({"create", "get", "cancel", "list", "files", "account", "models"})
# The keys a body may hold: the names of the fault methods.
ADMIN_ACTIONS = frozenset({
    "rate_limit_creates", "fail_next", "error_share", "drop_create_responses",
    "interrupt_predictions", "size_drift", "corrupt_outputs", "slow_downloads",
    "expire_outputs", "clear",
})
# `size_drift` moves each side by at most this many pixels (a side never goes below MIN_SIDE).
MAX_DRIFT = 512
MIN_SIDE = 16

Expiry = tuple[str | None, float | None]


class FaultSettingsError(ValueError):
    """A body that was refused; none of it was applied.

    Args:
        problems: One "field: what is wrong" line per refused key.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class FaultPlan:
    """What a valid body does.

    Attributes:
        state: The faults' next state, shaped like `Faults.state()`.
        expiries: `expire_outputs` calls to make, as (prediction_id, after_seconds).
    """

    state: dict[str, Any]
    expiries: list[Expiry]


def cleared() -> dict[str, Any]:
    """The state with every fault off, as a new sandbox starts."""
    return {
        "rate_limit_creates": {"n": 0, "retry_after": 1},
        "fail_next": {},
        "error_share": {"share": 0.0, "status": 500, "routes": sorted(ROUTES)},
        "drop_create_responses": 0,
        "interrupt_predictions": [],
        "size_drift": [],
        "corrupt_outputs": [],
        "slow_downloads": None,
    }


def plan_update(
    current: Mapping[str, Any],
    body: Mapping[str, Any],
    prediction_exists: Callable[[str], bool],
) -> FaultPlan:
    """The state and expiries that `body` asks for, starting from `current`.

    Args:
        current: The faults' state now, as `Faults.state()` returns it.
        body: The parsed JSON body.
        prediction_exists: Tells whether `expire_outputs.prediction_id` names a prediction.

    Raises:
        FaultSettingsError: Naming every refused key.
    """
    problems: list[str] = []
    state = copy.deepcopy(dict(current))
    expiries: list[Expiry] = []
    if "clear" in body:
        try:
            _arguments("clear", body["clear"], (), ())
            state = cleared()
        except ValueError as exc:
            problems.append(str(exc))
    for action, value in body.items():
        try:
            if action == "expire_outputs":
                expiries.append(_expiry(value, prediction_exists))
            elif action in _READERS:
                state[action] = _READERS[action](value, state[action])
            elif action != "clear":
                names = ", ".join(sorted(ADMIN_ACTIONS))
                raise ValueError(f"{action}: unknown fault; use one of {names}")
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise FaultSettingsError(problems)
    return FaultPlan(state, expiries)


# Checks of single values; each error starts with the field it is about.

def _whole(where: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}: must be a whole number >= {minimum}, not {value!r}")
    return value


def _number(where: str, value: Any, low: float, high: float | None = None,
            *, open_low: bool = False) -> float:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value > low if open_low else value >= low)
          and (high is None or value <= high))
    if not ok:
        bounds = f"> {low:g}" if open_low else f">= {low:g}"
        if high is not None:
            bounds = f"within {low:g}..{high:g}"
        raise ValueError(f"{where}: must be a number {bounds}, not {value!r}")
    return float(value)


def _route(where: str, value: Any) -> str:
    if not isinstance(value, str) or value not in ROUTES:
        names = ", ".join(sorted(ROUTES))
        raise ValueError(f"{where}: unknown route {value!r}; use one of {names}")
    return value


def _status(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise ValueError(f"{where}: {value!r} is not an error status (400..599)")
    return value


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: must be a non-empty string, not {value!r}")
    return value


def _drift(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_DRIFT:
        raise ValueError(f"{where}: must be a whole number of pixels within "
                         f"-{MAX_DRIFT}..{MAX_DRIFT}, not {value!r}")
    return value


def _corruption(where: str, value: Any) -> str:
    if not isinstance(value, str) or value not in CORRUPTIONS:
        raise ValueError(f"{where}: unknown kind {value!r}; use one of {', '.join(CORRUPTIONS)}")
    return value


def _arguments(where: str, value: Any, required: tuple[str, ...],
               optional: tuple[str, ...]) -> dict[str, Any]:
    names = ", ".join(required + optional) or "no arguments"
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: must be an object of arguments ({names}), not {value!r}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"{where}: unknown argument {unknown[0]!r}; use {names}")
    missing = [name for name in required if name not in value]
    if missing:
        raise ValueError(f"{where}.{missing[0]}: required")
    return value


# One reader per fault: (value from the body, current value) -> next value.

def _rate_limit_creates(value: Any, current: Any) -> dict[str, int]:
    args = _arguments("rate_limit_creates", value, ("n",), ("retry_after",))
    return {"n": _whole("rate_limit_creates.n", args["n"]),
            "retry_after": _whole("rate_limit_creates.retry_after", args.get("retry_after", 1))}


def _fail_next(value: Any, current: Any) -> dict[str, list[list[int]]]:
    where = "fail_next"
    if isinstance(value, dict) and "route" in value:  # the call: queue after the others
        args = _arguments(where, value, ("route", "n"), ("status",))
        route = _route(f"{where}.route", args["route"])
        n = _whole(f"{where}.n", args["n"], 1)
        status = _status(f"{where}.status", args.get("status", 503))
        queues: dict[str, list[list[int]]] = copy.deepcopy(current)
        queues.setdefault(route, []).append([status, n])
        return queues
    if not isinstance(value, dict):
        raise ValueError(f'{where}: must be {{route: [[status, n], ...]}} as GET shows, or '
                         f'{{"route": ..., "n": ..., "status": ...}}, not {value!r}')
    queues = {}
    for route, entries in value.items():
        _route(where, route)
        if not isinstance(entries, list):
            raise ValueError(f"{where}.{route}: must be a list of [status, n] pairs")
        pairs = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, list) or len(entry) != 2:
                raise ValueError(f"{where}.{route}[{i}]: must be a [status, n] pair, not {entry!r}")
            pairs.append([_status(f"{where}.{route}[{i}].status", entry[0]),
                          _whole(f"{where}.{route}[{i}].n", entry[1], 1)])
        if pairs:
            queues[route] = pairs
    return queues


def _error_share(value: Any, current: Any) -> dict[str, Any]:
    args = _arguments("error_share", value, ("share",), ("status", "routes"))
    routes = args.get("routes")
    if routes is not None and not isinstance(routes, list):
        raise ValueError(f"error_share.routes: must be a list of routes or null, not {routes!r}")
    chosen = ROUTES if routes is None else {
        _route(f"error_share.routes[{i}]", route) for i, route in enumerate(routes)
    }
    return {"share": _number("error_share.share", args["share"], 0.0, 1.0),
            "status": _status("error_share.status", args.get("status", 500)),
            "routes": sorted(chosen)}


def _drop_create_responses(value: Any, current: Any) -> int:
    where = "drop_create_responses"
    if isinstance(value, dict):
        return _whole(f"{where}.n", _arguments(where, value, ("n",), ())["n"])
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'{where}: must be a whole number >= 0 as GET shows, or {{"n": N}}, '
                         f"not {value!r}")
    return value


def _queued(where: str, value: Any, current: list[Any], *, shown: str,
            entry: Callable[[str, Any], Any], options: tuple[str, ...],
            make: Callable[[dict[str, Any]], Any]) -> list[Any]:
    """A fault queued per prediction: the list GET shows replaces the queue (each entry checked
    by `entry`); `{"n": N, <options>}` appends N entries built by `make` from the arguments."""
    if isinstance(value, list):
        return [entry(f"{where}[{i}]", item) for i, item in enumerate(value)]
    if not isinstance(value, dict):
        form = ", ".join(['"n": N', *(f'"{name}": ...' for name in options)])
        raise ValueError(f"{where}: must be {shown} as GET shows, or {{{form}}}, not {value!r}")
    args = _arguments(where, value, ("n",), options)
    n = _whole(f"{where}.n", args["n"])
    one = make(args)  # checked even when n is 0
    return [*current, *(list(one) if isinstance(one, list) else one for _ in range(n))]


def _interrupt_predictions(value: Any, current: Any) -> list[str]:
    where = "interrupt_predictions"
    return _queued(
        where, value, current, shown="a list of error messages", entry=_text,
        options=("error",),
        make=lambda args: INTERRUPTED if args.get("error") is None
        else _text(f"{where}.error", args["error"]),
    )


def _drift_pair(where: str, entry: Any) -> list[int]:
    if not isinstance(entry, list) or len(entry) != 2:
        raise ValueError(f"{where}: must be a [dx, dy] pair, not {entry!r}")
    return [_drift(f"{where}.dx", entry[0]), _drift(f"{where}.dy", entry[1])]


def _size_drift(value: Any, current: Any) -> list[list[int]]:
    where = "size_drift"
    return _queued(
        where, value, current, shown="a list of [dx, dy] pairs", entry=_drift_pair,
        options=("dx", "dy"),
        make=lambda args: [_drift(f"{where}.dx", args.get("dx", 16)),
                           _drift(f"{where}.dy", args.get("dy", 0))],
    )


def _corrupt_outputs(value: Any, current: Any) -> list[str]:
    where = "corrupt_outputs"
    return _queued(
        where, value, current, shown="a list of kinds", entry=_corruption, options=("kind",),
        make=lambda args: _corruption(f"{where}.kind", args.get("kind", "html")),
    )


def _slow_downloads(value: Any, current: Any) -> float | None:
    where = "slow_downloads"
    if isinstance(value, dict):
        value = _arguments(where, value, ("bytes_per_second",), ())["bytes_per_second"]
        where = f"{where}.bytes_per_second"
    if value is None:
        return None
    try:
        return _number(where, value, 0.0, open_low=True)
    except ValueError:
        raise ValueError(f"{where}: must be bytes per second > 0, or null for full speed, "
                         f"not {value!r}") from None


def _expiry(value: Any, prediction_exists: Callable[[str], bool]) -> Expiry:
    args = _arguments("expire_outputs", value, (), ("prediction_id", "after_seconds"))
    prediction_id = args.get("prediction_id")
    if prediction_id is not None and (
        not isinstance(prediction_id, str) or not prediction_exists(prediction_id)
    ):
        raise ValueError(f"expire_outputs.prediction_id: no prediction {prediction_id!r}")
    after = args.get("after_seconds")
    return prediction_id, None if after is None else _number(
        "expire_outputs.after_seconds", after, 0.0)


_READERS: dict[str, Callable[[Any, Any], Any]] = {
    "rate_limit_creates": _rate_limit_creates,
    "fail_next": _fail_next,
    "error_share": _error_share,
    "drop_create_responses": _drop_create_responses,
    "interrupt_predictions": _interrupt_predictions,
    "size_drift": _size_drift,
    "corrupt_outputs": _corrupt_outputs,
    "slow_downloads": _slow_downloads,
}
