"""One row per call attempt, paid or owner test, whatever its outcome."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    bindparam,
    false,
    insert,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from instant402.db.base import Base, BigIntPK, ExactDecimal, UTCDateTime, connection_of, utcnow
from instant402.db.sqlite_loop import quick_write


class UsageKind:
    paid = "paid"
    test = "test"


class UsageStatus:
    running = "running"  # payment verified (or test started), model running
    succeeded = "succeeded"  # delivered; for paid calls also settled
    failed = "failed"  # the run failed: nothing settled
    settle_failed = "settle_failed"  # the run succeeded but settlement failed: result withheld
    refused = "refused"  # refused before running (payment invalid, over capacity, cost cap, ...)
    pending = "pending"  # delivered, settlement outcome unknown (facilitator timeout): resolved by the reconciler
    redelivered = "redelivered"  # a settled call's kept result sent again for the same payment: no new charge


class UsageRecord(Base):
    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_owner_created", "owner_id", "created_at"),
        Index("ix_usage_records_resource_created", "resource_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    # Buyer-facing code and category on failure; the creator-facing detail never holds the key or prompt.
    error_category: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(Text)
    payer: Mapped[str | None] = mapped_column(String(42), index=True)
    amount_atomic: Mapped[int] = mapped_column(BigInteger, default=0)
    # Metered calls: the signed maximum and how the settled amount was reached (None for flat calls).
    max_amount_atomic: Mapped[int | None] = mapped_column(BigInteger)
    charge_breakdown: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    network: Mapped[str | None] = mapped_column(String(64))
    asset: Mapped[str | None] = mapped_column(String(42))
    pay_to: Mapped[str | None] = mapped_column(String(42))
    transaction_hash: Mapped[str | None] = mapped_column(String(66))
    model_requested: Mapped[str | None] = mapped_column(String(200))
    model_used: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    upstream_cost: Mapped[Decimal | None] = mapped_column(ExactDecimal)  # USD
    upstream_attempts: Mapped[int] = mapped_column(Integer, default=0)
    verify_ms: Mapped[int | None] = mapped_column(Integer)
    run_ms: Mapped[int | None] = mapped_column(Integer)
    settle_ms: Mapped[int | None] = mapped_column(Integer)
    # Streamed answers (text/event-stream): the time from the buyer's request to the first text sent.
    streamed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    first_token_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# The hot path's writes, as prebuilt Core statements: building and flushing an ORM object per call costs more CPU
# than the database does.
_usage = UsageRecord.__table__
_INSERT_USAGE = quick_write(insert(_usage))
_UPDATE_USAGE = quick_write(update(_usage)).where(_usage.c.id == bindparam("row_id"))


async def add_usage(db: AsyncSession | AsyncConnection, **values: Any) -> int:
    """Insert one usage row in the caller's transaction; returns its id."""
    conn = await connection_of(db)
    return (await conn.execute(_INSERT_USAGE, values)).inserted_primary_key[0]


async def update_usage(db: AsyncSession | AsyncConnection, usage_id: int, **values: Any) -> None:
    """Set ``values`` on one usage row in the caller's transaction."""
    conn = await connection_of(db)
    await conn.execute(_UPDATE_USAGE, {"row_id": usage_id, **values})
