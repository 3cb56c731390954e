"""The creator's dashboard home: resources with status, calls, earnings, upstream cost and margin, and alerts."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from fastapi import Depends, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts.models import User
from instant402.db.base import utcnow
from instant402.deps import get_db
from instant402.execution import notify
from instant402.keys import service as keys
from instant402.resources import service as resources
from instant402.resources.models import KEY_PAUSE_KINDS
from instant402.usage import service as usage
from instant402.web.charts import usage_charts
from instant402.web.common import page_router, page_user, read_form, require_user, text
from instant402.web.models_pages import expiry_soon
from instant402.web.rendering import money, network_name, render
from instant402.web.settings import LOW_CREDIT_USD

router = page_router()


@dataclass
class Alert:
    level: str  # "warn" or "err"
    text: str
    link: str | None = None
    link_text: str | None = None
    since: datetime | None = None  # when the event happened
    notice_ids: list[int] = field(default_factory=list)  # system notices it stands for: dismissing marks them read
    dismissible: bool = False  # a past event; a condition that still holds (no key) stays until it is fixed


# Notices that a standing condition already shows: the key card's trouble, the daily budget's pause.
KEY_NOTICE_KINDS = {"no_key", "key_invalid", "out_of_credit"}
BUDGET_NOTICE_KIND = "budget_reached"


def _names(resources: list) -> str:
    shown = ", ".join(f"“{r.name}”" for r in resources[:3])
    return shown + (f" and {len(resources) - 3} more" if len(resources) > 3 else "")


async def alerts_for(db: AsyncSession, user: User, own: list, today: date | None = None) -> list[Alert]:
    """What needs the creator's attention, most urgent first: one alert per event or condition."""
    found: list[Alert] = []
    notices = await notify.list_notifications(db, user.id, unread_only=True, limit=20)
    key = await keys.key_state(db, user.id)
    key_paused = [r for r in own if r.status == "paused" and r.pause_kind in KEY_PAUSE_KINDS]
    key_notices = [n for n in notices if n.kind in KEY_NOTICE_KINDS]
    paused_text = f" Paused until then: {_names(key_paused)}." if key_paused else ""
    key_alert = None
    if key is None:
        key_alert = Alert("err", "No OpenRouter key is saved: resources cannot run." + paused_text, "/settings")
        key_alert.link_text = "Add your key"
    elif key.status == "invalid":
        key_alert = Alert("err", "OpenRouter rejects your key." + paused_text, "/settings", "Replace the key")
    elif key.status == "out_of_credit":
        key_alert = Alert(
            "err", "Your OpenRouter key is out of credit." + paused_text, "/settings", "Top up, then verify"
        )
    elif key.limit_remaining is not None and key.limit_remaining < LOW_CREDIT_USD:
        message = f"Low OpenRouter credit: {money(key.limit_remaining)} left at the last check."
        key_alert = Alert("warn", message, "/settings", "See the key card", since=key.last_verified_at)
    if key_alert is not None:
        if key is not None and key_alert.level == "err":
            key_alert.since = key.updated_at
        key_alert.notice_ids = [n.id for n in key_notices]
        found.append(key_alert)
    if not user.payout_address:
        found.append(Alert("warn", "No payout address: you cannot publish yet.", "/settings", "Set it"))
    budget_paused = [r for r in own if r.status == "paused" and r.pause_kind == "budget"]
    budget_notices = [n for n in notices if n.kind == BUDGET_NOTICE_KIND]
    if budget_paused:
        text = budget_notices[0].message if budget_notices else f"Daily budget reached: {_names(budget_paused)} paused."
        since = budget_notices[0].created_at if budget_notices else None
        found.append(
            Alert("err", text, "/settings#limits-card", "See the budget", since, [n.id for n in budget_notices])
        )
    # Other notices the system left (cost cap refusals, ...), newest first; a notice a condition above already
    # stands for is not repeated. Key and budget notices whose condition has passed are history: dismissible.
    shown = {i for a in found for i in a.notice_ids}
    for notice in notices:
        if notice.id in shown or (notice.kind in KEY_NOTICE_KINDS and key_alert is not None):
            continue
        found.append(Alert("warn", notice.message, since=notice.created_at, notice_ids=[notice.id], dismissible=True))
    for r in own:
        if r.status == "paused" and r.pause_kind not in (*KEY_PAUSE_KINDS, "budget", "manual"):
            reason = r.paused_reason or "paused"
            found.append(Alert("err", f"“{r.name}” is paused: {reason}", f"/resources/{r.id}", "Open"))
        if r.status in ("published", "paused", "draft"):
            expiring = expiry_soon(r.model.expiration_date, today)
            if expiring or r.model_warning:
                message = r.model_warning or f"The model of “{r.name}” expires on {r.model.expiration_date}."
                found.append(Alert("warn", message, f"/resources/{r.id}/edit", "Change the model"))
    return found


RANGES = (7, 30, 90)


def chosen_range(request: Request) -> int:
    value = request.query_params.get("days")
    return int(value) if value in {str(d) for d in RANGES} else 30


@router.get("/")
async def home(request: Request, user: User | None = Depends(page_user), db: AsyncSession = Depends(get_db)):
    if user is None:
        return render(request, "landing.html")
    own = [r for r in await resources.list_own(db, user) if r.status != "archived"]
    days = chosen_range(request)
    summary = await usage.summarize(db, user.id, days=days)
    empty = (usage.Totals(), usage.Totals())
    rows = []
    for r in own:
        today, window = summary.by_resource.get(r.id, empty)
        rows.append({"r": r, "today": today, "window": window})
    return render(
        request,
        "dashboard.html",
        user=user,
        rows=rows,
        summary=summary,
        days=days,
        ranges=RANGES,
        charts=usage_charts(summary.series),
        alerts=await alerts_for(db, user, own),
    )


@router.post("/dashboard/notices/dismiss")
async def dismiss_notices(request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)):
    """Mark the posted notices (``ids``, comma separated) as read; "all" marks every notice."""
    form = await read_form(request)
    raw = text(form, "ids")
    ids = None if raw == "all" else [int(i) for i in raw.split(",") if i.strip().isdigit()][:100]
    if ids != []:
        await notify.mark_read(db, user.id, ids)
    return RedirectResponse("/", status_code=303)


CSV_COLUMNS = (
    "created_at",
    "resource",
    "kind",
    "status",
    "counted_as",
    "amount_usd",
    "network",
    "payer",
    "transaction",
    "model_used",
    "prompt_tokens",
    "completion_tokens",
    "upstream_cost_usd",
    "error_code",
)


def _csv_cell(value) -> str:
    text = "" if value is None else format(value, "f") if isinstance(value, Decimal) else str(value)
    # A cell a spreadsheet would run as a formula is quoted as text.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


@router.get("/usage.csv")
async def usage_csv(request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)):
    """Every attempt of the chosen range as CSV: exact amounts in USD, one row per attempt."""
    days = chosen_range(request)
    first = (utcnow() - timedelta(days=days - 1)).date()
    since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    slugs = {r.id: r.slug for r in await resources.list_own(db, user)}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for a in await usage.attempts_since(db, user.id, since):
        paid = a.kind == "paid"
        group = usage.paid_group(a.status) if paid else "test"
        amount = usage.usd_from_atomic(a.amount_atomic or 0) if paid and group == "settled" else Decimal(0)
        row = (
            a.created_at.isoformat(),
            slugs.get(a.resource_id, a.resource_id),
            a.kind,
            a.status,
            group,
            amount,
            network_name(a.network) if a.network else "",
            a.payer,
            a.transaction_hash,
            a.model_used or a.model_requested,
            a.prompt_tokens,
            a.completion_tokens,
            a.upstream_cost,
            a.error_code,
        )
        writer.writerow([_csv_cell(v) for v in row])
    name = f"instant402-usage-{days}d-{utcnow():%Y%m%d}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
