"""The owner's page of one resource: status and actions, test run, usage log, and charts."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlencode

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts.models import User
from instant402.deps import Id, get_db
from instant402.errors import not_found
from instant402.execution.errors import MESSAGES
from instant402.resources import service as resources
from instant402.resources.schemas import endpoint_url, public_parameters
from instant402.usage import service as usage
from instant402.usage.models import UsageRecord, UsageStatus
from instant402.web.charts import usage_charts
from instant402.web.common import page_router, require_user
from instant402.web.dashboard import RANGES, chosen_range
from instant402.web.public import example_value
from instant402.web.rendering import render

router = page_router()

LOG_PER_PAGE = 20
STATUSES = (
    UsageStatus.succeeded,
    UsageStatus.failed,
    UsageStatus.settle_failed,
    UsageStatus.refused,
    UsageStatus.running,
)
KINDS = ("paid", "test")


async def owner_page(
    request: Request,
    resource_id: Id,
    user: User,
    db: AsyncSession,
    *,
    action_errors: dict[str, str] | None = None,
    confirm_publish: bool = False,
    status_code: int = 200,
):
    resource = await resources.get_own(db, user, resource_id)
    params = request.query_params
    status = params.get("status") if params.get("status") in STATUSES else None
    kind = params.get("kind") if params.get("kind") in KINDS else None
    try:
        page = max(1, min(100_000, int(params.get("page") or 1)))  # the offset stays within 64 bits
    except ValueError:
        page = 1
    total, attempts = await usage.list_attempts(
        db, user.id, resource_id=resource.id, status=status, kind=kind, page=page, per_page=LOG_PER_PAGE
    )
    days = chosen_range(request)
    summary = await usage.summarize(db, user.id, days=days, resource_id=resource.id)
    settings = request.app.state.settings
    base = {k: v for k, v in {"status": status, "kind": kind}.items() if v}
    parameters = public_parameters(resource)
    estimate = resources.estimate_cost(resource, resource.model)
    return render(
        request,
        "resource_owner.html",
        status_code=status_code,
        user=user,
        r=resource,
        endpoint=endpoint_url(settings.public_url, user.username, resource.slug),
        parameters=parameters,
        examples={p["name"]: example_value(p) for p in parameters},
        estimate=estimate,
        summary=summary,
        days=days,
        ranges=RANGES,
        charts=usage_charts(summary.series),
        attempts=attempts,
        total=total,
        page=page,
        pages=max(1, -(-total // LOG_PER_PAGE)),
        status=status,
        kind=kind,
        statuses=STATUSES,
        kinds=KINDS,
        link=lambda **c: f"/resources/{resource.id}?" + urlencode({**base, **c}),
        action_errors=action_errors or {},
        confirm_publish=confirm_publish,
        margin_negative=estimate.margin_typical < 0,
    )


@router.get("/resources/{resource_id}")
async def resource_page(
    resource_id: Id, request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)
):
    return await owner_page(request, resource_id, user, db)


# What each outcome means, in words, for the call detail view.
OUTCOMES = {
    "succeeded": "Delivered and settled: the buyer paid and got the answer.",
    "failed": "The model did not deliver; nothing was settled, the buyer was not charged.",
    "settle_failed": "The model answered but the payment did not settle: the answer was withheld, nothing charged.",
    "refused": "Refused before running (the payment was not accepted, or a limit applied); nothing charged.",
    "running": "Still running, or its outcome was not recorded.",
    "settlement_pending": "The model answered; the payment is still being settled.",
}


@router.get("/resources/{resource_id}/calls/{usage_id}")
async def call_detail(
    resource_id: int,
    usage_id: int,
    request: Request,
    user: User = Depends(require_user),
    db: AsyncSession = Depends(get_db),
):
    resource = await resources.get_own(db, user, resource_id)
    call = await db.get(UsageRecord, usage_id)
    if call is None or call.owner_id != user.id or call.resource_id != resource.id:
        raise not_found("call")
    paid, settled = call.kind == "paid", call.status == UsageStatus.succeeded
    earned = usage.usd_from_atomic(call.amount_atomic or 0) if paid and settled else Decimal(0)
    cost = call.upstream_cost or Decimal(0)
    return render(
        request,
        "call_detail.html",
        user=user,
        r=resource,
        call=call,
        outcome=OUTCOMES.get(call.status, call.status),
        buyer_message=MESSAGES.get(call.error_code or ""),
        earned=earned,
        cost=cost,
        margin=earned - cost,
        group=usage.paid_group(call.status) if paid else "test",
    )
