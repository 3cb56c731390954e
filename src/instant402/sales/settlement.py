"""Settlement, and what keeps a paid result safe around it.

A delivered run's result is kept in the database *before* settlement is asked for, so whatever happens next (a
dropped connection, a facilitator that times out, a process killed mid-settle) the buyer who paid can have it by
re-sending the same payment. A settlement whose outcome the facilitator left unknown is recorded as ``pending``
and resolved later (``resolve``): the chain says whether the authorization was used (EIP-3009
``authorizationState``, or Permit2's nonce bitmap for ``upto``) and by which transaction; otherwise settlement is
retried while the authorization is valid, with the amount the sale decided (kept with the result); an authorization
that expired unused was never charged.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from x402.http import encode_payment_response_header
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from instant402.db.base import utcnow
from instant402.db.sqlite_loop import quick_write
from instant402.execution.models import Job
from instant402.payments.gateway import PaymentGateway, SettleOutcome
from instant402.payments.models import KeptResult, PaymentClaim
from instant402.runtime import Runtime
from instant402.usage.models import UsageRecord, UsageStatus, update_usage

log = logging.getLogger(__name__)

_kept = KeptResult.__table__
_claims = PaymentClaim.__table__
_usage = UsageRecord.__table__
# The hot path's statements, built once (see DEVELOPERS.md): keep before settling, then mark settled.
_INSERT_KEPT = quick_write(insert(_kept))
_DELETE_KEPT = quick_write(delete(_kept)).where(_kept.c.usage_id == bindparam("row_id"))
_SETTLE_KEPT = (
    quick_write(update(_kept)).where(_kept.c.usage_id == bindparam("row_id")).values(payment=None, requirements=None)
)

# The facilitator could not say whether the transfer happened: a transport failure or timeout, or the
# authorization already used on chain (by an earlier attempt of ours, or by anyone who submitted it: either way
# the creator was paid). The chain decides.
_UNKNOWN_REASONS = ("facilitator_unavailable", "nonce_already_used", "timeout")


def outcome_unknown(settled: SettleOutcome) -> bool:
    return not settled.ok and any(part in str(settled.reason) for part in _UNKNOWN_REASONS)


def _json(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def receipt(network: str | None, transaction: str | None, payer: str | None, amount: str) -> dict[str, Any]:
    return {"transaction": transaction, "network": network, "payer": payer, "amount": amount}


async def keep(
    rt: Runtime,
    usage_id: int,
    result: dict[str, Any],
    payload: PaymentPayload,
    requirements: PaymentRequirements,
    usage_fields: dict[str, Any],
    *,
    again: bool = False,
) -> None:
    """Keep the result (and the payment, to retry settlement) with the run's figures, in one transaction.
    ``again``: a resumed job keeps its result once more, replacing what an earlier run kept."""
    expires = utcnow() + timedelta(hours=rt.settings.result_retention_hours)
    async with rt.db.transaction() as conn:
        if usage_fields:
            await update_usage(conn, usage_id, **usage_fields)
        if again:
            await conn.execute(_DELETE_KEPT, {"row_id": usage_id})
        row = {"usage_id": usage_id, "body": result, "expires_at": expires, "payment_response": None}
        await conn.execute(_INSERT_KEPT, {**row, "payment": _json(payload), "requirements": _json(requirements)})


async def mark_settled(
    rt: Runtime,
    usage_id: int,
    result: dict[str, Any],
    requirements: PaymentRequirements,
    *,
    transaction: str | None,
    payer: str | None,
    response: SettleResponse | None = None,
    **usage_fields: Any,
) -> tuple[dict[str, Any], str]:
    """Record the settlement: the usage row succeeds with its transaction, the kept result gets its receipt and
    ``PAYMENT-RESPONSE``. Returns both, for delivery."""
    network = requirements.network
    # A metered call's result carries its receipt's extra fields (maximum, breakdown) from before settlement.
    extra = result.get("receipt") or {}
    body = {**result, "receipt": {**receipt(network, transaction, payer, requirements.amount), **extra}}
    response = response or SettleResponse(success=True, transaction=transaction or "", network=network, payer=payer)
    header = encode_payment_response_header(response)
    async with rt.db.transaction() as conn:
        await update_usage(
            conn,
            usage_id,
            status=UsageStatus.succeeded,
            transaction_hash=transaction,
            finished_at=utcnow(),
            **usage_fields,
        )
        await conn.execute(_SETTLE_KEPT, {"row_id": usage_id, "body": body, "payment_response": header})
    return body, header


async def mark_unsettled(rt: Runtime, usage_id: int, status: str, code: str | None, detail: str, **fields) -> None:
    """Never charged: the row says why, and the kept result is dropped (it is nobody's)."""
    async with rt.db.transaction() as conn:
        await update_usage(
            conn,
            usage_id,
            status=status,
            error_category="payment",
            error_code=code,
            error_detail=detail,
            finished_at=utcnow(),
            **fields,
        )
        await conn.execute(_DELETE_KEPT, {"row_id": usage_id})


async def mark_pending(rt: Runtime, usage_id: int, reason: str | None, **fields) -> None:
    async with rt.db.transaction() as conn:
        await update_usage(
            conn,
            usage_id,
            status=UsageStatus.pending,
            error_category="payment",
            error_code=reason,
            error_detail=f"settlement outcome unknown ({reason}); being resolved",
            **fields,
        )


# --- resolving unknown outcomes ---------------------------------------------------------------------------------


async def resolve(rt: Runtime, usage_id: int) -> str:
    """Settle the question for one paid attempt whose settlement is pending (or whose process died after the run):
    returns its status afterwards (``succeeded``, ``failed``, or still ``pending``/``running`` when nothing could
    be decided yet)."""
    async with rt.db.sessions() as db:
        row = (
            await db.execute(
                select(
                    _usage.c.status,
                    _usage.c.asset,
                    _usage.c.network,
                    _usage.c.created_at,
                    _claims.c.payer,
                    _claims.c.nonce,
                    _claims.c.valid_before,
                    _claims.c.scheme,
                    _kept.c.body,
                    _kept.c.payment,
                    _kept.c.requirements,
                )
                .select_from(_usage.join(_claims, _claims.c.usage_id == _usage.c.id))
                .outerjoin(_kept, _kept.c.usage_id == _usage.c.id)
                .where(_usage.c.id == usage_id)
            )
        ).first()
    if row is None or row.status not in (UsageStatus.pending, UsageStatus.running):
        return row.status if row is not None else UsageStatus.failed
    requirements = PaymentRequirements.model_validate(row.requirements) if row.requirements else None
    if rt.chain is not None and row.asset:
        try:
            payment = (row.asset, row.payer, row.nonce, row.scheme)
            used = await rt.chain.payment_used(*payment)
            since = row.created_at.timestamp()  # the settlement came after the claim
            transaction = await rt.chain.payment_transaction(*payment, since=since) if used else None
        except Exception as exc:  # the RPC is down: decide later
            log.warning("chain check for paid call %s failed (%s); retrying later", usage_id, type(exc).__name__)
            return row.status
        if used:
            if row.body is not None and requirements is not None:
                await mark_settled(rt, usage_id, row.body, requirements, transaction=transaction, payer=row.payer)
            else:
                await _settled_without_result(rt, usage_id, transaction)
            return UsageStatus.succeeded
    expired = row.valid_before is None or time.time() >= row.valid_before.timestamp()
    if not expired and row.payment is not None and requirements is not None:
        gateway: PaymentGateway = await rt.payments()
        settled = await gateway.settle(PaymentPayload.model_validate(row.payment), requirements)
        if settled.ok:
            await mark_settled(
                rt,
                usage_id,
                row.body,
                requirements,
                transaction=settled.transaction,
                payer=settled.payer or row.payer,
                response=settled.response,
            )
            return UsageStatus.succeeded
        if not outcome_unknown(settled):
            await mark_unsettled(rt, usage_id, UsageStatus.settle_failed, settled.reason, "settlement refused")
            return UsageStatus.settle_failed
        return row.status
    if expired and row.body is None:
        # Results are kept before any settlement is asked for: without one, nothing was settled here.
        detail = "the process stopped before the run delivered; never settled: not charged"
        await mark_unsettled(rt, usage_id, UsageStatus.failed, "run_interrupted", detail)
        return UsageStatus.failed
    if expired and rt.chain is not None:
        # Checked above: the authorization was never used, and now it never can be.
        detail = "never settled; the payment authorization expired unused: not charged"
        await mark_unsettled(rt, usage_id, UsageStatus.failed, "settlement_expired", detail)
        return UsageStatus.failed
    return row.status


async def _settled_without_result(rt: Runtime, usage_id: int, transaction: str | None) -> None:
    # The authorization was used on chain although no run delivered here (someone submitted it directly): the
    # money moved, so the row must say so.
    async with rt.db.sessions() as db:
        await update_usage(
            db,
            usage_id,
            status=UsageStatus.succeeded,
            transaction_hash=transaction,
            error_detail="settled on chain without a delivered result",
            finished_at=utcnow(),
        )
        await db.commit()


async def sweep(rt: Runtime, *, orphan_grace_seconds: float = 30.0) -> int:
    """Resolve pending settlements and paid attempts orphaned by a dead process (still ``running`` after their
    authorization expired), and delete kept results past their retention. Long runs are left to the job runner.
    Returns how many attempts reached a final state."""
    orphaned_before = utcnow() - timedelta(seconds=orphan_grace_seconds)
    jobs = select(Job.usage_id).where(Job.usage_id.is_not(None))
    async with rt.db.sessions() as db:
        ids = (
            await db.scalars(
                select(_usage.c.id)
                .select_from(_usage.join(_claims, _claims.c.usage_id == _usage.c.id))
                .where(
                    (_usage.c.status == UsageStatus.pending)
                    | ((_usage.c.status == UsageStatus.running) & (_claims.c.valid_before < orphaned_before)),
                    _usage.c.id.not_in(jobs),
                )
                .limit(500)
            )
        ).all()
        await db.execute(delete(_kept).where(_kept.c.expires_at < utcnow(), _kept.c.payment_response.is_not(None)))
        await db.commit()
    done = 0
    for usage_id in ids:
        try:
            if await resolve(rt, usage_id) not in (UsageStatus.pending, UsageStatus.running):
                done += 1
        except Exception:
            log.exception("resolving paid call %s failed; retrying at the next sweep", usage_id)
    return done
