"""Long runs as jobs: the paid call answers 202 with an unguessable job URL; the job runs later and is settled only
when it succeeded before the payment authorization's ``validBefore``.

A job row holds what running and settling later need (the buyer's validated input, the signed payment payload and
the requirements it was verified against), so a job survives a restart. The job URL carries a random 256-bit
token; only its SHA-256 is stored. State: queued -> running -> succeeded | failed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from x402.schemas import PaymentPayload, PaymentRequirements

from instant402.db.base import utcnow
from instant402.errors import ApiError, error_body, not_found
from instant402.execution import budgets
from instant402.execution.limits import OverCapacity
from instant402.execution.models import Job, JobState
from instant402.execution.runner import run_resource
from instant402.resources.models import AnyResource, Resource
from instant402.usage.models import UsageRecord, UsageStatus

if TYPE_CHECKING:
    from instant402.runtime import Runtime

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # token_urlsafe(32)
IMAGE_RUN_SECONDS = 90  # image models commonly take a minute or more


def expected_run_seconds(resource: AnyResource) -> float:
    """How long a call of ``resource`` may legitimately run: ~25 tokens/s for text; images take longer."""
    seconds = resource.max_tokens / 25
    if resource.output_kind == "image":
        seconds += IMAGE_RUN_SECONDS
    return seconds


def is_long_run(resource: AnyResource, threshold: float) -> bool:
    return threshold > 0 and expected_run_seconds(resource) > threshold


def new_token() -> tuple[str, str]:
    """A job token (random 256 bits, URL-safe) and the SHA-256 that is stored."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def job_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/jobs/{token}"


def new_job(
    resource: AnyResource, values: dict[str, Any], payload: PaymentPayload, requirements: PaymentRequirements, **fields
) -> Job:
    return Job(
        resource_id=resource.id,
        owner_id=resource.owner_id,
        state=JobState.queued,
        input=values,
        payment_payload=payload.model_dump(mode="json", by_alias=True, exclude_none=True),
        requirements=requirements.model_dump(mode="json", by_alias=True, exclude_none=True),
        runs=0,
        created_at=utcnow(),
        **fields,
    )


def accepted_body(url: str, job: Job) -> dict[str, Any]:
    return {
        "job": {"url": url, "state": job.state, "valid_before": job.valid_before.isoformat()},
        "message": "This resource takes a while: poll the job URL for the result. You are charged only if it succeeds.",
        "charged": False,
    }


# --- status for the buyer --------------------------------------------------------------------------------------


async def job_status(rt: Runtime, token: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The buyer's view of a job: state and, when done, the result and receipt (or the error); 404 if unknown."""
    if not _TOKEN.match(token):
        raise not_found("job")
    async with rt.db.sessions() as db:
        job = await db.scalar(select(Job).where(Job.token_hash == token_hash(token)))
    if job is None:
        raise not_found("job")
    body: dict[str, Any] = {"state": job.state, "created_at": job.created_at.isoformat()}
    headers: dict[str, str] = {}
    if job.state == JobState.succeeded and job.result is not None:
        body.update(job.result)
        if job.payment_response:
            headers["PAYMENT-RESPONSE"] = job.payment_response
    elif job.state == JobState.failed:
        body["error"] = (job.error or {}).get("error") or error_body("job_failed", "The job failed.")["error"]
        body["charged"] = False
    else:
        body["valid_before"] = job.valid_before.isoformat()
        headers["Retry-After"] = "2"
    return body, headers


# --- the queue ---------------------------------------------------------------------------------------------------


async def claim_next(rt: Runtime, worker_id: str) -> int | None:
    """Take the oldest queued job for this worker; its id, or None. Safe with many workers on one database."""
    now = utcnow()
    claim = {"state": JobState.running, "claimed_by": worker_id, "heartbeat_at": now, "started_at": now}
    async with rt.db.sessions() as db:
        if db.get_bind().dialect.name == "postgresql":
            query = select(Job.id).where(Job.state == JobState.queued).order_by(Job.id).limit(1)
            job_id = await db.scalar(query.with_for_update(skip_locked=True))
            if job_id is None:
                return None
            await db.execute(update(Job).where(Job.id == job_id).values(runs=Job.runs + 1, **claim))
            await db.commit()
            return job_id
        # SQLite: one writer at a time; the conditional UPDATE makes the claim atomic.
        for _ in range(5):
            job_id = await db.scalar(select(Job.id).where(Job.state == JobState.queued).order_by(Job.id).limit(1))
            if job_id is None:
                return None
            result = await db.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.queued)
                .values(runs=Job.runs + 1, **claim)
                .execution_options(synchronize_session=False)
            )
            await db.commit()
            if result.rowcount == 1:
                return job_id
    return None


async def requeue(rt: Runtime, job_id: int, worker_id: str) -> None:
    """Give a job back to the queue (shutdown, no capacity right now)."""
    async with rt.db.sessions() as db:
        await db.execute(
            update(Job)
            .where(Job.id == job_id, Job.claimed_by == worker_id, Job.state == JobState.running)
            .values(state=JobState.queued, claimed_by=None, heartbeat_at=None)
            .execution_options(synchronize_session=False)
        )
        await db.commit()


async def requeue_stale(rt: Runtime) -> int:
    """Running jobs whose worker stopped beating (a crashed process) go back to the queue; returns how many."""
    since = utcnow() - timedelta(seconds=rt.settings.job_stale_seconds)
    async with rt.db.sessions() as db:
        result = await db.execute(
            update(Job)
            .where(Job.state == JobState.running, Job.heartbeat_at < since)
            .values(state=JobState.queued, claimed_by=None, heartbeat_at=None)
            .execution_options(synchronize_session=False)
        )
        await db.commit()
    return result.rowcount or 0


async def heartbeat(rt: Runtime, job_id: int, worker_id: str) -> None:
    async with rt.db.sessions() as db:
        await db.execute(
            update(Job)
            .where(Job.id == job_id, Job.claimed_by == worker_id)
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        await db.commit()


# --- running one job ---------------------------------------------------------------------------------------------


class Requeue(Exception):
    """The job could not start now (no capacity); put it back."""


async def execute(rt: Runtime, job_id: int, worker_id: str, settling: set[int] | None = None) -> str:
    """Run a claimed job to its end: run (unless a previous run already delivered), settle, record. Returns the
    final state, or raises Requeue. The job's id is added to ``settling`` before settlement starts: a stopping
    runner lets those finish instead of cancelling them."""
    from instant402.payments.paid_call import finish_usage, success_body

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
        if outcome.failure is not None:
            await finish_usage(rt, job.usage_id, outcome)
            return await _fail(rt, job, worker_id, outcome.failure.to_api_error(), None)
        await finish_usage(rt, job.usage_id, outcome, status=UsageStatus.running)
        result = success_body(outcome, None)
        # Kept before settling: a restart after this point settles without running the model again.
        await _update(rt, job, worker_id, result=result)
    if settling is not None:
        settling.add(job_id)
    return await _settle(rt, job, worker_id, result, valid_before, resumed)


# The facilitator's answer when the authorization's nonce is already spent on chain.
NONCE_USED = "invalid_exact_evm_nonce_already_used"


async def _settle(
    rt: Runtime, job: Job, worker_id: str, result: dict[str, Any], valid_before: float, resumed: bool = False
) -> str:
    if time.time() >= valid_before:
        return await _fail(rt, job, worker_id, _expired(), "the payment authorization expired before settlement")
    gateway = await rt.payments()
    payload = PaymentPayload.model_validate(job.payment_payload)
    requirements = PaymentRequirements.model_validate(job.requirements)
    started = time.perf_counter()
    settled = await gateway.settle(payload, requirements)
    settle_ms = int((time.perf_counter() - started) * 1000)
    if not settled.ok and resumed and settled.reason == NONCE_USED:
        # The process died after settling and before recording it. The claim is this job's alone, so the spent
        # authorization means the buyer paid: deliver the kept result (the transaction hash was lost with it).
        return await _delivered(rt, job, worker_id, result, requirements, settle_ms)
    if not settled.ok:
        await _usage(
            rt,
            job.usage_id,
            status=UsageStatus.settle_failed,
            error_category="payment",
            error_code=settled.reason,
            error_detail=f"settlement failed: {settled.reason}",
            settle_ms=settle_ms,
        )
        err = ApiError(402, "payment_invalid", "The payment could not be settled; no result.", {"charged": False})
        return await _fail(rt, job, worker_id, err, None)
    receipt = {
        "transaction": settled.transaction,
        "network": settled.network,
        "payer": settled.payer,
        "amount": requirements.amount,
    }
    await _usage(
        rt, job.usage_id, status=UsageStatus.succeeded, transaction_hash=settled.transaction, settle_ms=settle_ms
    )
    await _update(
        rt,
        job,
        worker_id,
        state=JobState.succeeded,
        result={**result, "receipt": receipt},
        payment_response=gateway.payment_response_header(settled),
        finished_at=utcnow(),
    )
    return JobState.succeeded


async def _delivered(rt: Runtime, job: Job, worker_id: str, result, requirements, settle_ms: int) -> str:
    payload = job.payment_payload.get("payload", {}).get("authorization", {})
    receipt = {
        "transaction": None,
        "network": requirements.network,
        "payer": payload.get("from"),
        "amount": requirements.amount,
    }
    await _usage(
        rt,
        job.usage_id,
        status=UsageStatus.succeeded,
        error_detail="settled before a restart; the transaction hash was not recorded",
        settle_ms=settle_ms,
    )
    await _update(
        rt, job, worker_id, state=JobState.succeeded, result={**result, "receipt": receipt}, finished_at=utcnow()
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


def as_datetime(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, UTC)
