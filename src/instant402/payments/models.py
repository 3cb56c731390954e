"""Payments seen by this server: each authorization (payer + nonce) may run at most once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from instant402.db.base import Base, BigIntPK, UTCDateTime, utcnow


class PaymentClaim(Base):
    """Inserted before a paid run; the unique key makes a replay fail in the database, across processes."""

    __tablename__ = "payment_claims"
    __table_args__ = (
        UniqueConstraint("network", "payer", "nonce"),
        # A payment identifier (the x402 payment-identifier extension) names one sale of one payer.
        Index("uq_payment_claims_payment_id", "network", "payer", "payment_id", unique=True),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    network: Mapped[str] = mapped_column(String(64))
    payer: Mapped[str] = mapped_column(String(42))
    nonce: Mapped[str] = mapped_column(String(66))
    usage_id: Mapped[int | None] = mapped_column(ForeignKey("usage_records.id", ondelete="SET NULL"))
    amount_atomic: Mapped[int] = mapped_column(BigInteger)
    valid_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What the claim was for, as SHA-256 digests: the signed authorization (only its holder can ask for the result
    # again) and the resource with the buyer's input (a re-sent payment for another call gets nothing).
    payment_digest: Mapped[str | None] = mapped_column(String(64))
    request_digest: Mapped[str | None] = mapped_column(String(64))
    payment_id: Mapped[str | None] = mapped_column(String(128))
    scheme: Mapped[str | None] = mapped_column(String(16))  # None: exact (EIP-3009); upto: a Permit2 nonce


class KeptResult(Base):
    """A delivered run's success body, kept before settlement (so a buyer who paid can always have it) and for the
    retention window after it, for re-delivery to the holder of the same signed payment."""

    __tablename__ = "kept_results"

    usage_id: Mapped[int] = mapped_column(ForeignKey("usage_records.id", ondelete="CASCADE"), primary_key=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)  # the success body; its receipt once settled
    payment_response: Mapped[str | None] = mapped_column(Text)  # the encoded PAYMENT-RESPONSE, once settled
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # The signed payment and its requirements while settlement is open, so it can be retried; cleared once settled.
    payment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    requirements: Mapped[dict[str, Any] | None] = mapped_column(JSON)
