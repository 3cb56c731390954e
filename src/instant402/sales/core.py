"""The paid call, one sale from start to end, independent of the door it came through.

Steps, in the order money needs them:

1. ``prepare``: resolve the resource (404 unknown, 503 paused) → validate the buyer's input (422 before any payment
   is asked for) → check the call's worst-case cost against the creator's per-call cap → quote (the x402
   requirements and the Bazaar extension, built once per resource version).
2. ``complete``, for a decoded payment, through named steps that other doors reuse: ``admitted`` (the payer's
   rate, an upstream slot, the worst case held from today's budget) → ``verify`` (the facilitator) → ``claim``
   (once in the database: a replay fails on a unique key, across processes) → ``run`` (the model, with the
   creator's key; ``ran`` accounts for a run made by another door, e.g. a stream) → ``settle`` (keep the result,
   settle only when the run delivered, then record: ``settle_and_record``). A long run is claimed with a job
   instead (``claim_long_run``) and the job runner finishes it with the same settle step (sales.long_runs).

Inputs and outputs are plain values (the resource, the buyer's input, the decoded payment, an outcome). Doors turn
their wire format into these and back; none of them touches a payment or a usage row directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from x402.extensions.payment_identifier import (
    PAYMENT_IDENTIFIER,
    declare_payment_identifier_extension,
    extract_payment_identifier,
)
from x402.schemas import PaymentPayload, PaymentRequirements

from instant402.db.base import utcnow
from instant402.db.sqlite_loop import quick_write
from instant402.discovery import bazaar
from instant402.errors import ApiError
from instant402.execution import budgets, jobs, notify
from instant402.execution.creator_limits import LimitsView
from instant402.execution.errors import paid_for_part
from instant402.execution.limits import OverCapacity, RateLimited
from instant402.execution.models import Job, Notification
from instant402.execution.runner import RunOutcome, run_resource
from instant402.keys.service import KeyUnavailable, open_key_for_upstream
from instant402.ops import metrics
from instant402.payments.gateway import PaymentGateway, SettleOutcome, payment_terms
from instant402.payments.models import KeptResult, PaymentClaim
from instant402.payments.upto import SCHEME_UPTO, settlement_requirements
from instant402.resources.models import AnyResource
from instant402.resources.params import validate_input
from instant402.resources.pricing import METERED, MeteredCharge, charge_for
from instant402.resources.schemas import endpoint_url
from instant402.resources.service import get_for_call
from instant402.runtime import Runtime, payments_unavailable
from instant402.sales import settlement
from instant402.usage.models import UsageKind, UsageRecord, UsageStatus, add_usage, update_usage

log = logging.getLogger(__name__)

# What buyers are told about a paused resource: never the creator's key, credit or budget details.
_PAUSE_MESSAGES = {
    "manual": "This resource is paused by its creator.",
    "model_unavailable": "This resource's model is unavailable right now.",
    "budget": "This resource has reached its daily limit; retry after the reset.",
}
_DEFAULT_PAUSE_MESSAGE = "This resource is temporarily unavailable; its creator has been notified."


def payment_timeout_seconds(resource: AnyResource, ceiling: int) -> int:
    """Validity to ask of the buyer's authorization: the longest legitimate run plus time to settle.

    A generous 25 tokens/s for text, a minute more for images; never above the configured ceiling.
    """
    seconds = 45 + resource.max_tokens // 25 + (60 if resource.output_kind == "image" else 0)
    return max(30, min(seconds, ceiling))


# --- plain values in and out -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Quote:
    """What a buyer is asked to pay for one resource version, built once per process and version."""

    resource: AnyResource
    url: str
    requirements: PaymentRequirements  # the first offer (a flat resource's only one)
    extensions: dict[str, Any]
    first_answer: tuple[str, dict[str, Any]]  # the 402 before any payment: header value and body
    accepts: list[PaymentRequirements]  # every offer: a metered resource's ``upto`` and ``exact`` at its maximum

    def requirement_for(self, payload: PaymentPayload) -> PaymentRequirements:
        """The offer the payment chose (by scheme); the first one when it names none of ours (verify refuses it)."""
        for requirements in self.accepts:
            if requirements.scheme == payload.accepted.scheme:
                return requirements
        return self.requirements


@dataclass(slots=True)
class Prepared:
    """A call that may be paid: its resource, the validated input (None for a bodyless probe) and its quote."""

    quote: Quote
    gateway: PaymentGateway
    values: dict[str, Any] | None
    limits: LimitsView | None = None
    worst: Any = None

    @property
    def resource(self) -> AnyResource:
        return self.quote.resource


@dataclass(frozen=True, slots=True)
class PaymentRefused:
    """No run: the payment cannot be used (``reason`` is a stable code). The buyer keeps their money."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Delivered:
    """The run delivered and the payment settled: the success body (with its receipt) and the encoded
    ``PAYMENT-RESPONSE`` value."""

    body: dict[str, Any]
    payment_response: str
    settle: SettleOutcome | None = None
    redelivered: bool = False  # the kept result of an earlier sale for the same payment: no new charge


@dataclass(frozen=True, slots=True)
class Queued:
    """A long run bound to the payment as a job; the buyer polls ``job_url``."""

    job_url: str
    body: dict[str, Any]


Outcome = PaymentRefused | Delivered | Queued


# --- 1. prepare: resolve, validate, cost check, quote ------------------------------------------------------------


async def prepare(rt: Runtime, creator: str, slug: str, body: Any, *, client_ip: str = "unknown") -> Prepared:
    """Everything that happens before a payment is looked at. ``body`` None is a probe with no input: it gets the
    quote (whose Bazaar extension carries the input schema) without validation. Raises ApiError."""
    resource = await resolve(rt, creator, slug)
    values = limits = worst = None
    if body is not None:
        values = validate_input(resource, body)
        # The call's worst-case upstream cost within the creator's per-call cap, before any quote.
        limits, worst = await budgets.check_call_cost(rt, resource, values)
    try:
        await rt.limits.check_ip(client_ip)
    except RateLimited as exc:
        raise exc.to_api_error() from None
    gateway = await rt.payments()
    return Prepared(quote(rt, gateway, resource), gateway, values, limits, worst)


async def resolve(rt: Runtime, creator: str, slug: str) -> AnyResource:
    async with rt.db.connect() as conn:
        resource = await get_for_call(conn, creator, slug)
    # Lazy end of a budget pause once the day is over.
    budget_paused = resource.status == "paused" and resource.pause_kind == budgets.BUDGET
    if budget_paused and await budgets.lift_if_reset(rt, resource.owner_id):
        async with rt.db.connect() as conn:
            resource = await get_for_call(conn, creator, slug)
    if resource.status != "published":
        raise _paused(resource)
    return resource


def _paused(resource: AnyResource) -> ApiError:
    headers = {"Retry-After": str(budgets.seconds_to_reset())} if resource.pause_kind == "budget" else None
    message = _PAUSE_MESSAGES.get(resource.pause_kind or "manual", _DEFAULT_PAUSE_MESSAGE)
    return ApiError(503, "resource_paused", message, {"charged": False}, headers=headers)


# Requirements and the discovery extension depend only on the resource's definition and payee: built once per
# version and kept per process (the SDK's model building and schema work are the bulk of a 402's cost).
_QUOTES_LIMIT = 4096


def quote(rt: Runtime, gateway: PaymentGateway, resource: AnyResource) -> Quote:
    pay_to = resource.pay_to or resource.owner.payout_address
    if not pay_to:
        raise ApiError(503, "resource_unavailable", _DEFAULT_PAUSE_MESSAGE, {"charged": False})
    key = (resource.id, resource.version, resource.created_at, resource.owner.username, pay_to)
    cached = rt.quotes.get(key)
    if cached is None:
        timeout = payment_timeout_seconds(resource, rt.settings.max_timeout_seconds)
        url = endpoint_url(rt.settings.public_url, resource.owner.username, resource.slug)
        accepts = [gateway.requirements(resource.price_atomic, pay_to, timeout)]
        extensions = {
            **bazaar.http_extension(resource),
            # Clients may name each purchase: retrying with the same identifier never buys the call twice.
            PAYMENT_IDENTIFIER: declare_payment_identifier_extension(required=False),
        }
        if resource.pricing_mode == METERED and gateway.upto_supported:
            # Metered: ``upto`` with the maximum first (settled at the real cost after the run), then ``exact`` at
            # the maximum for clients without ``upto``. price_atomic of a metered resource is its maximum.
            accepts.insert(0, gateway.upto_requirements(resource.price_atomic, pay_to, timeout))
            extensions.update(gateway.upto_extensions)
        answer_with = accepts if len(accepts) > 1 else accepts[0]
        first = _answer(gateway, resource, url, answer_with, extensions, None)
        if len(rt.quotes) >= _QUOTES_LIMIT:
            rt.quotes.clear()
        cached = rt.quotes[key] = (url, accepts[0], extensions, first, accepts)
    return Quote(resource, *cached)


def _answer(gateway: PaymentGateway, r: AnyResource, url: str, requirements, extensions, reason: str | None):
    description = r.description or r.name
    return gateway.payment_required_answer(url, description, "application/json", requirements, extensions, reason)


def label(resource: AnyResource) -> str:
    """The resource as metrics name it."""
    return f"{resource.owner.username}/{resource.slug}"


def payment_required(prepared: Prepared, reason: str | None = None) -> tuple[str, dict[str, Any]]:
    """The x402 PaymentRequired for this call (with ``reason`` as its error): the encoded header value and the same
    object as JSON, for doors to put on their wire."""
    q = prepared.quote
    metrics.paid_call("quoted" if reason is None else "refused", label(q.resource))
    if reason is None:
        return q.first_answer
    answer_with = q.accepts if len(q.accepts) > 1 else q.requirements
    return _answer(prepared.gateway, q.resource, q.url, answer_with, q.extensions, reason)


# --- 2. complete: hold, verify, claim, run, settle, record -------------------------------------------------------


@dataclass(slots=True)
class Hold:
    """The worst case reserved from today's budget; replaced by the actual cost after the run (or by the job)."""

    day: Any
    pusd: int
    actual_usd: Any = None
    transferred: bool = False  # a long run's job releases it


@dataclass(slots=True)
class Sale:
    """One paid attempt in flight, filled in step by step."""

    prepared: Prepared
    payload: PaymentPayload
    hold: Hold | None = None
    verify_ms: int | None = None
    payer: str | None = None
    nonce: str | None = None
    valid_before: int | None = None
    usage_id: int | None = None
    key: Any = None  # the creator's opened key, for a run in this process

    @property
    def resource(self) -> AnyResource:
        return self.prepared.quote.resource

    @property
    def requirements(self) -> PaymentRequirements:
        """The offer this payment is for (verified, claimed and settled against)."""
        return self.prepared.quote.requirement_for(self.payload)

    def deadline(self, rt: Runtime) -> float:
        """When the run must end: before the authorization expires, leaving time to settle."""
        deadline = time.time() + payment_timeout_seconds(self.resource, rt.settings.max_timeout_seconds)
        if self.valid_before:
            deadline = min(deadline, self.valid_before - rt.settings.settle_margin_seconds)
        return deadline


async def complete(rt: Runtime, prepared: Prepared, payload: PaymentPayload) -> Outcome:
    """Sell the prepared call for ``payload``: admit → verify → claim → run → settle → record. Raises ApiError for
    refusals that are not about the payment (over capacity, budget, a failed run: never charged)."""
    await validate_payment_input(rt, prepared)
    async with admitted(rt, prepared, payload) as sale:
        answered = await verify(rt, sale)
        if answered is not None:
            return answered
        if jobs.is_long_run(sale.resource, rt.settings.long_run_seconds):
            return await claim_long_run(rt, sale)
        answered = await claim(rt, sale)
        if answered is not None:
            return answered
        outcome = await run(rt, sale)
        return await settle(rt, sale, success_body(outcome, None), outcome)


@contextlib.asynccontextmanager
async def admitted(rt: Runtime, prepared: Prepared, payload: PaymentPayload) -> AsyncIterator[Sale]:
    """Admission, before the payment is verified: the payer's rate, an upstream slot of the creator's and the worst
    case held from today's budget (released or replaced by the actual cost on the way out). A refusal here touches
    no payment."""
    payer = payment_terms(payload).payer or ""
    try:
        await rt.limits.check_payer(payer)
        async with rt.limits.upstream_slot(str(prepared.resource.owner_id)):
            sale = Sale(prepared, payload)
            sale.hold = await _hold_budget(rt, prepared)
            try:
                yield sale
            finally:
                hold = sale.hold
                if hold is not None and not hold.transferred:
                    await budgets.replace_hold(rt, prepared.resource.owner_id, hold.day, hold.pusd, hold.actual_usd)
    except (OverCapacity, RateLimited) as exc:
        err = exc.to_api_error()
        await _refused(rt, prepared, payer or None, err.code, category="capacity")
        raise err from None


async def validate_payment_input(rt: Runtime, prepared: Prepared) -> None:
    """A payment came with no input (a bodyless call): the empty input must be valid, like any other."""
    if prepared.values is None:
        prepared.values = validate_input(prepared.resource, {})
        prepared.limits, prepared.worst = await budgets.check_call_cost(rt, prepared.resource, prepared.values)


async def _refused(rt: Runtime, prepared: Prepared, payer: str | None, code: str | None, **fields) -> None:
    """Every paid attempt has a usage row, also one refused before it could run."""
    await record(
        rt,
        resource_id=prepared.resource.id,
        owner_id=prepared.resource.owner_id,
        kind=UsageKind.paid,
        status=UsageStatus.refused,
        payer=payer,
        amount_atomic=0,
        network=prepared.quote.requirements.network,
        error_category=fields.pop("category", "payment"),
        error_code=code,
        finished_at=utcnow(),
        **fields,
    )


async def _hold_budget(rt: Runtime, prepared: Prepared) -> Hold | None:
    limits = prepared.limits
    if limits is None or limits.daily_budget_pusd is None:
        return None
    pusd = budgets.to_pusd(prepared.worst)
    day = await budgets.reserve(rt, prepared.resource.owner_id, pusd)
    if day is None:
        raise await budgets.budget_reached(rt, prepared.resource, limits)
    return Hold(day, pusd)


async def verify(rt: Runtime, sale: Sale) -> Outcome | None:
    """Check the payment's own terms, then verify it through the facilitator. A refused payment may be one that
    already bought this call: then its kept result is the answer (``answer_again``). Otherwise the refusal is
    recorded and returned."""
    q = sale.prepared.quote
    refusal = check_terms(rt, sale)
    verified = None
    if refusal is None:
        started = time.perf_counter()
        verified = await sale.prepared.gateway.verify(sale.payload, sale.requirements, q.url)
        sale.verify_ms = int((time.perf_counter() - started) * 1000)
        if not verified.ok and verified.reason == "facilitator_unavailable":
            # Not the buyer's fault and nothing charged: the same answer as while the facilitator is known down.
            await _refused(rt, sale.prepared, None, "payments_unavailable", verify_ms=sale.verify_ms)
            raise payments_unavailable(rt.settings.facilitator_retry_seconds)
        if not verified.ok:
            refusal = PaymentRefused(str(verified.reason), "The payment was not accepted: " + str(verified.reason))
    if refusal is not None:
        earlier = await answer_again(rt, sale, by_identifier=False)
        if not isinstance(earlier, PaymentRefused | None):
            return earlier
        refusal = earlier or refusal
        payer = verified.payer if verified is not None and isinstance(verified.payer, str) else None
        await _refused(rt, sale.prepared, payer, refusal.reason, verify_ms=sale.verify_ms)
        return refusal
    sale.payer, sale.nonce, sale.valid_before = verified.payer, verified.nonce, verified.valid_before
    return None


def check_terms(rt: Runtime, sale: Sale) -> PaymentRefused | None:
    """What the facilitator does not check for us: the payment names this resource, and its authorization is valid
    long enough to run and settle, but not absurdly long."""
    resource_info = sale.payload.resource
    if resource_info is None or resource_info.url != sale.prepared.quote.url:
        # The resource field is not signed, so this is advisory; but a payment made out for another resource (or
        # for none) is not spent on this one.
        return PaymentRefused("resource_mismatch", "The payment must name this resource's URL as its resource.")
    valid_before = payment_terms(sale.payload).valid_before
    if valid_before is None:
        return PaymentRefused("invalid_payload", "The authorization has no valid validBefore.")
    now = time.time()
    if valid_before > now + sale.requirements.max_timeout_seconds + 60:
        return PaymentRefused("valid_before_too_far", "The authorization's validBefore is beyond maxTimeoutSeconds.")
    if valid_before < now + rt.settings.settle_margin_seconds + rt.settings.min_run_seconds:
        return PaymentRefused(
            "payment_expires_too_soon",
            "The authorization expires before the call could run and settle; sign a fresh payment.",
        )
    return None


async def claim(rt: Runtime, sale: Sale) -> Outcome | None:
    """One run per payment, enforced by a unique key in the database (also across processes); a payment that
    already bought this call gets its kept result instead. Then the payer's outstanding payments must be covered."""
    claimed = await _claim(rt, sale, None)
    if claimed is None:
        return await _claimed_before(rt, sale)
    sale.usage_id, sale.key = claimed
    return await _check_exposure(rt, sale)


async def _claimed_before(rt: Runtime, sale: Sale) -> Outcome:
    earlier = await answer_again(rt, sale, by_identifier=True)
    if not isinstance(earlier, PaymentRefused | None):
        return earlier
    refusal = earlier or PaymentRefused("payment_already_used", "This payment was already used.")
    await _refused(rt, sale.prepared, sale.payer, refusal.reason, verify_ms=sale.verify_ms)
    return refusal


async def claim_long_run(rt: Runtime, sale: Sale) -> PaymentRefused | Queued:
    """A long run becomes a job bound to this payment, created with the claim; the job runner finishes the sale."""
    token, digest = jobs.new_token()
    job = jobs.new_job(
        sale.resource,
        sale.prepared.values,
        sale.payload,
        sale.requirements,
        token_hash=digest,
        valid_before=jobs.as_datetime(sale.valid_before),
        budget_hold_pusd=sale.hold.pusd if sale.hold else 0,
    )
    claimed = await _claim(rt, sale, job)
    if claimed is None:
        return await _claimed_before(rt, sale)
    sale.usage_id = claimed[0]
    exposed = await _check_exposure(rt, sale)
    if exposed is not None:
        return exposed
    if sale.hold is not None:
        sale.hold.transferred = True
    rt.wake_jobs()
    url = jobs.job_url(rt.settings.public_url, token)
    return Queued(url, jobs.accepted_body(url, job))


async def run(rt: Runtime, sale: Sale) -> RunOutcome:
    """Run the model with the creator's key. A failed run is recorded and raised as the buyer's error: nothing is
    settled, the buyer keeps their money."""
    outcome = await run_resource(rt, sale.resource, sale.prepared.values, sale.deadline(rt), sale.key)
    return await ran(rt, sale, outcome)


async def ran(rt: Runtime, sale: Sale, outcome: RunOutcome) -> RunOutcome:
    """Account for a finished run (whatever door ran it): the budget's actual cost, and a failure's record."""
    if sale.hold is not None:
        sale.hold.actual_usd = outcome.billed_usd
    if outcome.failure is not None:
        await finish_usage(rt, sale.usage_id, outcome)
        metrics.paid_call("failed_uncharged", label(sale.resource))
        raise outcome.failure.to_api_error()
    return outcome


# --- a payment seen before ---------------------------------------------------------------------------------------

_claims = PaymentClaim.__table__
_usage = UsageRecord.__table__
_kept = KeptResult.__table__
_EARLIER = (
    select(
        _claims.c.usage_id,
        _claims.c.payment_digest,
        _claims.c.request_digest,
        _usage.c.status,
        _kept.c.body,
        _kept.c.payment_response,
    )
    .select_from(_claims.join(_usage, _usage.c.id == _claims.c.usage_id))
    .outerjoin(_kept, _kept.c.usage_id == _claims.c.usage_id)
)


def payment_digest(payload: PaymentPayload) -> str:
    """The signed authorization and its signature: only their holder can ask for a sale's result again."""
    return hashlib.sha256(json.dumps(payload.payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def request_digest(resource_id: int, values: dict[str, Any] | None) -> str:
    """The call a payment bought: the resource and the buyer's validated input."""
    text = json.dumps([resource_id, values or {}], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


async def _earlier(rt: Runtime, sale: Sale, by_identifier: bool):
    terms = payment_terms(sale.payload)
    network = sale.prepared.quote.requirements.network
    payer, nonce = str(terms.payer or "").lower(), str(terms.nonce or "").lower()
    identifier = extract_payment_identifier(sale.payload) if by_identifier else None
    async with rt.db.sessions() as db:
        query = _EARLIER.where(_claims.c.network == network, _claims.c.payer == payer)
        row = (await db.execute(query.where(_claims.c.nonce == nonce))).first()
        if row is not None:
            return row, True
        if identifier:
            row = (await db.execute(query.where(_claims.c.payment_id == identifier))).first()
    return row, False


async def answer_again(rt: Runtime, sale: Sale, *, by_identifier: bool) -> Outcome | None:
    """A payment (or, with ``by_identifier``, a payment identifier) that already bought this very call: its kept
    result (200, no new charge), or 409 while that sale is still running or settling; a payment already used for
    anything else is refused as such. None when the payment was never claimed here."""
    row, same_payment = await _earlier(rt, sale, by_identifier)
    if row is None:
        return None
    used = PaymentRefused("payment_already_used", "This payment was already used.")
    if same_payment and row.payment_digest != payment_digest(sale.payload):
        return used  # the same authorization with another signature: not its holder
    if row.request_digest != request_digest(sale.resource.id, sale.prepared.values):
        if same_payment:
            return used
        raise ApiError(
            409,
            "payment_identifier_conflict",
            "This payment identifier was already used for another call; use a new identifier.",
            {"charged": False},
        )
    status = row.status
    if status == UsageStatus.pending:
        status = await settlement.resolve(rt, row.usage_id)
        if status == UsageStatus.succeeded:
            row, _ = await _earlier(rt, sale, by_identifier)
    if status in (UsageStatus.running, UsageStatus.pending):
        raise ApiError(
            409,
            "payment_in_progress",
            "This payment's call is still running or settling; re-send it shortly to get the result.",
            {"charged": None},
            headers={"Retry-After": "2"},
        )
    if status != UsageStatus.succeeded:
        return used
    if row.payment_response is None:
        hours = f"{rt.settings.result_retention_hours:g}"
        return PaymentRefused(
            "payment_already_used",
            f"This payment was already used and its result has expired (results are kept for {hours} hours).",
        )
    await record(
        rt,
        resource_id=sale.resource.id,
        owner_id=sale.resource.owner_id,
        kind=UsageKind.paid,
        status=UsageStatus.redelivered,
        payer=payment_terms(sale.payload).payer or None,
        amount_atomic=0,
        network=sale.prepared.quote.requirements.network,
        finished_at=utcnow(),
    )
    metrics.paid_call("redelivered", label(sale.resource))
    return Delivered(row.body, row.payment_response, None, redelivered=True)


# --- a payer's outstanding payments -------------------------------------------------------------------------------

_OUTSTANDING = (
    select(func.coalesce(func.sum(_claims.c.amount_atomic), 0))
    .select_from(_claims.join(_usage, _usage.c.id == _claims.c.usage_id))
    .where(_usage.c.status.in_((UsageStatus.running, UsageStatus.pending)))
)


async def _check_exposure(rt: Runtime, sale: Sale) -> PaymentRefused | None:
    """The facilitator checks each authorization against the balance alone, so a payer could have several calls
    verified at once that only one of them can pay for. Admit a claimed call only while the payer's balance covers
    all of their verified, unsettled payments (this one included); otherwise release the claim, before any run.
    Every process sees every claim, so two concurrent calls cannot both slip under the balance."""
    if rt.chain is None:
        return None
    requirements = sale.requirements
    own = int(requirements.amount)
    async with rt.db.connect() as conn:
        query = _OUTSTANDING.where(_claims.c.network == requirements.network, _claims.c.payer == sale.payer.lower())
        outstanding = int(await conn.scalar(query))
    if outstanding <= own:
        return None  # this payment alone: the facilitator checked the balance covers it
    try:
        balance = await rt.chain.balance_of(requirements.asset, sale.payer)
    except Exception as exc:
        log.warning("balance check failed (%s), admitting the call", type(exc).__name__)  # not the RPC URL
        return None
    if balance >= outstanding:
        return None
    async with rt.db.sessions() as db:
        await db.execute(delete(Job).where(Job.usage_id == sale.usage_id))
        await db.execute(delete(PaymentClaim).where(PaymentClaim.usage_id == sale.usage_id))
        await update_usage(
            db,
            sale.usage_id,
            status=UsageStatus.refused,
            amount_atomic=0,
            error_category="payment",
            error_code="insufficient_funds_outstanding",
            finished_at=utcnow(),
        )
        await db.commit()
    return PaymentRefused(
        "insufficient_funds_outstanding",
        "Your balance does not cover this payment on top of your other payments still in progress.",
    )


_INSERT_CLAIM = quick_write(insert(PaymentClaim.__table__))


async def _claim(rt: Runtime, sale: Sale, job: Job | None):
    """Insert the attempt, its payment claim (and the job of a long run) together, and open the creator's key in the
    same transaction (its audit count commits with the claim). Returns (usage id, key), or None when the payment
    was already used; the key is None for jobs, or when it cannot be opened (the run reports why)."""
    r, requirements = sale.prepared.resource, sale.requirements
    async with rt.db.sessions() as db:
        usage_id = await add_usage(
            db,
            resource_id=r.id,
            owner_id=r.owner_id,
            kind=UsageKind.paid,
            status=UsageStatus.running,
            payer=sale.payer,
            amount_atomic=r.price_atomic,
            network=requirements.network,
            asset=requirements.asset,
            pay_to=requirements.pay_to,
            model_requested=r.active_model_id,
            verify_ms=sale.verify_ms,
        )
        claim = {
            "network": requirements.network,
            "payer": sale.payer.lower(),
            "nonce": sale.nonce.lower(),
            "usage_id": usage_id,
            "amount_atomic": r.price_atomic,
            "valid_before": None if sale.valid_before is None else datetime.fromtimestamp(sale.valid_before, UTC),
            "payment_digest": payment_digest(sale.payload),
            "request_digest": request_digest(r.id, sale.prepared.values),
            "payment_id": extract_payment_identifier(sale.payload),
            "scheme": SCHEME_UPTO if requirements.scheme == SCHEME_UPTO else None,
        }
        try:
            # The claim's unique key refuses a replay here (PostgreSQL waits for a concurrent first claim to end).
            await (await db.connection()).execute(_INSERT_CLAIM, claim)
            if job is not None:
                job.usage_id = usage_id
                db.add(job)
                await db.flush()
        except IntegrityError:
            await db.rollback()
            return None
        key = None
        if job is None:
            with contextlib.suppress(KeyUnavailable):
                key = await open_key_for_upstream(db, rt.vault, r.owner_id, commit=False)
        try:
            await db.commit()
        except IntegrityError:
            await db.rollback()
            return None
        return usage_id, key


async def settle(
    rt: Runtime,
    sale: Sale,
    result: dict[str, Any],
    outcome: RunOutcome | None,
    *,
    usage_fields: dict[str, Any] | None = None,
) -> Outcome:
    """The settle step of a sale in this process (``settle_and_record``), counted for the operator.
    ``usage_fields``: the usage row's figures, when they are not simply the outcome's."""
    name = label(sale.resource)
    requirements = sale.requirements
    billed = outcome.billed_usd if outcome is not None else await _billed_usd(rt, sale.usage_id)
    charged = bill(sale.resource, requirements, billed)
    if usage_fields is not None:
        outcome = None
    try:
        answer = await settle_and_record(
            rt,
            sale.prepared.gateway,
            sale.usage_id,
            sale.payload,
            requirements,
            result,
            outcome,
            bill=charged,
            usage_fields=usage_fields,
        )
    except ApiError as err:
        if err.code == "settlement_pending":
            metrics.paid_call("settlement_pending", name)
        raise
    metrics.paid_call("settled" if isinstance(answer, Delivered) else "settle_failed", name)
    return answer


async def _billed_usd(rt: Runtime, usage_id: int) -> Any:
    """The upstream cost a door's run already put on the usage row (a metered call settles it)."""
    async with rt.db.sessions() as db:
        row = await db.get(UsageRecord, usage_id)
        return row.upstream_cost if row is not None else None


async def settle_and_record(
    rt: Runtime,
    gateway: PaymentGateway,
    usage_id: int,
    payload: PaymentPayload,
    requirements: PaymentRequirements,
    result: dict[str, Any],
    outcome: RunOutcome | None = None,
    *,
    kept: bool = False,
    bill: Bill | None = None,
    usage_fields: dict[str, Any] | None = None,
) -> Outcome:
    """Keep the delivered result, settle, then record: the result goes out only when the money moved, and once it
    may have moved the buyer can always have it. ``outcome`` is the run's, when its figures are not on the usage
    row yet; ``kept`` when the result is kept already. ``bill``: what a metered call settles (see ``bill()``), kept
    with the result so a retried settlement settles the same amount. An unknown settlement outcome is recorded as
    pending and answered 503 (re-send the same payment)."""
    if bill is not None:
        requirements = bill.requirements
        result = {**result, "receipt": bill.receipt or result.get("receipt")}
    if not kept:
        run = outcome_fields(outcome) if outcome else usage_fields or {}
        fields = {**run, **(bill.usage if bill else {})}
        await settlement.keep(rt, usage_id, result, payload, requirements, fields)
    started = time.perf_counter()
    settled = await gateway.settle(payload, requirements)
    settle_ms = int((time.perf_counter() - started) * 1000)
    if settled.ok:
        try:
            body, header = await settlement.mark_settled(
                rt,
                usage_id,
                result,
                requirements,
                transaction=settled.transaction,
                payer=settled.payer or _payer(payload),
                response=settled.response,
                settle_ms=settle_ms,
            )
        except Exception:
            # The buyer has paid: a failing bookkeeping write must not cost them the result. The row stays
            # "running" with its kept result; the reconciler finds the transaction on chain.
            log.exception("recording settled call %s failed (transaction %s)", usage_id, settled.transaction)
            extra = result.get("receipt") or {}
            body = {**result, "receipt": {**receipt(settled, requirements, _payer(payload)), **extra}}
            header = gateway.payment_response_header(settled)
        if bill is not None and bill.charge is not None and bill.charge.capped:
            await _tell_capped(rt, usage_id, bill.charge)
        return Delivered(body, header, settled)
    if settlement.outcome_unknown(settled):
        await settlement.mark_pending(rt, usage_id, settled.reason, settle_ms=settle_ms)
        raise settlement_pending(settled.reason)
    await settlement.mark_unsettled(
        rt,
        usage_id,
        UsageStatus.settle_failed,
        settled.reason,
        f"settlement failed: {settled.reason}",
        settle_ms=settle_ms,
    )
    return PaymentRefused(str(settled.reason), "The payment could not be settled; no result.")


def settlement_pending(reason: str | None) -> ApiError:
    return ApiError(
        503,
        "settlement_pending",
        "Your payment's settlement could not be confirmed yet. Re-send the same payment to get the result once it "
        "is confirmed; if it never settles, you are not charged.",
        {"charged": None, "resend_same_payment": True, "reason": reason},
        headers={"Retry-After": "5"},
    )


def _payer(payload: PaymentPayload) -> str | None:
    return payment_terms(payload).payer


# --- metered calls -----------------------------------------------------------------------------------------------


def settles_generated(sale: Sale) -> bool:
    """Whether a run that ended early is paid for what it generated: a metered resource paid with ``upto``."""
    return sale.resource.pricing_mode == METERED and sale.requirements.scheme == SCHEME_UPTO


async def settle_generated(rt: Runtime, sale: Sale, outcome: RunOutcome, text: str, tokens: tuple[int, int]) -> Outcome:
    """A metered ``upto`` sale whose run ended after its text began (the buyer left, or the upstream failed
    mid-answer) and whose generated tokens the upstream billed (``outcome.billed_usd``): they are settled at the
    metered price (``bill``), and the text so far is the buyer's result, kept and re-delivered to the same payment
    like any other. ``tokens``: prompt and completion tokens, from the upstream's record. The usage row keeps the
    run's failure code; it stays ``running`` until the settlement is recorded (the reconciler's to finish)."""
    if sale.hold is not None:
        sale.hold.actual_usd = outcome.billed_usd
    fail = outcome.failure
    prompt_tokens, completion_tokens = tokens
    result = {
        "output": {"type": "text", "text": text},
        "partial": True,
        "stopped": {"code": fail.buyer_code, "message": paid_for_part(fail.buyer_message)},
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": str(outcome.billed_usd),
        },
        "model": fail.model,
        "receipt": None,
        "first_token_ms": outcome.first_token_ms,
    }
    fields = outcome_fields(outcome)
    del fields["status"]
    fields.update(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    return await settle(rt, sale, result, outcome, usage_fields=fields)


@dataclass(frozen=True, slots=True)
class Bill:
    """What a call on a metered resource settles: ``requirements`` with the amount to settle, the receipt's extra
    fields (the maximum, the breakdown) and the usage row's."""

    requirements: PaymentRequirements
    receipt: dict[str, Any]
    usage: dict[str, Any]
    charge: MeteredCharge | None = None


def bill(resource: AnyResource, requirements: PaymentRequirements, billed_usd: Any) -> Bill | None:
    """None for a flat resource (settle the price). A metered resource's ``upto`` payment settles
    ``charge_for(resource, the upstream cost of every billed attempt)``, never above the signed maximum; its
    ``exact`` payment (a client without ``upto``) settles the maximum it signed."""
    if resource.pricing_mode != METERED:
        return None
    maximum = int(requirements.amount)
    if requirements.scheme != SCHEME_UPTO:
        return Bill(requirements, {"max_amount": str(maximum)}, {"max_amount_atomic": maximum})
    charge = charge_for(resource, billed_usd or 0)
    amount = min(charge.settled_atomic, maximum)
    breakdown = charge.as_dict()
    return Bill(
        settlement_requirements(requirements, amount),
        {"max_amount": str(maximum), "breakdown": breakdown},
        {"amount_atomic": amount, "max_amount_atomic": maximum, "charge_breakdown": breakdown},
        charge,
    )


_CAPPED = "metered_max_reached"


def _usd(atomic: int) -> str:
    return format(Decimal(atomic).scaleb(-6), "f")


async def _tell_capped(rt: Runtime, usage_id: int, charge: MeteredCharge) -> None:
    """The real cost was above the maximum: the call settled the maximum and the creator's margin shrank (or went
    negative). Tell them once per resource and day: the maximum, markup or model may need a look."""
    try:
        async with rt.db.sessions() as db:
            row = await db.get(UsageRecord, usage_id)
            owner_id, resource_id = row.owner_id, row.resource_id
            message = (
                f"A call to your metered resource #{resource_id} cost more than its maximum per call: it settled "
                f"the maximum (${_usd(charge.max_atomic)}) instead of ${_usd(charge.uncapped_atomic)}. Consider "
                "raising the maximum, or lowering max_tokens or the markup."
            )
            day = datetime.combine(utcnow().date(), datetime.min.time(), UTC)
            seen = await db.scalar(
                select(Notification.id).where(
                    Notification.user_id == owner_id,
                    Notification.kind == _CAPPED,
                    Notification.created_at >= day,
                    Notification.message.startswith(f"A call to your metered resource #{resource_id} "),
                )
            )
        if seen is None:
            details = {"resource_id": resource_id, **charge.as_dict()}
            await notify.notify(rt, owner_id, _CAPPED, message, details, dedupe=False)
    except Exception:
        log.exception("could not tell the creator about capped call %s", usage_id)


def receipt(settled: SettleOutcome, requirements: PaymentRequirements, payer: str | None = None) -> dict[str, Any]:
    return {
        "transaction": settled.transaction,
        "network": settled.network,
        "payer": settled.payer or payer,
        "amount": requirements.amount,
    }


# --- records ----------------------------------------------------------------------------------------------------


async def record(rt: Runtime, **fields) -> None:
    """One usage row in its own transaction."""
    async with rt.db.transaction() as conn:
        await add_usage(conn, **fields)


def outcome_fields(outcome: RunOutcome) -> dict[str, Any]:
    """The usage-row columns a run fills in, success or failure."""
    completion, fail = outcome.completion, outcome.failure
    values: dict[str, Any] = {
        "run_ms": outcome.run_ms,
        "upstream_attempts": len(outcome.attempts),
        "upstream_cost": outcome.billed_usd,
    }
    if outcome.streamed:
        values.update(streamed=True, first_token_ms=outcome.first_token_ms)
    if completion is not None:
        values.update(
            model_used=completion.model_used,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
        )
    if fail is not None:
        values.update(
            status=UsageStatus.failed,
            error_category=str(fail.category),
            error_code=fail.buyer_code,
            error_detail=fail.creator_detail[:2000],
            model_used=fail.model,
        )
    return values


async def finish_usage(rt: Runtime, usage_id: int, outcome: RunOutcome | None, **fields) -> None:
    run = outcome_fields(outcome) if outcome is not None else {}
    async with rt.db.transaction() as conn:
        await update_usage(conn, usage_id, **{**run, **fields, "finished_at": utcnow()})


def success_body(outcome: RunOutcome, receipt: dict[str, Any] | None) -> dict[str, Any]:
    c = outcome.completion
    return {
        "output": c.output,
        "usage": {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "cost_usd": str(c.total_cost_usd),
        },
        "model": c.model_used,
        "receipt": receipt,
    }
