"""Cost control before a payment is touched: the per-call cap and the daily upstream budget (a card hold).

- Per-call cap: a call whose worst-case upstream cost is above the creator's cap (default: the resource's price, so
  a creator never knowingly loses money on a call) is refused before the 402 quote, and the creator is told.
- Daily budget: before verify, the call's worst case is reserved in one conditional UPDATE (atomic on every
  database); after the run the hold is replaced by the actual cost. When a call no longer fits, the creator's
  resources pause (pause_kind "budget") until the next UTC midnight; the first call after it (or the job runner's
  periodic sweep) lifts the pause.

Limits are read through a short per-process cache, so a creator without a budget costs no database round trip.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, select, update

from instant402.catalog.models import CatalogModel
from instant402.db.base import utcnow
from instant402.errors import ApiError
from instant402.execution import notify
from instant402.execution.creator_limits import LimitsView, view_of
from instant402.execution.models import CreatorLimits
from instant402.ops import metrics
from instant402.resources.estimate import worst_case_cost, worst_prompt_tokens
from instant402.resources.lifecycle import pause_creator_resources, resume_creator_resources
from instant402.resources.params import MAX_TOTAL_INPUT_CHARS, compiled, render_value
from instant402.resources.templates import Placeholder

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from instant402.resources.models import AnyResource
    from instant402.runtime import Runtime

PUSD_PER_USD = 10**12
BUDGET = "budget"
_MODEL_CACHE_SECONDS = 60.0


def to_pusd(usd: Decimal | None) -> int:
    """USD -> pico-USD, rounded up (a hold is never smaller than the cost)."""
    return 0 if not usd else math.ceil(Decimal(usd) * PUSD_PER_USD)


def from_pusd(pusd: int | None) -> Decimal | None:
    return None if pusd is None else Decimal(pusd) / PUSD_PER_USD


def usd_text(value: Decimal | None) -> str | None:
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return text


def next_reset(now: datetime | None = None) -> datetime:
    """When today's budget resets: the next UTC midnight."""
    now = now or utcnow()
    return datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


def seconds_to_reset(now: datetime | None = None) -> int:
    now = now or utcnow()
    return max(1, math.ceil((next_reset(now) - now).total_seconds()))


# --- worst case of one call ----------------------------------------------------------------------------------------

_models: dict[str, tuple[float, Any]] = {}


async def _prices(rt: Runtime, resource: AnyResource) -> list[Any]:
    """Catalog rows of every model the call may run on (active model first, then fallbacks), cached briefly."""
    ids = [resource.active_model_id] + [m for m in resource.fallback_model_ids or () if m != resource.active_model_id]
    now = time.monotonic()
    missing = [m for m in ids if m not in _models or _models[m][0] <= now]
    if missing:
        async with rt.db.sessions() as db:
            for row in await db.scalars(select(CatalogModel).where(CatalogModel.id.in_(missing))):
                _models[row.id] = (now + _MODEL_CACHE_SECONDS, row)
    return [_models[m][1] for m in ids if m in _models]


def _inserted_chars(resource: AnyResource, values: dict[str, Any] | None) -> tuple[int, int]:
    """Characters the parameters add to the prompt: (worst allowed, with these values)."""
    comp = compiled(resource)
    uses: dict[str, int] = {}
    for template in (comp.system, comp.user):
        for seg in template.segments:
            if isinstance(seg, Placeholder):
                uses[seg.name] = uses.get(seg.name, 0) + 1
    worst = sum(n * comp.by_name[name].effective_max_length for name, n in uses.items() if name in comp.by_name)
    worst = min(worst, max(uses.values(), default=0) * MAX_TOTAL_INPUT_CHARS)
    if values is None:
        return worst, worst
    actual = sum(n * len(render_value(values[name])) for name, n in uses.items() if values.get(name) is not None)
    return worst, min(actual, worst)


def call_worst_case(resource: AnyResource, model: Any, values: dict[str, Any] | None = None) -> Decimal:
    """The most this call can cost upstream on ``model``: the resource's worst case, with the prompt part tightened
    to the input actually sent (one token per input character at worst, as in resources.estimate)."""
    cost = worst_case_cost(resource, model)
    worst_chars, actual_chars = _inserted_chars(resource, values)
    price = model.prompt_price if model.prompt_price is not None and model.prompt_price > 0 else Decimal(0)
    spare = min(worst_chars - actual_chars, worst_prompt_tokens(compiled(resource)))
    return max(Decimal(0), cost - spare * price)


async def worst_case_for_call(rt: Runtime, resource: AnyResource, values: dict[str, Any] | None) -> Decimal:
    """The dearest of the call's possible models (a fallback may cost more than the main model)."""
    models = await _prices(rt, resource)
    return max((call_worst_case(resource, m, values) for m in models), default=Decimal(0))


# --- the per-call cap ---------------------------------------------------------------------------------------------


def cap_for(resource: AnyResource, limits: LimitsView) -> Decimal:
    if limits.per_call_cap_usd is not None:
        return limits.per_call_cap_usd
    return Decimal(resource.price_atomic) / Decimal(10**6)


async def check_call_cost(rt: Runtime, resource: AnyResource, values: dict[str, Any]) -> tuple[LimitsView, Decimal]:
    """Refuse (503, nothing charged) a call whose worst case is above the cap; returns the limits and worst case."""
    limits = await rt.creator_limits.get(rt.db, resource.owner_id)
    worst = await worst_case_for_call(rt, resource, values)
    cap = cap_for(resource, limits)
    if worst > cap:
        await notify.notify(
            rt,
            resource.owner_id,
            "cost_cap",
            f"Calls to /{resource.slug} are refused: a call may cost ${usd_text(worst)} upstream, above your "
            f"per-call cap of ${usd_text(cap)}. Raise the price or the cap, or lower max_tokens.",
            {"resource_id": resource.id, "worst_case_usd": usd_text(worst), "cap_usd": usd_text(cap)},
        )
        raise ApiError(
            503,
            "resource_unavailable",
            "This resource cannot take this call right now; its creator has been notified. You were not charged.",
            {"charged": False},
        )
    return limits, worst


# --- the daily budget: hold, replace, pause, resume ---------------------------------------------------------------


def _used_today(today: date):
    return case((CreatorLimits.budget_day == today, CreatorLimits.budget_used_pusd), else_=0)


async def reserve(rt: Runtime, user_id: int, hold_pusd: int) -> date | None:
    """Hold ``hold_pusd`` of today's budget in one conditional UPDATE; the day held, or None when it does not fit."""
    today = utcnow().date()
    used = _used_today(today)
    stmt = (
        update(CreatorLimits)
        .where(
            CreatorLimits.user_id == user_id,
            CreatorLimits.daily_budget_pusd.is_not(None),
            used + hold_pusd <= CreatorLimits.daily_budget_pusd,
        )
        .values(budget_day=today, budget_used_pusd=used + hold_pusd)
        .execution_options(synchronize_session=False)
    )
    async with rt.db.sessions() as db:
        result = await db.execute(stmt)
        await db.commit()
    return today if result.rowcount == 1 else None


async def replace_hold(rt: Runtime, user_id: int, day: date, hold_pusd: int, actual_usd: Decimal | None) -> None:
    """Swap a hold for the actual upstream cost (0 when nothing was billed); a hold from a past day is dropped."""
    new = CreatorLimits.budget_used_pusd - hold_pusd + to_pusd(actual_usd)
    stmt = (
        update(CreatorLimits)
        .where(CreatorLimits.user_id == user_id, CreatorLimits.budget_day == day)
        .values(budget_used_pusd=case((new < 0, 0), else_=new))
        .execution_options(synchronize_session=False)
    )
    async with rt.db.sessions() as db:
        await db.execute(stmt)
        await db.commit()


async def budget_reached(rt: Runtime, resource: AnyResource, limits: LimitsView) -> ApiError:
    """Pause the creator's resources until the reset, tell the creator, and give the buyer's 503."""
    reset = next_reset()
    async with rt.db.sessions() as db:
        paused = await pause_creator_resources(
            db, resource.owner_id, BUDGET, f"Daily upstream budget reached; resumes at {reset:%Y-%m-%d %H:%M} UTC."
        )
        await db.commit()
    metrics.budget_paused()
    await notify.notify(
        rt,
        resource.owner_id,
        "budget_reached",
        f"Your daily upstream budget of ${usd_text(from_pusd(limits.daily_budget_pusd))} is used up: "
        f"{paused} resource(s) paused until {reset:%Y-%m-%d %H:%M} UTC.",
        {"budget_usd": usd_text(from_pusd(limits.daily_budget_pusd)), "resumes_at": reset.isoformat()},
    )
    return ApiError(
        503,
        "resource_paused",
        "This resource has reached its daily limit; retry after the reset.",
        {"charged": False},
        headers={"Retry-After": str(seconds_to_reset())},
    )


async def lift_if_reset(rt: Runtime, user_id: int, *, force: bool = False) -> bool:
    """Lift the creator's budget pauses once the budget day is over (or the budget was removed, or ``force``: the
    creator just changed it); True if any resource went live again."""
    async with rt.db.sessions() as db:
        row = await db.get(CreatorLimits, user_id)
        over = row is None or row.daily_budget_pusd is None or row.budget_day != utcnow().date()
        if not (over or force):
            return False
        resumed = await resume_creator_resources(db, user_id, [BUDGET])
        await db.commit()
    return resumed > 0


async def sweep_budget_pauses(rt: Runtime) -> int:
    """Periodic: lift budget pauses whose day is over (the lazy check on the next call does the same)."""
    from instant402.resources.models import Resource

    async with rt.db.sessions() as db:
        owners = set(
            await db.scalars(
                select(Resource.owner_id).where(Resource.status == "paused", Resource.pause_kind == BUDGET).distinct()
            )
        )
    lifted = 0
    for owner in owners:
        lifted += await lift_if_reset(rt, owner)
    return lifted


# --- changing the limits (the API and the settings page) -----------------------------------------------------------

MAX_USD = Decimal(1_000_000)
LIMIT_FIELDS = ("per_call_cap_usd", "daily_budget_usd", "webhook_url")


def _usd_field(name: str, value: str | None, errors: dict[str, str]) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        errors[name] = 'Must be a decimal amount of USD, e.g. "0.05".'
        return None
    if not amount.is_finite() or amount < 0 or amount > MAX_USD:
        errors[name] = f"Must be between 0 and {MAX_USD}."
    elif amount.as_tuple().exponent < -12:
        errors[name] = "At most 12 decimal places."
    return amount


async def limits_out(db: AsyncSession, user_id: int) -> dict:
    row = await db.get(CreatorLimits, user_id)
    view = view_of(row)
    today = utcnow().date()
    used = row.budget_used_pusd if row is not None and row.budget_day == today else 0
    return {
        "per_call_cap_usd": usd_text(view.per_call_cap_usd),
        "per_call_cap_default": "each resource's price" if view.per_call_cap_usd is None else None,
        "daily_budget_usd": usd_text(from_pusd(view.daily_budget_pusd)),
        "budget_used_today_usd": usd_text(from_pusd(used)) if view.daily_budget_pusd else None,
        "budget_resets_at": next_reset().isoformat(),
        "webhook_url": view.webhook_url,
    }


async def update_limits(rt: Runtime, db: AsyncSession, user_id: int, changes: dict[str, str | None]) -> None:
    """Set the given limits (a key with None clears that limit); a bad value is a 422 on its field, nothing saved."""
    errors: dict[str, str] = {}
    cap = _usd_field("per_call_cap_usd", changes.get("per_call_cap_usd"), errors)
    budget = _usd_field("daily_budget_usd", changes.get("daily_budget_usd"), errors)
    hook = None
    if "webhook_url" in changes:
        try:
            hook = notify.validate_webhook_field(changes["webhook_url"], rt.settings)
        except ApiError as err:
            errors.update(err.details["fields"])
    if errors:
        raise ApiError(422, "invalid_input", "Some limits are not valid.", {"fields": errors})
    row = await db.get(CreatorLimits, user_id)
    if row is None:
        row = CreatorLimits(user_id=user_id, budget_used_pusd=0)
        db.add(row)
    if "per_call_cap_usd" in changes:
        row.per_call_cap_usd = cap
    if "daily_budget_usd" in changes:
        row.daily_budget_pusd = to_pusd(budget) if budget is not None else None
    if "webhook_url" in changes:
        row.webhook_url = hook
    row.updated_at = utcnow()
    await db.commit()
    rt.creator_limits.invalidate(user_id)
    if "daily_budget_usd" in changes:
        # A creator who raised or removed the budget wants the paused resources back now.
        await lift_if_reset(rt, user_id, force=True)
