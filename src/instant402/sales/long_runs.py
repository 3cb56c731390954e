"""Long runs, finished by the job runner: run (unless an earlier run already delivered), settle, record.

The paid call claimed the payment and queued the job (sales.core); this module is the rest of that sale. The job
row keeps the buyer's input, the signed payment and the requirements it was verified against, so a job survives a
restart; the result is kept on the job before settlement, so a restart never runs the model twice.
"""

from __future__ import annotations

import time
from datetime import UTC
from typing import Any

from sqlalchemy import select, update
from x402.schemas import PaymentPayload, PaymentRequirements

from instant402.db.base import utcnow
from instant402.errors import ApiError, error_body
from instant402.execution import budgets
from instant402.execution.limits import OverCapacity
from instant402.execution.models import Job, JobState
from instant402.execution.runner import run_resource
from instant402.payments.gateway import payment_terms
from instant402.payments.models import KeptResult
from instant402.resources.models import Resource
from instant402.runtime import Runtime
from instant402.sales import settlement
from instant402.sales.core import Delivered, bill, finish_usage, settle_and_record, success_body
from instant402.usage.models import UsageRecord, UsageStatus


class Requeue(Exception):
    """The job could not start now (no capacity); put it back."""


async def execute(rt: Runtime, job_id: int, worker_id: str, settling: set[int] | None = None) -> str:
    """Run a claimed job to its end: run (unless a previous run already delivered), settle, record. Returns the
    final state, or raises Requeue. The job's id is added to ``settling`` before settlement starts: a stopping
    runner lets those finish instead of cancelling them."""
    async with rt.db.sessions() as db:
        job = await db.get(Job, job_id)
        resource = (await db.execute(select(Resource).where(Resource.id == job.resource_id))).unique().scalar_one()
    valid_before = job.valid_before.timestamp()
    deadline = valid_before - rt.settings.settle_margin_seconds
    result = job.result
    resumed = result is not None  # an earlier run delivered; it may have settled before the process died
    if result is None:
        if time.time() >= deadline:
            return await _fail(rt, job, worker_id, _expired(), "expired before it could run")
        try:
            async with rt.limits.upstream_slot(str(resource.owner_id)):
                outcome = await run_resource(rt, resource, job.input, deadline)
        except OverCapacity:
            raise Requeue() from None
        await _replace_hold(rt, job, outcome.billed_usd)
        earlier = await _earlier_runs(rt, job)
        if outcome.failure is not None:
            await finish_usage(rt, job.usage_id, outcome, **earlier(outcome))
            return await _fail(rt, job, worker_id, outcome.failure.to_api_error(), None)
        await finish_usage(rt, job.usage_id, outcome, status=UsageStatus.running, **earlier(outcome))
        result = success_body(outcome, None)
        # Kept before settling: a restart after this point settles without running the model again.
        await _update(rt, job, worker_id, result=result)
    if settling is not None:
        settling.add(job_id)
    return await _settle(rt, job, worker_id, result, valid_before, resumed, resource)


async def _settle(
    rt: Runtime,
    job: Job,
    worker_id: str,
    result: dict[str, Any],
    valid_before: float,
    resumed: bool = False,
    resource: Resource | None = None,
) -> str:
    payload = PaymentPayload.model_validate(job.payment_payload)
    requirements = PaymentRequirements.model_validate(job.requirements)
    # A metered call settles the upstream cost of every billed attempt of every run of this job (on the usage row).
    charged = bill(resource, requirements, await _billed(rt, job)) if resource is not None else None
    if resumed:
        # An earlier run of this job delivered and may have settled before its process died: ask the chain (or
        # the facilitator, while the authorization is valid) before settling again.
        settle_with, kept_result, fields = requirements, result, {}
        if charged is not None:
            settle_with, fields = charged.requirements, charged.usage
            kept_result = {**result, "receipt": charged.receipt or result.get("receipt")}
        await settlement.keep(rt, job.usage_id, kept_result, payload, settle_with, fields, again=True)
        status = await settlement.resolve(rt, job.usage_id)
        if status == UsageStatus.succeeded:
            return await _deliver_kept(rt, job, worker_id, result)
        if status in (UsageStatus.failed, UsageStatus.settle_failed):
            err = ApiError(402, "payment_invalid", "The payment could not be settled; no result.", {"charged": False})
            return await _fail(rt, job, worker_id, err, None)
    if time.time() >= valid_before:
        return await _fail(rt, job, worker_id, _expired(), "the payment authorization expired before settlement")
    gateway = await rt.payments()
    started = time.perf_counter()
    try:
        outcome = await settle_and_record(
            rt, gateway, job.usage_id, payload, requirements, result, kept=resumed, bill=charged
        )
    except ApiError as err:
        if err.code != "settlement_pending":
            raise
        if rt.chain is None and resumed and NONCE_USED in str(err.details.get("reason")):
            # No chain to ask: the claim is this job's alone, so a spent authorization means the buyer paid.
            if charged is not None:
                requirements, result = charged.requirements, {**result, "receipt": charged.receipt}
            return await _delivered(
                rt, job, worker_id, result, requirements, int((time.perf_counter() - started) * 1000)
            )
        raise Requeue() from None  # resolved at the next attempt
    if not isinstance(outcome, Delivered):
        err = ApiError(402, "payment_invalid", "The payment could not be settled; no result.", {"charged": False})
        return await _fail(rt, job, worker_id, err, None)
    await _update(
        rt,
        job,
        worker_id,
        state=JobState.succeeded,
        result=outcome.body,
        payment_response=outcome.payment_response,
        finished_at=utcnow(),
    )
    return JobState.succeeded


async def _billed(rt: Runtime, job: Job):
    async with rt.db.sessions() as db:
        row = await db.get(UsageRecord, job.usage_id)
        return row.upstream_cost if row is not None else None


async def _earlier_runs(rt: Runtime, job: Job):
    """A job run again after a crash adds its upstream cost and attempts to the earlier runs' (the creator's key
    paid for each), instead of overwriting them."""
    async with rt.db.sessions() as db:
        row = await db.get(UsageRecord, job.usage_id)
        cost, attempts = row.upstream_cost, row.upstream_attempts or 0

    def totals(outcome) -> dict[str, Any]:
        if not cost and not attempts:
            return {}
        return {
            "upstream_cost": (cost or 0) + (outcome.billed_usd or 0),
            "upstream_attempts": attempts + len(outcome.attempts),
        }

    return totals


# The facilitator's answer when the authorization's nonce is already spent on chain.
NONCE_USED = "nonce_already_used"


async def _deliver_kept(rt: Runtime, job: Job, worker_id: str, result: dict[str, Any]) -> str:
    async with rt.db.sessions() as db:
        kept = await db.get(KeptResult, job.usage_id)
    body = kept.body if kept is not None else result
    response = kept.payment_response if kept is not None else None
    await _update(
        rt, job, worker_id, state=JobState.succeeded, result=body, payment_response=response, finished_at=utcnow()
    )
    return JobState.succeeded


async def _delivered(rt: Runtime, job: Job, worker_id: str, result, requirements, settle_ms: int) -> str:
    payer = payment_terms(PaymentPayload.model_validate(job.payment_payload)).payer
    body, header = await settlement.mark_settled(
        rt,
        job.usage_id,
        result,
        requirements,
        transaction=None,
        payer=payer,
        settle_ms=settle_ms,
        error_detail="settled before a restart; no chain RPC configured to find the transaction",
    )
    await _update(
        rt, job, worker_id, state=JobState.succeeded, result=body, payment_response=header, finished_at=utcnow()
    )
    return JobState.succeeded


def _expired() -> ApiError:
    return ApiError(
        504,
        "job_expired",
        "The job could not finish before the payment authorization expired. You were not charged.",
        {"charged": False},
    )


async def _fail(rt: Runtime, job: Job, worker_id: str, err: ApiError, detail: str | None) -> str:
    if detail is not None:
        await _usage(rt, job.usage_id, status=UsageStatus.failed, error_code=err.code, error_detail=detail)
        await _replace_hold(rt, job, None)
    body = error_body(err.code, err.message, {**err.details, "charged": False})
    await _update(rt, job, worker_id, state=JobState.failed, result=None, error=body, finished_at=utcnow())
    return JobState.failed


async def _replace_hold(rt: Runtime, job: Job, actual) -> None:
    if job.budget_hold_pusd:
        day = job.created_at.astimezone(UTC).date()
        await budgets.replace_hold(rt, job.owner_id, day, job.budget_hold_pusd, actual)
        job.budget_hold_pusd = 0
        await _update(rt, job, None, budget_hold_pusd=0)


async def _update(rt: Runtime, job: Job, worker_id: str | None, **values) -> None:
    stmt = update(Job).where(Job.id == job.id)
    if worker_id is not None:
        stmt = stmt.where(Job.claimed_by == worker_id)
    async with rt.db.sessions() as db:
        await db.execute(stmt.values(**values).execution_options(synchronize_session=False))
        await db.commit()


async def _usage(rt: Runtime, usage_id: int, **values) -> None:
    values.setdefault("finished_at", utcnow())
    async with rt.db.sessions() as db:
        row = await db.get(UsageRecord, usage_id)
        for key, value in values.items():
            setattr(row, key, value)
        await db.commit()
