"""Recording call attempts and summarising them for creators."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.db.base import utcnow
from instant402.usage.models import UsageKind, UsageRecord, UsageStatus

USDC_ATOMIC = Decimal(10) ** 6


def usd_from_atomic(amount: int) -> Decimal:
    return Decimal(amount) / USDC_ATOMIC


# How a paid attempt counts, by status: only settled calls earn. A status not listed here (one added later, such as
# a settlement still under way) counts as pending until it is given its own group.
PAID_GROUPS = {
    UsageStatus.succeeded: "settled",
    UsageStatus.failed: "failed",  # the model failed: nothing charged
    UsageStatus.settle_failed: "failed",  # the model ran but the payment did not settle: result withheld
    UsageStatus.refused: "refused",  # refused before running (invalid payment, over capacity, cost cap, ...)
    UsageStatus.running: "pending",
    UsageStatus.pending: "pending",  # delivered, settlement outcome being resolved (on chain)
    UsageStatus.redelivered: "redelivered",  # a kept result sent again for the same payment: no new charge
}
GROUPS = ("settled", "failed", "refused", "pending")


def paid_group(status: str) -> str:
    return PAID_GROUPS.get(status, "pending")


@dataclass
class Totals:
    settled: int = 0
    failed: int = 0
    refused: int = 0
    pending: int = 0
    redelivered: int = 0  # not an attempt of its own: the same payment's result sent again
    test_runs: int = 0
    # The amounts recorded on settled paid calls (not price × count: metered calls settle their own amount).
    earnings_atomic: int = 0
    upstream_cost_usd: Decimal = Decimal(0)  # every attempt that reached the model, paid or test

    @property
    def attempts(self) -> int:
        """Every paid attempt, whatever its outcome."""
        return self.settled + self.failed + self.refused + self.pending

    @property
    def earnings_usd(self) -> Decimal:
        return usd_from_atomic(self.earnings_atomic)

    @property
    def margin_usd(self) -> Decimal:
        return self.earnings_usd - self.upstream_cost_usd

    def add(self, row) -> None:
        if row.kind == UsageKind.test:
            self.test_runs += 1
        else:
            group = paid_group(row.status)
            setattr(self, group, getattr(self, group) + 1)
            if group == "settled":
                self.earnings_atomic += row.amount_atomic or 0
        self.upstream_cost_usd += row.upstream_cost or Decimal(0)

    def as_dict(self) -> dict:
        return {
            "settled": self.settled,
            "failed": self.failed,
            "refused": self.refused,
            "pending": self.pending,
            "redelivered": self.redelivered,
            "test_runs": self.test_runs,
            # Kept for API clients: every paid attempt, and the settled ones.
            "calls": self.attempts,
            "succeeded": self.settled,
            "earnings_atomic": self.earnings_atomic,
            "earnings_usd": str(self.earnings_usd),
            "upstream_cost_usd": str(self.upstream_cost_usd),
            "margin_usd": str(self.margin_usd),
        }


@dataclass
class Summary:
    today: Totals
    window: Totals
    series: list[tuple[date, Totals]] = field(default_factory=list)
    # Per resource: (today, window), for the dashboard's table.
    by_resource: dict[int, tuple[Totals, Totals]] = field(default_factory=dict)


async def summarize(
    db: AsyncSession, owner_id: int, *, days: int = 30, resource_id: int | None = None, now: datetime | None = None
) -> Summary:
    """Totals for today and the last ``days`` days, and one point per day (UTC) for charts."""
    now = now or utcnow()
    first_day = (now - timedelta(days=days - 1)).date()
    since = datetime(first_day.year, first_day.month, first_day.day, tzinfo=now.tzinfo)
    query = select(
        UsageRecord.resource_id,
        UsageRecord.created_at,
        UsageRecord.kind,
        UsageRecord.status,
        UsageRecord.amount_atomic,
        UsageRecord.upstream_cost,
    ).where(UsageRecord.owner_id == owner_id, UsageRecord.created_at >= since)
    if resource_id is not None:
        query = query.where(UsageRecord.resource_id == resource_id)
    # Summed in Python: costs are exact decimals, which SQLite would sum as floats.
    per_day: dict[date, Totals] = defaultdict(Totals)
    window = Totals()
    by_resource: dict[int, tuple[Totals, Totals]] = defaultdict(lambda: (Totals(), Totals()))
    for row in (await db.execute(query)).all():
        day = row.created_at.date()
        per_day[day].add(row)
        window.add(row)
        today, in_window = by_resource[row.resource_id]
        in_window.add(row)
        if day == now.date():
            today.add(row)
    series = [
        (first_day + timedelta(days=i), per_day.get(first_day + timedelta(days=i), Totals())) for i in range(days)
    ]
    return Summary(today=per_day.get(now.date(), Totals()), window=window, series=series, by_resource=dict(by_resource))


async def list_attempts(
    db: AsyncSession,
    owner_id: int,
    *,
    resource_id: int | None = None,
    status: str | None = None,
    kind: str | None = None,
    page: int = 1,
    per_page: int = 50,
) -> tuple[int, list[UsageRecord]]:
    query = select(UsageRecord).where(UsageRecord.owner_id == owner_id)
    if resource_id is not None:
        query = query.where(UsageRecord.resource_id == resource_id)
    if status:
        query = query.where(UsageRecord.status == status)
    if kind:
        query = query.where(UsageRecord.kind == kind)
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.execute(
        query.order_by(UsageRecord.created_at.desc(), UsageRecord.id.desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    )
    return int(total or 0), list(rows.scalars())


async def attempts_since(
    db: AsyncSession, owner_id: int, since: datetime, *, resource_id: int | None = None
) -> list[UsageRecord]:
    """Every attempt from ``since`` on, oldest first (for exports)."""
    query = select(UsageRecord).where(UsageRecord.owner_id == owner_id, UsageRecord.created_at >= since)
    if resource_id is not None:
        query = query.where(UsageRecord.resource_id == resource_id)
    rows = await db.scalars(query.order_by(UsageRecord.created_at, UsageRecord.id))
    return list(rows)
