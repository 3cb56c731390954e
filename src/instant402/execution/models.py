"""Tables of the execution domain (migration: db/migrations/versions/0006_execution.py).

Budget amounts that the database adds up atomically are integers of pico-USD (10^-12 USD): exact on every
database, and fine enough for per-token prices. Everything shown to people is converted back to USD decimals.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Date, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from instant402.db.base import Base, BigIntPK, ExactDecimal, UTCDateTime, utcnow


class CreatorLimits(Base):
    """A creator's cost controls and alert target; no row means the defaults (cap = price, no budget, no hook)."""

    __tablename__ = "creator_limits"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    per_call_cap_usd: Mapped[Decimal | None] = mapped_column(ExactDecimal)  # None: each resource's own price
    daily_budget_pusd: Mapped[int | None] = mapped_column(BigInteger)  # None: no daily budget
    webhook_url: Mapped[str | None] = mapped_column(String(500))
    # The card hold: worst cases reserved plus actual costs of finished calls, for ``budget_day`` (UTC).
    budget_day: Mapped[date | None] = mapped_column(Date)
    budget_used_pusd: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Notification(Base):
    """A notice on the creator's dashboard (credit gone, key rejected, budget reached, call over the cap...)."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_user_created", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(String(500))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class JobState:
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class Job(Base):
    """A paid long run: answered 202 at once, run by the job runner, settled only when it succeeded in time."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_id", "state", "id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the job URL's random token
    usage_id: Mapped[int] = mapped_column(ForeignKey("usage_records.id", ondelete="CASCADE"), unique=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default=JobState.queued)
    input: Mapped[dict[str, Any]] = mapped_column(JSON)  # the buyer's validated parameters
    # What settlement needs later: the buyer's signed payload and the requirements it was verified against.
    payment_payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    requirements: Mapped[dict[str, Any]] = mapped_column(JSON)
    valid_before: Mapped[datetime] = mapped_column(UTCDateTime)
    budget_hold_pusd: Mapped[int] = mapped_column(BigInteger, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the success body, once settled
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the buyer-safe error body on failure
    payment_response: Mapped[str | None] = mapped_column(Text)  # the PAYMENT-RESPONSE header after settlement
    runs: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
