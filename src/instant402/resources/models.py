"""Tables of the resources domain (migrations: db/migrations/versions/0004_resources.py, 0007_metered.py)."""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from instant402.accounts.models import User
from instant402.catalog.models import CatalogModel
from instant402.db.base import Base, ExactDecimal, UTCDateTime, utcnow

STATUSES = ("draft", "published", "paused", "archived")
OUTPUT_KINDS = ("text", "json", "image")
# Why a resource is paused; every kind but "manual" is set by the system and lifted by it when the cause goes away.
PAUSE_KINDS = ("manual", "model_unavailable", "no_key", "key_invalid", "out_of_credit", "budget")
KEY_PAUSE_KINDS = ("no_key", "key_invalid", "out_of_credit")


class Resource(Base):
    """What a creator sells: a model bound to a prompt template with typed parameters, and a price per call."""

    __tablename__ = "resources"
    __table_args__ = (UniqueConstraint("owner_id", "slug"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    slug: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)

    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    fallback_model_ids: Mapped[list[str]] = mapped_column(JSON, default=list)  # tried in order
    system_prompt: Mapped[str] = mapped_column(Text, default="")  # hidden from buyers, always
    prompt_template: Mapped[str] = mapped_column(Text)
    parameters: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    temperature: Mapped[float | None] = mapped_column(Float)
    top_p: Mapped[float | None] = mapped_column(Float)
    max_tokens: Mapped[int] = mapped_column(Integer)
    output_kind: Mapped[str] = mapped_column(String(8), default="text")
    output_schema: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    price_atomic: Mapped[int] = mapped_column(BigInteger)  # USDC atomic units (6 decimals); metered: the maximum
    # Pricing (resources.pricing): "flat" charges price_atomic; "metered" charges the upstream cost × markup + fee,
    # at most max_price_atomic (= price_atomic). The three metered fields are null on a flat resource.
    pricing_mode: Mapped[str] = mapped_column(String(8), default="flat", server_default="flat")
    markup: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    fee_atomic: Mapped[int | None] = mapped_column(BigInteger)
    max_price_atomic: Mapped[int | None] = mapped_column(BigInteger)
    network: Mapped[str] = mapped_column(String(64))  # CAIP-2, e.g. "eip155:8453"
    pay_to: Mapped[str | None] = mapped_column(String(42))  # None: the owner's payout address at call time

    status: Mapped[str] = mapped_column(String(16), default="draft", index=True)
    pause_kind: Mapped[str | None] = mapped_column(String(32))
    paused_reason: Mapped[str | None] = mapped_column(String(300))
    running_on_fallback: Mapped[str | None] = mapped_column(String(255))
    model_warning: Mapped[str | None] = mapped_column(String(500))
    # Bumped on every change of the definition: caches of compiled templates and schemas key on (id, version).
    version: Mapped[int] = mapped_column(Integer, default=1)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Loaded with the row: every use of a resource needs its owner's name and its model.
    owner: Mapped[User] = relationship(lazy="joined", innerjoin=True)
    model: Mapped[CatalogModel] = relationship(lazy="joined", innerjoin=True)

    @property
    def active_model_id(self) -> str:
        """The model a call runs on now: the fallback while the main model is unavailable."""
        return self.running_on_fallback or self.model_id


@dataclass(frozen=True, slots=True)
class CallOwner:
    """What a call needs of the resource's owner."""

    username: str
    payout_address: str | None


# A resource's row as plain read-only values, for the calls (paid and test runs), which read their resource and never
# write it. Loading the ORM entity costs ~0.5 ms of CPU per call (a row processor per column, built per query); a Core
# row copied into this costs a tenth of that. The fields are the table's columns, so the two cannot drift apart.
ResourceRow = make_dataclass(
    "ResourceRow",
    [(column.key, Any) for column in Resource.__table__.columns] + [("owner", CallOwner | None, field(default=None))],
    frozen=True,
    slots=True,
    namespace={"active_model_id": Resource.active_model_id},
)
AnyResource = Resource | ResourceRow  # what the helpers that only read a resource accept
