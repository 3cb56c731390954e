"""Payments seen by this server: each authorization (payer + nonce) may run at most once."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from instant402.db.base import Base, BigIntPK, UTCDateTime, utcnow


class PaymentClaim(Base):
    """Inserted before a paid run; the unique key makes a replay fail in the database, across processes."""

    __tablename__ = "payment_claims"
    __table_args__ = (UniqueConstraint("network", "payer", "nonce"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    network: Mapped[str] = mapped_column(String(64))
    payer: Mapped[str] = mapped_column(String(42))
    nonce: Mapped[str] = mapped_column(String(66))
    usage_id: Mapped[int | None] = mapped_column(ForeignKey("usage_records.id", ondelete="SET NULL"))
    amount_atomic: Mapped[int] = mapped_column(BigInteger)
    valid_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
