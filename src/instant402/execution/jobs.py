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
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from x402.schemas import PaymentPayload, PaymentRequirements

from instant402.db.base import utcnow
from instant402.errors import error_body, not_found
from instant402.execution.models import Job, JobState
from instant402.resources.models import AnyResource

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


def as_datetime(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, UTC)
