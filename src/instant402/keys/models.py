"""Tables of the keys domain (migration: db/migrations/versions/0003_keys.py)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Boolean, Date, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from instant402.db.base import Base, BigIntPK, ExactDecimal, UTCDateTime, utcnow


class KeyStatus:
    verified = "verified"  # OpenRouter accepted it at the last check
    unverified = "unverified"  # saved while OpenRouter could not be reached
    invalid = "invalid"  # OpenRouter answered 401
    out_of_credit = "out_of_credit"  # OpenRouter answered 402, or the last check showed no credit left

    usable = frozenset({verified, unverified})


class OpenRouterKey(Base):
    """A creator's OpenRouter key, envelope-encrypted (see keys.vault); one per creator."""

    __tablename__ = "openrouter_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    master_version: Mapped[int] = mapped_column(Integer, index=True)
    masked: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(128))
    limit: Mapped[Decimal | None] = mapped_column(ExactDecimal)  # USD; None = no limit
    limit_remaining: Mapped[Decimal | None] = mapped_column(ExactDecimal)  # USD; None = unlimited
    limit_reset: Mapped[str | None] = mapped_column(String(16))
    is_free_tier: Mapped[bool | None] = mapped_column(Boolean)
    last_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class KeyEvent(Base):
    """Audit trail: saved, replaced, verified (with result), removed, rotated, upstream_failure."""

    __tablename__ = "openrouter_key_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(24))
    result: Mapped[str | None] = mapped_column(String(24))
    detail: Mapped[str | None] = mapped_column(String(300))
    masked: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class KeyDecryption(Base):
    """How many times a creator's key was decrypted for upstream calls, per UTC day."""

    __tablename__ = "openrouter_key_decryptions"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
