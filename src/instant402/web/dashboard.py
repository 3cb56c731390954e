"""The creator's dashboard home: resources with status, calls, earnings, upstream cost and margin, and alerts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts.models import User
from instant402.deps import get_db
from instant402.execution import notify
from instant402.keys import service as keys
from instant402.resources import service as resources
from instant402.usage import service as usage
from instant402.web.charts import usage_charts
from instant402.web.common import page_router, page_user
from instant402.web.models_pages import expiry_soon
from instant402.web.rendering import render
from instant402.web.settings import LOW_CREDIT_USD

router = page_router()


@dataclass
class Alert:
    level: str  # "warn" or "err"
    text: str
    link: str | None = None
    link_text: str | None = None


async def alerts_for(db: AsyncSession, user: User, own: list, today: date | None = None) -> list[Alert]:
    """What needs the creator's attention, most urgent first."""
    found: list[Alert] = []
    key = await keys.key_state(db, user.id)
    if key is None:
        found.append(Alert("err", "No OpenRouter key is saved: resources cannot run.", "/settings", "Add your key"))
    elif key.status == "invalid":
        found.append(Alert("err", "OpenRouter rejects your key (invalid).", "/settings", "Replace the key"))
    elif key.status == "out_of_credit":
        found.append(Alert("err", "Your OpenRouter key has no credit left.", "/settings", "Check the key"))
    elif key.limit_remaining is not None and key.limit_remaining < LOW_CREDIT_USD:
        found.append(
            Alert("warn", f"Low OpenRouter credit: ${key.limit_remaining} left.", "/settings", "See the key card")
        )
    if not user.payout_address:
        found.append(Alert("warn", "No payout address: you cannot publish yet.", "/settings", "Set it"))
    # Notices the system left (cost cap refusals, budget pauses, key trouble), newest first.
    for notice in await notify.list_notifications(db, user.id, unread_only=True, limit=5):
        found.append(Alert("warn", f"{notice.message} ({notice.created_at:%Y-%m-%d %H:%M} UTC)"))
    for r in own:
        if r.status == "paused":
            reason = r.paused_reason or "paused"
            found.append(Alert("err", f"“{r.name}” is paused: {reason}", f"/resources/{r.id}", "Open"))
        if r.status in ("published", "paused", "draft"):
            expiring = expiry_soon(r.model.expiration_date, today)
            if expiring or r.model_warning:
                text = r.model_warning or f"The model of “{r.name}” expires on {r.model.expiration_date}."
                found.append(Alert("warn", text, f"/resources/{r.id}/edit", "Change the model"))
    return found


@router.get("/")
async def home(request: Request, user: User | None = Depends(page_user), db: AsyncSession = Depends(get_db)):
    if user is None:
        return render(request, "landing.html")
    own = [r for r in await resources.list_own(db, user) if r.status != "archived"]
    summary = await usage.summarize(db, user.id, days=30)
    rows = []
    for r in own:
        s = await usage.summarize(db, user.id, days=30, resource_id=r.id)
        rows.append({"r": r, "today": s.today, "window": s.window})
    return render(
        request,
        "dashboard.html",
        user=user,
        rows=rows,
        summary=summary,
        charts=usage_charts(summary.series),
        alerts=await alerts_for(db, user, own),
    )
