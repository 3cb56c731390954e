"""Creator-facing usage log and earnings (JSON API)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts.auth import current_user
from instant402.accounts.models import User
from instant402.deps import Id, get_db
from instant402.errors import ApiError
from instant402.usage import service
from instant402.usage.models import UsageRecord

router = APIRouter(prefix="/api/v1/me", tags=["usage"])

Status = Literal["running", "succeeded", "failed", "settle_failed", "refused"]


def attempt_out(row: UsageRecord) -> dict:
    return {
        "id": row.id,
        "resource_id": row.resource_id,
        "kind": row.kind,
        "status": row.status,
        "error_category": row.error_category,
        "error_code": row.error_code,
        "error_detail": row.error_detail,
        "payer": row.payer,
        "amount_atomic": row.amount_atomic,
        "max_amount_atomic": row.max_amount_atomic,  # metered calls: the signed maximum; amount_atomic is settled
        "charge_breakdown": row.charge_breakdown,
        "network": row.network,
        "transaction": row.transaction_hash,
        "model_requested": row.model_requested,
        "model_used": row.model_used,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "upstream_cost_usd": None if row.upstream_cost is None else str(row.upstream_cost),
        "upstream_attempts": row.upstream_attempts,
        "streamed": row.streamed,
        "timings_ms": {
            "verify": row.verify_ms,
            "run": row.run_ms,
            "settle": row.settle_ms,
            "first_token": row.first_token_ms,
        },
        "created_at": row.created_at,
        "finished_at": row.finished_at,
    }


@router.get("/usage")
async def usage_log(
    resource_id: Id | None = Query(None),
    status: Status | None = None,
    kind: Literal["paid", "test"] | None = None,
    page: int = Query(1, ge=1, le=100_000),
    per_page: int = Query(50, ge=1, le=200),
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
):
    total, rows = await service.list_attempts(
        db, user.id, resource_id=resource_id, status=status, kind=kind, page=page, per_page=per_page
    )
    if page > 1 and (page - 1) * per_page >= total:
        raise ApiError(422, "page_out_of_range", "This page is past the last one.", {"fields": {"page": "Too high."}})
    return {"total": total, "page": page, "per_page": per_page, "items": [attempt_out(r) for r in rows]}


@router.get("/stats")
async def stats(
    days: int = Query(30, ge=1, le=365),
    resource_id: Id | None = Query(None),
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
):
    summary = await service.summarize(db, user.id, days=days, resource_id=resource_id)
    return {
        "today": summary.today.as_dict(),
        "window": summary.window.as_dict(),
        "days": days,
        "series": [{"date": d.isoformat(), **t.as_dict()} for d, t in summary.series],
    }
