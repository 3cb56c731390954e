"""A creator's cost limits as the hot path reads them, cached per process."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from instant402.db import Database
from instant402.execution.models import CreatorLimits


@dataclass(frozen=True, slots=True)
class LimitsView:
    """A creator's limits as the hot path needs them (defaults when the creator never set any)."""

    per_call_cap_usd: Decimal | None = None
    daily_budget_pusd: int | None = None
    webhook_url: str | None = None


DEFAULT_LIMITS = LimitsView()


class LimitsCache:
    """Per-process copy of creators' limits for ``ttl`` seconds; the limits API invalidates its own process."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._items: dict[int, tuple[float, LimitsView]] = {}

    async def get(self, database: Database, user_id: int) -> LimitsView:
        hit = self._items.get(user_id)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        async with database.sessions() as db:
            row = await db.get(CreatorLimits, user_id)
            view = view_of(row)
        if len(self._items) > 10_000:
            self._items.clear()
        self._items[user_id] = (now + self.ttl, view)
        return view

    def invalidate(self, user_id: int) -> None:
        self._items.pop(user_id, None)


def view_of(row: CreatorLimits | None) -> LimitsView:
    if row is None:
        return DEFAULT_LIMITS
    return LimitsView(row.per_call_cap_usd, row.daily_budget_pusd, row.webhook_url)
