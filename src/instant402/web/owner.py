"""The owner's page of one resource: status and actions, test run, usage log, and charts."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts.models import User
from instant402.deps import Id, get_db
from instant402.resources import service as resources
from instant402.resources.schemas import endpoint_url, public_parameters
from instant402.usage import service as usage
from instant402.usage.models import UsageStatus
from instant402.web.charts import usage_charts
from instant402.web.common import page_router, require_user
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
    summary = await usage.summarize(db, user.id, days=30, resource_id=resource.id)
    settings = request.app.state.settings
    base = {k: v for k, v in {"status": status, "kind": kind}.items() if v}
    parameters = public_parameters(resource)
    return render(
        request,
        "resource_owner.html",
        status_code=status_code,
        user=user,
        r=resource,
        endpoint=endpoint_url(settings.public_url, user.username, resource.slug),
        parameters=parameters,
        examples={p["name"]: example_value(p) for p in parameters},
        estimate=resources.estimate_cost(resource, resource.model),
        summary=summary,
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
    )


@router.get("/resources/{resource_id}")
async def resource_page(
    resource_id: Id, request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)
):
    return await owner_page(request, resource_id, user, db)
