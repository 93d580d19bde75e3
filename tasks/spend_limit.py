"""The spend limit: a budget per day and per month that no combination of runs can exceed.

Set once for an installation (`SEEDREAM_SPEND_LIMIT_USD_PER_DAY`,
`SEEDREAM_SPEND_LIMIT_IMAGES_PER_DAY`, the same `_PER_MONTH`; `SEEDREAM_SPEND_TIME_ZONE`,
`SEEDREAM_PRICE_PER_IMAGE_USD`), it is kept in the prediction ledger's bucket, one record per
period: `{prefix}/_ledger/spend/day-YYYY-MM-DD.json` and `month-YYYY-MM.json`. A record holds
what its period has settled (images billed, dollars) and one entry per open reservation, keyed
by the request key and attempt. Every change is a compare-and-swap (read with its ETag, write
with `If-Match`; the first write of a period with `If-None-Match: *`), so processes and machines
sharing the bucket never see a budget twice.

- `reserve` runs before every create (`CreatePlan.reserve`): the worst case, `max_images` x the
  price, must fit beside what the period has settled and reserved, else `BudgetExceeded` and
  nothing is sent. A re-attach to an existing prediction reserves nothing.
- `settle` runs when the prediction ends (`WaitPlan.finished`/`cancelled`): the reservation
  becomes what Replicate bills (`billed_images`).
- A reservation whose owner never settled it (a crashed run, a create whose caller never
  waited) is reconciled by the next `reserve` once its prediction is sure to have ended (its
  `Cancel-After` deadline plus the claim window): settled from the prediction's final state, or
  at its worst case when that cannot be known. It never blocks a budget forever.

With no limit configured `guard_for` returns None and a create makes no request for it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from botocore.exceptions import ClientError

from prefect_seedream.tasks import prediction_ledger as ledger
from prefect_seedream.tasks.errors import BudgetExceeded, InvalidInput, StorageFailed
from prefect_seedream.tasks.replicate_client.prediction import Prediction, PredictionStatus
from prefect_seedream.tasks.seedream_settings import SeedreamSettings, get_settings

if TYPE_CHECKING:
    from prefect_seedream.blocks.s3_destination import S3Destination

logger = logging.getLogger("prefect_seedream.spend")

SPEND = "spend"  # the ledger scope of the period records
KINDS = ("day", "month")
THRESHOLDS = (80, 100)  # percent of a limit at which `seedream.spend.threshold` is emitted
_PATIENCE_SECONDS = 120.0  # longest one update retries a contended record


def period_names(now: datetime, time_zone: str = "UTC") -> dict[str, str]:
    """The records `now` falls in: `{"day": "day-2026-12-02", "month": "month-2026-12"}`.

    Example:
        ```python
        from datetime import datetime, timezone
        from prefect_seedream.tasks.spend_limit import period_names

        late = datetime(2026, 12, 31, 23, 30, tzinfo=timezone.utc)
        assert period_names(late, "Europe/Berlin") == {"day": "day-2027-01-01",
                                                       "month": "month-2027-01"}
        ```
    """
    local = now.astimezone(ZoneInfo(time_zone))
    return {"day": f"day-{local:%Y-%m-%d}", "month": f"month-{local:%Y-%m}"}


def billed_images(status: PredictionStatus | str, outputs: int, reserved: int) -> int:
    """What Replicate bills for a prediction that ended `status` with `outputs` images, as this
    limit counts it (Seedream 4 is priced per output image):

    - `succeeded`: its outputs; `aborted` (never started): nothing, the reservation is released;
    - `failed`: its outputs, normally none (a failed prediction returns no billable image);
    - `canceled`, or not ended: the whole reservation. A canceled prediction is billed for what
      it ran, and how many images that was is not visible to us, so the worst case is kept.
    """
    status = PredictionStatus(status)
    if status is PredictionStatus.ABORTED:
        return 0
    if status in (PredictionStatus.SUCCEEDED, PredictionStatus.FAILED):
        return min(outputs, reserved) if reserved else outputs
    return reserved


@dataclass(frozen=True)
class Limits:
    """The configured limits: per period kind, (dollars, images); None where unset."""

    usd: Mapping[str, float | None]
    images: Mapping[str, int | None]

    @classmethod
    def of(cls, settings: SeedreamSettings) -> Limits:
        return cls(
            usd={"day": settings.spend_limit_usd_per_day,
                 "month": settings.spend_limit_usd_per_month},
            images={"day": settings.spend_limit_images_per_day,
                    "month": settings.spend_limit_images_per_month},
        )

    def kinds(self) -> list[str]:
        """The period kinds with any limit."""
        return [k for k in KINDS if self.usd[k] is not None or self.images[k] is not None]


def _setting(kind: str, unit: str) -> str:
    return f"SEEDREAM_SPEND_LIMIT_{unit.upper()}_PER_{kind.upper()}"


def _amount(unit: str, value: float) -> str:
    return f"{value:g} images" if unit == "images" else f"${value:.2f}"


def totals(record: Mapping[str, Any]) -> dict[str, float]:
    """A period's settled and reserved images and dollars."""
    entries = dict(record.get("entries") or {})
    return {
        "settled_images": int(record.get("settled_images") or 0),
        "settled_usd": round(float(record.get("settled_usd") or 0.0), 6),
        "reserved_images": sum(int(e.get("images") or 0) for e in entries.values()),
        "reserved_usd": round(sum(float(e.get("usd") or 0.0) for e in entries.values()), 6),
        "open": len(entries),
    }


def _with_totals(record: dict[str, Any]) -> dict[str, Any]:
    record.update({k: v for k, v in totals(record).items() if k != "open"})
    return record


def _settle_entry(record: dict[str, Any], entry_id: str, images: int) -> bool:
    """Move one reservation of `record` to settled at `images`; False if it is not there."""
    entries = dict(record.get("entries") or {})
    entry = entries.pop(entry_id, None)
    if entry is None:
        return False
    price = float(entry.get("price") or 0.0)
    record["entries"] = entries
    record["settled_images"] = int(record.get("settled_images") or 0) + images
    record["settled_usd"] = round(float(record.get("settled_usd") or 0.0) + images * price, 6)
    by = dict(record.get("by") or {})
    label = str(entry.get("by") or "outside a flow")
    was = by.get(label) or {}
    by[label] = {"images": int(was.get("images") or 0) + images,
                 "usd": round(float(was.get("usd") or 0.0) + images * price, 6)}
    record["by"] = by
    return True


def spender() -> str:
    """Who spends, for the record's breakdown: `deployment NAME`, `flow NAME`, or neither."""
    from prefect.runtime import deployment, flow_run

    if deployment.name:
        return f"deployment {deployment.name}"
    return f"flow {flow_run.flow_name}" if flow_run.flow_name else "outside a flow"


@dataclass
class Reservation:
    """One create's worst case, held in each limited period's record."""

    guard: SpendGuard
    id: str
    periods: list[str]
    images: int
    settled: bool = False

    def settle(self, images: int) -> None:
        """The prediction ended and Replicate bills `images`: settle every period; a failure is
        logged, never raised (reconciliation settles it later, at worst at the worst case)."""
        if self.settled:
            return
        self.settled = True
        for period in self.periods:
            try:
                self.guard.update(period, lambda record: record if _settle_entry(
                    record, self.id, min(images, self.images)) else None)
            except Exception as exc:
                logger.warning("could not settle spend reservation %s in %s: %s", self.id,
                               period, type(exc).__name__)


@dataclass
class SpendGuard:
    """The spend limit of one installation, kept in one destination's ledger."""

    at: ledger.Ledger
    limits: Limits
    price: float
    time_zone: str = "UTC"

    def path(self, period: str) -> str:
        return self.at.path(SPEND, period)

    def read(self, period: str) -> dict[str, Any]:
        found = self.at.read(self.path(period))
        return found[0] if found is not None else {}

    def update(self, period: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
               ) -> dict[str, Any]:
        """Apply `change` to the period's record by compare-and-swap until it sticks; `change`
        returns the new record, or None for no write. Raises what `change` raises."""
        deadline = time.monotonic() + _PATIENCE_SECONDS
        attempt = 0
        while True:
            found = self.at.read(self.path(period))
            record, etag = found if found is not None else ({}, None)
            record = {"v": 1, "period": period, "time_zone": self.time_zone,
                      "settled_images": 0, "settled_usd": 0.0, "entries": {}, "alerts": [],
                      **record}
            new = change(record)
            if new is None:
                return record
            if self.at.write(self.path(period), _with_totals(new), etag=etag) is not None:
                return new
            if time.monotonic() > deadline:
                raise StorageFailed(f"the spend record {self.path(period)} stayed contended for "
                                    f"{_PATIENCE_SECONDS:.0f}s; nothing was sent",
                                    prediction_id=None)
            attempt += 1
            time.sleep(random.uniform(0.01, min(0.05 * 2 ** min(attempt, 5), 1.0)))

    def reserve(self, key: str, images: int, *, claim: ledger.Claim | None, expires_in: float,
                lookup: Callable[[str], Prediction | None]) -> Reservation:
        """Reserve `images` (the create's worst case) in every limited period, or raise
        `BudgetExceeded` naming the limit; stale reservations are reconciled first."""
        now = datetime.now(timezone.utc)
        names = period_names(now, self.time_zone)
        expires = now + timedelta(seconds=expires_in)
        entry = {"request": key, "claim": claim.path if claim is not None else None,
                 "token": claim.token if claim is not None else None, "images": images,
                 "usd": round(images * self.price, 6), "price": self.price,
                 "by": spender(), "at": now.isoformat(), "expires": expires.isoformat()}
        held = Reservation(self, f"{key[:32]}.{uuid.uuid4().hex[:8]}", [], images)
        try:
            for kind in self.limits.kinds():
                self._reserve_in(kind, names[kind], held.id, entry, now, lookup)
                held.periods.append(names[kind])
        except BaseException:
            held.settle(0)  # give back what the earlier periods reserved
            raise
        return held

    def _reserve_in(self, kind: str, period: str, entry_id: str, entry: dict[str, Any],
                    now: datetime, lookup: Callable[[str], Prediction | None]) -> None:
        stale: dict[str, int] | None = None  # reconciled on the first read, once per reserve
        refused: list[BudgetExceeded] = []
        crossed: list[int] = []

        def change(record: dict[str, Any]) -> dict[str, Any] | None:
            nonlocal stale
            refused.clear()
            crossed.clear()
            if stale is None:
                stale = reconcile(record, now, self.at, lookup)
            settled_any = [_settle_entry(record, eid, n) for eid, n in stale.items()]
            if (error := self._refusal(kind, period, record, entry)) is not None:
                refused.append(error)
                return record if any(settled_any) else None
            record["entries"] = {**record["entries"], entry_id: entry}
            crossed.extend(self._crossed(kind, record))
            record["alerts"] = sorted({*record.get("alerts", []), *crossed})
            return record

        record = self.update(period, change)
        if refused:
            raise refused[0]
        if crossed:
            from prefect_seedream.flows.events import emit_spend_threshold

            for level in crossed:
                emit_spend_threshold(period, level, self.summary_of(kind, record))

    def _refusal(self, kind: str, period: str, record: dict[str, Any], entry: dict[str, Any]
                 ) -> BudgetExceeded | None:
        now = totals(record)
        for unit, limit, asked in (("images", self.limits.images[kind], entry["images"]),
                                   ("usd", self.limits.usd[kind], entry["usd"])):
            if limit is None:
                continue
            spent, reserved = now[f"settled_{unit}"], now[f"reserved_{unit}"]
            if spent + reserved + asked <= limit + 1e-9:
                continue
            name = _setting(kind, unit)
            return BudgetExceeded(
                f"the spend limit {name}={limit:g} for {period} ({self.time_zone}) would be "
                f"crossed: {_amount(unit, spent)} spent and {_amount(unit, reserved)} reserved, "
                f"this create asks up to {_amount(unit, asked)}; nothing was sent. Raise {name}, "
                f"or wait for the next {kind}",
                limit=name, period=period, spent=spent, reserved=reserved, asked=asked)
        return None

    def _crossed(self, kind: str, record: dict[str, Any]) -> list[int]:
        """Threshold levels this record reaches for the first time."""
        now = totals(record)
        shares = [(now[f"settled_{unit}"] + now[f"reserved_{unit}"]) / limit
                  for unit, limit in (("images", self.limits.images[kind]),
                                      ("usd", self.limits.usd[kind])) if limit]
        share = max(shares, default=0.0)
        seen = set(record.get("alerts") or [])
        return [level for level in THRESHOLDS if share * 100 >= level - 1e-9 and level not in seen]

    def summary_of(self, kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"period": record.get("period"), "time_zone": self.time_zone,
                "ledger": f"s3://{self.at.destination.bucket}/{self.at.root}/{SPEND}/",
                "limit_usd": self.limits.usd[kind], "limit_images": self.limits.images[kind],
                "price_per_image_usd": self.price, "by": dict(record.get("by") or {}),
                **totals(record)}

    def summary(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """The current day's and month's spend and limits, for `seedream spend`."""
        names = period_names(now or datetime.now(timezone.utc), self.time_zone)
        return [self.summary_of(kind, {"period": names[kind], **self.read(names[kind])})
                for kind in KINDS]


def reconcile(record: Mapping[str, Any], now: datetime, at: ledger.Ledger,
              lookup: Callable[[str], Prediction | None]) -> dict[str, int]:
    """Images billed for each reservation past its expiry: from its prediction's final state
    when its ledger record names one this attempt made (one still running stays held),
    nothing when the record shows the create made nothing, else the worst case."""
    found: dict[str, int] = {}
    for entry_id, entry in dict(record.get("entries") or {}).items():
        if datetime.fromisoformat(str(entry.get("expires"))) > now:
            continue
        worst = int(entry.get("images") or 0)
        found[entry_id] = worst
        claimed = at.read(str(entry["claim"])) if entry.get("claim") else None
        if claimed is None or claimed[0].get("owner") != entry.get("token"):
            continue  # no record, or the request was taken over: its outcome is not ours to see
        state, prediction_id = claimed[0].get("state"), claimed[0].get("prediction_id")
        if state == ledger.RELEASED:
            found[entry_id] = 0
        elif prediction_id and (prediction := lookup(str(prediction_id))) is not None:
            if not prediction.status.is_terminal:  # no Cancel-After ended it yet: keep it held
                del found[entry_id]
                continue
            found[entry_id] = billed_images(prediction.status, len(prediction.output_urls), worst)
        logger.info("Reconciled spend reservation %s: %d image(s) billed", entry_id,
                    found[entry_id])
    return found


def guard_for(ledger_at: ledger.Ledger | None, model: str = "bytedance/seedream-4"
              ) -> SpendGuard | None:
    """The installation's spend guard, None when no limit is set (then nothing is read).

    Kept in the settings' destination when one is configured (`SEEDREAM_DESTINATION_BLOCK`,
    `SEEDREAM_BUCKET`), else in the destination of the create's ledger, under its prefix.

    Raises:
        InvalidInput: a limit is set but there is no bucket to keep it in.
    """
    settings = get_settings()
    limits = Limits.of(settings)
    if not limits.kinds():
        return None
    try:
        ZoneInfo(settings.spend_time_zone)
    except Exception as exc:
        raise InvalidInput(f"SEEDREAM_SPEND_TIME_ZONE={settings.spend_time_zone!r} is not an "
                           f"IANA time zone (e.g. UTC, Europe/Berlin)") from exc
    destination: S3Destination | None = None
    if settings.destination_block or settings.bucket:
        from prefect_seedream.tasks.connections import resolve_destination

        destination = resolve_destination(None)
    elif ledger_at is not None:
        destination = ledger_at.destination
    if destination is None:
        raise InvalidInput("a spend limit is set (SEEDREAM_SPEND_LIMIT_*) but there is no "
                           "bucket to keep it in: set SEEDREAM_BUCKET or pass ledger=")
    from prefect_seedream.tasks.model_prices import required_price

    price = required_price(model, settings.price_per_image_usd, "the spend limit")
    return SpendGuard(ledger.Ledger(destination, destination.prefix), limits,
                      price, settings.spend_time_zone)


# Reservations of predictions this process created, by prediction id, settled when they end.
_tracked: dict[str, Reservation] = {}
_lock = threading.Lock()


def track(prediction_id: str, reservation: Reservation | None) -> None:
    if reservation is not None:
        with _lock:
            _tracked[prediction_id] = reservation


def settle_prediction(prediction_id: str, prediction: Prediction | None,
                      status: PredictionStatus) -> None:
    """Settle the reservation of a prediction that ended, if this process holds it."""
    if not PredictionStatus(status).is_terminal:
        return
    with _lock:
        held = _tracked.pop(prediction_id, None)
    if held is not None:
        outputs = len(prediction.output_urls) if prediction is not None else 0
        held.settle(billed_images(status, outputs, held.images))


def storage_failed(exc: ClientError, at: ledger.Ledger) -> StorageFailed:
    return StorageFailed(f"cannot read or write the spend limit's record in bucket "
                         f"{at.destination.bucket!r} ({type(exc).__name__}); nothing was sent",
                         prediction_id=None)


__all__ = [
    "Limits",
    "Reservation",
    "SpendGuard",
    "billed_images",
    "guard_for",
    "period_names",
    "reconcile",
    "settle_prediction",
    "track",
]
