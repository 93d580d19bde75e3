"""What the sync and async create tasks share: input checks, retry policy and the create plan,
with the ledger's claim protocol (`CreatePlan.obtain`) and the one sync create loop
(`run_create`). The wait side is `prefect_seedream.tasks.wait_support`. Blocking I/O only: the
async tasks run these in a worker thread."""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from pydantic import ValidationError

from prefect_seedream.tasks import prediction_ledger as ledger
from prefect_seedream.tasks import spend_limit
from prefect_seedream.tasks.connections import _log, replicate_api
from prefect_seedream.tasks.errors import (
    CreateOutcomeUnknown,
    InvalidInput,
    SeedreamError,
    StorageFailed,
)
from prefect_seedream.tasks.replicate_client import protocol
from prefect_seedream.tasks.replicate_client.api import ReplicateApi
from prefect_seedream.tasks.replicate_client.prediction import Prediction, PredictionStatus
from prefect_seedream.tasks.replicate_client.request_builders import RequestMatch
from prefect_seedream.tasks.seedream_input import SeedreamInput, describe_errors
from prefect_seedream.tasks.seedream_settings import get_settings

if TYPE_CHECKING:
    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials
    from prefect_seedream.blocks.s3_destination import S3Destination

def validate_input(input: SeedreamInput | dict[str, Any]) -> SeedreamInput:
    """`input` as a `SeedreamInput`, or `InvalidInput` naming every bad field."""
    if isinstance(input, SeedreamInput):
        return input
    try:
        return SeedreamInput.model_validate(input)
    except ValidationError as exc:
        raise InvalidInput(f"invalid Seedream input: {describe_errors(exc)}") from exc


def retry_policy() -> protocol.RetryPolicy:
    settings = get_settings()
    return protocol.RetryPolicy(
        max_create_attempts=settings.create_attempts,
        max_rate_limit_wait=settings.max_rate_limit_wait_seconds,
    )


@dataclass
class CreatePlan:
    """Everything a create needs, decided before any request is sent."""

    api: ReplicateApi
    model: str
    body: dict[str, Any]
    claim: ledger.Claim | None  # the request's ledger record; None: no ledger to keep it in
    options: dict[str, Any]
    log: Any
    sent_at: datetime | None = None
    spend: spend_limit.SpendGuard | None = None  # None: no spend limit is set
    reservation: spend_limit.Reservation | None = None
    made: str | None = None  # the id of the prediction this plan's own create made

    @property
    def match(self) -> RequestMatch:
        return RequestMatch.of(self.model, self.body)

    def _window(self) -> float:
        return float(self.options.get("wait_seconds") or 0) + get_settings().claim_window_seconds

    def _send(self, *, replace: bool) -> bool:
        assert self.claim is not None
        self.sent_at = protocol.utcnow()
        return self.claim.send(sent_at=self.sent_at, match=self.match.to_json(),
                               window=self._window(), replace=replace)

    def obtain(self) -> Prediction | None:
        """The prediction this request already has, or None once the claim to create it is ours.

        Claims the request's record; if another attempt or run holds it: attach to its
        prediction while that runs or succeeded; wait while its create is on its way; once that
        create is overdue (or its attempt is known to be gone) look for what it made in
        Replicate's list, adopt it, or take the claim over when it made nothing.

        Raises:
            CreateOutcomeUnknown: an earlier create's outcome cannot be found out (the list is
                unreadable): nothing is sent, the record stays for the next attempt to settle.
            StorageFailed: the ledger cannot be written; nothing is sent.
        """
        claim = self.claim
        if claim is None:
            self.sent_at = protocol.utcnow()
            return None
        try:
            return self._obtain(claim)
        except ClientError as exc:
            raise StorageFailed(
                f"cannot write the prediction ledger in bucket {claim.ledger.destination.bucket!r}"
                f" ({type(exc).__name__}); nothing was sent to Replicate", prediction_id=None,
            ) from exc

    def _obtain(self, claim: ledger.Claim) -> Prediction | None:
        if self._send(replace=False):
            return None
        seen: dict[str, float] = {}
        pause = 0.25
        while True:
            record = claim.refresh()
            if record is None:  # vanished (a lifecycle rule?): claim it afresh
                if self._send(replace=False):
                    return None
                continue
            state, prediction_id = record.get("state"), record.get("prediction_id")
            if prediction_id and state in (ledger.CREATED, ledger.ENDED):
                if state == ledger.CREATED or record.get("status") == "succeeded":
                    found = self._read(str(prediction_id))
                    if (kept := self.reattached(found)) is not None:
                        ledger.track(kept.id, claim)
                        return kept
                if self._send(replace=True):
                    return None
                continue
            if state != ledger.SENDING:  # released: the earlier create made nothing
                if self._send(replace=True):
                    return None
                continue
            first = seen.setdefault(claim.etag or "", time.monotonic())
            overdue = time.monotonic() - first >= float(record.get("window") or 0) or (
                protocol.utcnow() - _sent_at(record)).total_seconds() >= float(
                record.get("window") or 0) + retry_policy().clock_skew
            if not (overdue or record.get("unknown") or ledger.owner_gone(record.get("owner"))):
                time.sleep(pause)
                pause = min(pause * 1.5, 2.0)
                continue
            if (found := self._reconcile(claim, record)) is not None:
                return found
            if self._send(replace=True):
                return None

    def _read(self, prediction_id: str) -> Prediction | None:
        try:
            found: Prediction = self.api.run(protocol.get(prediction_id, policy=retry_policy()))
        except SeedreamError:  # gone from Replicate (or unreadable): it cannot be re-attached
            return None
        return found

    def _reconcile(self, claim: ledger.Claim, record: dict[str, Any]) -> Prediction | None:
        """What an unanswered create in `record` made, adopted into the record; None when the
        list shows it made nothing (or nothing worth re-attaching to)."""
        match = RequestMatch.from_json(record["match"])
        self.log.info("Request %s: an earlier create never recorded its answer; looking for "
                      "what it made", claim.key)
        try:
            found: Prediction | None = self.api.run(
                protocol.find(match, since=_sent_at(record), policy=retry_policy()),
                on_note=self.log.info)
        except CreateOutcomeUnknown as exc:
            raise self.unknown(exc) from exc
        if found is None or not claim.created(found.id, found.status, adopt=True):
            return None
        if (kept := self.reattached(found)) is not None:
            ledger.track(kept.id, claim)
        return kept

    def reserve(self) -> None:
        """Reserve this create's worst case (`max_images` x the price) under the spend limit,
        after the claim is ours and before any request; refused (`BudgetExceeded`) or unable
        to, the claim is given back and nothing is sent."""
        if self.spend is None:
            return
        cancel_after = float(self.options.get("cancel_after_seconds") or 0) or (
            get_settings().timeout_seconds + get_settings().cancel_after_margin_seconds)
        try:
            self.reservation = self.spend.reserve(
                self.claim.key if self.claim is not None else uuid.uuid4().hex[:24],
                int(self.body.get("max_images") or 1), claim=self.claim,
                expires_in=cancel_after + self._window(), lookup=self._read)
        except BaseException as exc:
            if self.claim is not None:
                ledger.retire(self.claim.token)
                with contextlib.suppress(Exception):
                    self.claim.release()
            if isinstance(exc, ClientError):
                raise spend_limit.storage_failed(exc, self.spend.at) from exc
            raise

    def unknown(self, exc: CreateOutcomeUnknown) -> CreateOutcomeUnknown:
        """`exc`, naming the request key and where its record is, for the dashboard and logs."""
        if self.claim is None:
            return exc
        where = f"s3://{self.claim.ledger.destination.bucket}/{self.claim.path}"
        return CreateOutcomeUnknown(f"{exc.message} Request key {self.claim.key} ({where}).")

    def interrupted(self, exc: BaseException) -> protocol.Protocol | None:
        """After a create failed or was interrupted: give a create that made nothing back to the
        ledger, and return a protocol that cancels whatever an interrupted one made. None for
        the create's own errors, which made nothing."""
        if self.claim is not None:
            ledger.retire(self.claim.token)
        if isinstance(exc, CreateOutcomeUnknown):
            # The record stays `sending`, marked so that the next attempt, in any process,
            # reconciles at once instead of waiting out the claim window of a live owner.
            if self.claim is not None:
                with contextlib.suppress(Exception):
                    self.claim.mark_unknown()
            return None
        if isinstance(exc, SeedreamError):
            if self.claim is not None:
                with contextlib.suppress(Exception):
                    self.claim.release()
            if self.reservation is not None:  # the create made nothing: nothing is billed
                self.reservation.settle(0)
            return None
        if self.sent_at is None:
            return None
        return protocol.abandon(self.match, since=self.sent_at, policy=retry_policy())

    def create(self) -> protocol.Protocol:
        return protocol.create(self.model, self.body, now=protocol.utcnow, policy=retry_policy(),
                               **self.options)

    def reattached(self, prediction: Prediction | None) -> Prediction | None:
        """The saved prediction if it is worth re-attaching to, else None (create anew).

        Running or succeeded: re-attach, never pay twice. Failed, canceled or aborted: that
        attempt is over, and the retry that brought us here wants a new one.
        """
        if prediction is None:
            return None
        if prediction.status.is_terminal and prediction.status is not PredictionStatus.SUCCEEDED:
            self.log.info("Prediction %s from an earlier attempt ended %s; creating a new one",
                          prediction.id, prediction.status.value)
            return None
        self.log.info("Re-attached to prediction %s (%s); not creating another",
                      prediction.id, prediction.status.value)
        return prediction

    def created(self, prediction: Prediction) -> Prediction | None:
        """Record the new prediction's id; None when another run took the request over while
        this create went unanswered (ours is then cancelled: call `obtain` again)."""
        self.log.info("Created prediction %s (%s)", prediction.id, prediction.status.value)
        claim = self.claim
        spend_limit.track(prediction.id, self.reservation)
        self.made = prediction.id
        if claim is None:
            return prediction
        ledger.retire(claim.token)
        try:
            won = claim.created(prediction.id, prediction.status)
        except Exception as exc:  # the prediction exists: keep it, say where the gap is
            self.log.error("Could not record prediction %s in the ledger (%s); a re-run will "
                           "look for it by its request", prediction.id, type(exc).__name__)
            return prediction
        if won:
            ledger.track(prediction.id, claim)
            return prediction
        self.made = None
        self.log.warning("Request %s was taken over while prediction %s's create went "
                         "unanswered; cancelling %s, the request is served once",
                         claim.key, prediction.id, prediction.id)
        self.api.run(protocol.cancel(prediction.id, policy=retry_policy()))
        return None


def run_create(plan: CreatePlan, acquire_slot: Callable[[], None]) -> Prediction:
    """The one create loop of the sync paths: the prediction the request already has, else a
    new one made under the ledger's claim (`acquire_slot` first takes the shared create budget).
    A create interrupted from outside cancels what it made; one whose outcome is unknown
    raises `CreateOutcomeUnknown` naming the request key."""
    while True:
        if (earlier := plan.obtain()) is not None:
            return earlier
        plan.reserve()  # the spend limit: BudgetExceeded before any request
        acquire_slot()
        try:
            created = plan.api.run(plan.create(), on_note=plan.log.info)
        except BaseException as exc:
            if (cleanup := plan.interrupted(exc)) is not None:
                plan.api.run(cleanup, on_note=plan.log.warning)
            if isinstance(exc, CreateOutcomeUnknown):
                raise plan.unknown(exc) from exc
            raise
        if (recorded := plan.created(created)) is not None:
            return recorded


def _sent_at(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(record.get("sent_at")))


def ledger_for(destination: S3Destination | str | None, *, prefix: str | None = None
               ) -> ledger.Ledger | None:
    """The ledger of a destination (`{prefix}/_ledger/`); for None, the settings' destination
    when one is configured, else None (a create outside any destination keeps no record)."""
    from prefect_seedream.tasks.connections import resolve_destination

    if destination is None:
        settings = get_settings()
        if not (settings.destination_block or settings.bucket):
            return None
    target = resolve_destination(destination)
    return ledger.Ledger(target, target.prefix if prefix is None else prefix)


@functools.cache
def _warn_no_ledger() -> None:
    _log().warning(
        "create_prediction has no prediction ledger (pass ledger=, or set SEEDREAM_BUCKET or "
        "SEEDREAM_DESTINATION_BLOCK): a retry of this flow run cannot find what it paid for")


def plan_create(
    input: SeedreamInput | dict[str, Any],
    credentials: ReplicateCredentials | str | None,
    *,
    webhook: str | None,
    webhook_events_filter: list[str] | None,
    wait_seconds: int | None,
    cancel_after: float | None,
    idempotency_key: str | None,
    sources: Sequence[str] | None = None,
    ledger_at: ledger.Ledger | None = None,
    item_key: str | None = None,
    request_id: str | None = None,
    model: str | None = None,
) -> CreatePlan:
    """Validate, resolve credentials and name the request's ledger record; raises before any
    request.

    The record is named by the request's identity (`ledger.request_key`): `sources`, when
    given, name the images in place of the URLs sent, which may differ on every attempt. A
    flow run's requests are scoped to it; a batch item (`item_key`) is shared by every run of
    its batch, and a request the caller named (`request_id`) by every run that names it. The
    body sent, and so the reconciliation of a lost create, is this attempt's own.
    """
    from prefect_seedream.tasks.model_schemas import checked_request

    settings = get_settings()
    model = model or settings.model
    request = checked_request(input, model, credentials)  # the published schema, or refused
    body = request.to_request()
    try:
        key = ledger.request_key(model, body, idempotency_key, sources)
    except ValueError as exc:
        raise InvalidInput(f"invalid sources: {exc}") from exc
    api = replicate_api(credentials)
    flow_run_id = ledger.current_flow_run_id()
    if request_id is not None:
        if not request_id.strip() or len(request_id) > 256:
            raise InvalidInput("request_id must be 1..256 characters")
        if ledger_at is None:
            raise InvalidInput("request_id needs a prediction ledger: pass ledger= (an "
                               "S3Destination) or set SEEDREAM_BUCKET")
        identity = ledger.request_identity(model, body, sources)
        item_key, scope = ledger.named_key(request_id, identity), ledger.REQUESTS
    else:
        scope = ledger.ITEMS if item_key else ledger.run_scope(str(flow_run_id))
    if ledger_at is None and flow_run_id and not item_key:
        _warn_no_ledger()
    claim = None
    if ledger_at is not None and (item_key or flow_run_id):
        claim = ledger.Claim(ledger_at, scope, item_key or key,
                             run=flow_run_id or f"local-{uuid.uuid4().hex[:12]}")
    if cancel_after is None:
        cancel_after = settings.timeout_seconds + settings.cancel_after_margin_seconds
    options = {
        "webhook": webhook, "webhook_events_filter": webhook_events_filter,
        "wait_seconds": wait_seconds, "cancel_after_seconds": cancel_after or None,
    }
    return CreatePlan(api, model, body, claim, options, _log(),
                      spend=spend_limit.guard_for(ledger_at, model))
