"""The paid call, step by step: resolve, validate, cost check, quote (402), hold budget, verify, claim, run, settle.

Order matters for money: nothing about a payment is touched before the input is valid, the call's worst-case cost
is within the creator's limits and capacity is free; the run happens only after the payment is verified and
claimed once in the database, and settlement happens only after the run delivered. Long runs answer 202 with a job
URL instead, and the job runner settles them the same way (execution.jobs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from instant402.db.base import utcnow
from instant402.db.sqlite_loop import quick_write
from instant402.errors import ApiError, error_body
from instant402.execution import budgets, jobs
from instant402.execution.limits import OverCapacity, RateLimited
from instant402.execution.models import Job
from instant402.execution.runner import RunOutcome, run_resource
from instant402.keys.service import KeyUnavailable, open_key_for_upstream
from instant402.payments.gateway import PaymentError, PaymentGateway
from instant402.payments.models import PaymentClaim
from instant402.resources.models import AnyResource
from instant402.resources.params import validate_input
from instant402.resources.schemas import endpoint_url, input_schema, output_description
from instant402.resources.service import get_for_call
from instant402.runtime import Runtime
from instant402.usage.models import UsageKind, UsageStatus, add_usage, update_usage

log = logging.getLogger(__name__)

PAYMENT_HEADER = "payment-signature"

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


@dataclass(slots=True)
class Quote:
    resource: AnyResource
    url: str
    requirements: Any
    extensions: dict[str, Any]
    first_answer: tuple[str, dict[str, Any]]  # the 402 before any payment: header value and body, built once


def _json_error(err: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        error_body(err.code, err.message, err.details),
        status_code=err.status,
        headers={**(err.headers or {}), **(headers or {})},
    )


async def _read_body(request: Request, limit: int) -> Any:
    raw = await request.body()
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"The request body is larger than {limit} bytes.")
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "malformed_json", "The request body is not valid JSON.") from None


def _paused(resource: AnyResource) -> ApiError:
    headers = {"Retry-After": str(budgets.seconds_to_reset())} if resource.pause_kind == "budget" else None
    message = _PAUSE_MESSAGES.get(resource.pause_kind or "manual", _DEFAULT_PAUSE_MESSAGE)
    return ApiError(503, "resource_paused", message, {"charged": False}, headers=headers)


# Requirements and the discovery extension depend only on the resource's definition and payee: built once per
# version and kept per process (the SDK's model building and schema work are the bulk of a 402's cost).
_QUOTES_LIMIT = 4096


def _quote(rt: Runtime, gateway: PaymentGateway, resource: AnyResource) -> Quote:
    pay_to = resource.pay_to or resource.owner.payout_address
    if not pay_to:
        raise ApiError(503, "resource_unavailable", _DEFAULT_PAUSE_MESSAGE, {"charged": False})
    key = (resource.id, resource.version, resource.created_at, resource.owner.username, pay_to)
    cached = rt.quotes.get(key)
    if cached is None:
        timeout = payment_timeout_seconds(resource, rt.settings.max_timeout_seconds)
        url = endpoint_url(rt.settings.public_url, resource.owner.username, resource.slug)
        requirements = gateway.requirements(resource.price_atomic, pay_to, timeout)
        output = output_description(resource)
        extensions = gateway.bazaar_extension(input_schema(resource), {"schema": output.get("schema") or output})
        first = _answer(gateway, resource, url, requirements, extensions, None)
        if len(rt.quotes) >= _QUOTES_LIMIT:
            rt.quotes.clear()
        cached = rt.quotes[key] = (url, requirements, extensions, first)
    return Quote(resource, *cached)


def _answer(gateway: PaymentGateway, r: AnyResource, url: str, requirements, extensions, reason: str | None):
    description = r.description or r.name
    return gateway.payment_required_answer(url, description, "application/json", requirements, extensions, reason)


def _payment_required(gateway: PaymentGateway, quote: Quote, reason: str | None, message: str) -> JSONResponse:
    if reason is None:
        header, body = quote.first_answer
    else:
        header, body = _answer(gateway, quote.resource, quote.url, quote.requirements, quote.extensions, reason)
    details = {"x402": body, "charged": False}
    code = "payment_required" if reason is None else "payment_invalid"
    return JSONResponse(error_body(code, message, details), status_code=402, headers={"PAYMENT-REQUIRED": header})


async def _record(rt: Runtime, **fields) -> None:
    async with rt.db.sessions() as db:
        await add_usage(db, **fields)
        await db.commit()


_INSERT_CLAIM = quick_write(insert(PaymentClaim.__table__))


async def _claim(
    rt: Runtime, quote: Quote, payer: str, nonce: str, valid_before: int | None, verify_ms: int, job: Job | None = None
):
    """Insert the attempt, its payment claim (and the job of a long run) together, and open the creator's key in the
    same transaction (its audit count commits with the claim). Returns (usage id, key), or None when the payment
    was already used; the key is None for jobs, or when it cannot be opened (the run reports why)."""
    r, requirements = quote.resource, quote.requirements
    async with rt.db.sessions() as db:
        usage_id = await add_usage(
            db,
            resource_id=r.id,
            owner_id=r.owner_id,
            kind=UsageKind.paid,
            status=UsageStatus.running,
            payer=payer,
            amount_atomic=r.price_atomic,
            network=requirements.network,
            asset=requirements.asset,
            pay_to=requirements.pay_to,
            model_requested=r.active_model_id,
            verify_ms=verify_ms,
        )
        claim = {
            "network": requirements.network,
            "payer": payer.lower(),
            "nonce": nonce.lower(),
            "usage_id": usage_id,
            "amount_atomic": r.price_atomic,
            "valid_before": None if valid_before is None else datetime.fromtimestamp(valid_before, UTC),
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


def outcome_fields(outcome: RunOutcome) -> dict[str, Any]:
    """The usage-row columns a run fills in, success or failure."""
    completion, fail = outcome.completion, outcome.failure
    values: dict[str, Any] = {
        "run_ms": outcome.run_ms,
        "upstream_attempts": len(outcome.attempts),
        "upstream_cost": outcome.billed_usd,
    }
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


async def finish_usage(rt: Runtime, usage_id: int, outcome: RunOutcome, **fields) -> None:
    async with rt.db.sessions() as db:
        await update_usage(db, usage_id, **{**outcome_fields(outcome), **fields, "finished_at": utcnow()})
        await db.commit()


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


async def handle_paid_call(request: Request, creator: str, slug: str) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    ip = request.client.host if request.client else "unknown"
    try:
        # 1. resolve (404 unknown, 503 paused) and 2. validate the input before any payment is asked for.
        async with rt.db.sessions() as db:
            resource = await get_for_call(db, creator, slug)
        budget_paused = resource.status == "paused" and resource.pause_kind == budgets.BUDGET
        # Lazy end of a budget pause once the day is over.
        if budget_paused and await budgets.lift_if_reset(rt, resource.owner_id):
            async with rt.db.sessions() as db:
                resource = await get_for_call(db, creator, slug)
        if resource.status != "published":
            raise _paused(resource)
        values = validate_input(resource, await _read_body(request, rt.settings.max_request_bytes))
        # 2b. the call's worst-case upstream cost within the creator's per-call cap, before any quote.
        limits, worst = await budgets.check_call_cost(rt, resource, values)
        await rt.limits.check_ip(ip)
        gateway = await rt.payments()
        quote = _quote(rt, gateway, resource)

        # 3. no payment yet: the quote.
        header = request.headers.get(PAYMENT_HEADER)
        if not header:
            return _payment_required(gateway, quote, None, "Pay with x402 to call this resource.")
        try:
            payload = gateway.decode_payment(header)
        except PaymentError as exc:
            return _payment_required(gateway, quote, exc.reason, exc.message)
        payer = str(payload.payload.get("authorization", {}).get("from", ""))
        await rt.limits.check_payer(payer)

        # Capacity and the budget hold are taken before verify, so a refusal touches no payment.
        async with rt.limits.upstream_slot(str(resource.owner_id)):
            hold = await _hold_budget(rt, resource, limits, worst)
            try:
                return await _verified_run(rt, gateway, quote, payload, values, hold)
            finally:
                if hold is not None and not hold.transferred:
                    await budgets.replace_hold(rt, resource.owner_id, hold.day, hold.pusd, hold.actual_usd)
    except (OverCapacity, RateLimited) as exc:
        return _json_error(exc.to_api_error())
    except ApiError as err:
        return _json_error(err)


@dataclass(slots=True)
class Hold:
    """The worst case reserved from today's budget; replaced by the actual cost after the run (or by the job)."""

    day: Any
    pusd: int
    actual_usd: Any = None
    transferred: bool = False  # a long run's job releases it


async def _hold_budget(rt: Runtime, resource: AnyResource, limits: budgets.LimitsView, worst) -> Hold | None:
    if limits.daily_budget_pusd is None:
        return None
    pusd = budgets.to_pusd(worst)
    day = await budgets.reserve(rt, resource.owner_id, pusd)
    if day is None:
        raise await budgets.budget_reached(rt, resource, limits)
    return Hold(day, pusd)


async def _verified_run(
    rt: Runtime, gateway: PaymentGateway, quote: Quote, payload, values, hold: Hold | None
) -> JSONResponse:
    resource = quote.resource
    started = time.perf_counter()
    # 4. verify through the facilitator.
    verified = await gateway.verify(payload, quote.requirements, quote.url)
    verify_ms = int((time.perf_counter() - started) * 1000)
    if not verified.ok:
        await _record(
            rt,
            resource_id=resource.id,
            owner_id=resource.owner_id,
            kind=UsageKind.paid,
            status=UsageStatus.refused,
            payer=verified.payer if isinstance(verified.payer, str) else None,
            amount_atomic=0,
            network=quote.requirements.network,
            error_category="payment",
            error_code=verified.reason,
            verify_ms=verify_ms,
            finished_at=utcnow(),
        )
        return _payment_required(
            gateway, quote, verified.reason, "The payment was not accepted: " + str(verified.reason)
        )

    # 5. one run per payment, enforced by a unique key in the database (also across processes).
    job = token = None
    if jobs.is_long_run(resource, rt.settings.long_run_seconds):
        # A long run becomes a job bound to this payment, created with the claim.
        token, digest = jobs.new_token()
        job = jobs.new_job(
            resource,
            values,
            payload,
            quote.requirements,
            token_hash=digest,
            valid_before=jobs.as_datetime(verified.valid_before),
            budget_hold_pusd=hold.pusd if hold else 0,
        )
    claimed = await _claim(rt, quote, verified.payer, verified.nonce, verified.valid_before, verify_ms, job)
    if claimed is None:
        return _payment_required(gateway, quote, "payment_already_used", "This payment was already used.")
    usage_id, key = claimed
    if job is not None:
        if hold is not None:
            hold.transferred = True
        rt.wake_jobs()
        url = jobs.job_url(rt.settings.public_url, token)
        return JSONResponse(jobs.accepted_body(url, job), status_code=202, headers={"Location": url})

    # 6. run the model; the deadline ends before the authorization expires, leaving time to settle.
    deadline = time.time() + payment_timeout_seconds(resource, rt.settings.max_timeout_seconds)
    if verified.valid_before:
        deadline = min(deadline, verified.valid_before - rt.settings.settle_margin_seconds)
    outcome = await run_resource(rt, resource, values, deadline, key)
    if hold is not None:
        hold.actual_usd = outcome.billed_usd
    if outcome.failure is not None:
        # 8. no settlement: the buyer keeps their money and gets a buyer-safe message.
        await finish_usage(rt, usage_id, outcome)
        return _json_error(outcome.failure.to_api_error())

    # 7. settle, and deliver only when the money moved.
    started = time.perf_counter()
    settled = await gateway.settle(payload, quote.requirements)
    settle_ms = int((time.perf_counter() - started) * 1000)
    if not settled.ok:
        await finish_usage(
            rt,
            usage_id,
            outcome,
            status=UsageStatus.settle_failed,
            error_category="payment",
            error_code=settled.reason,
            error_detail=f"settlement failed: {settled.reason}",
            settle_ms=settle_ms,
        )
        return _payment_required(gateway, quote, settled.reason, "The payment could not be settled; no result.")
    try:
        await finish_usage(
            rt,
            usage_id,
            outcome,
            status=UsageStatus.succeeded,
            transaction_hash=settled.transaction,
            settle_ms=settle_ms,
        )
    except Exception:
        # The buyer has paid: a failing bookkeeping write must not cost them the result. The row stays "running",
        # with the claim, for the creator to see.
        log.exception("recording settled call %s failed (transaction %s)", usage_id, settled.transaction)
    receipt = {
        "transaction": settled.transaction,
        "network": settled.network,
        "payer": settled.payer or verified.payer,
        "amount": quote.requirements.amount,
    }
    return JSONResponse(
        success_body(outcome, receipt), headers={"PAYMENT-RESPONSE": gateway.payment_response_header(settled)}
    )
