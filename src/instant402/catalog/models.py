"""Tables of the catalog domain (migration: db/migrations/versions/0002_catalog.py)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Date, ForeignKey, Index, Integer, String, Text, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column, relationship, selectinload

from instant402.catalog.parse import CHAT_MODALITIES, price_per_million
from instant402.db.base import Base, BigIntPK, ExactDecimal, UTCDateTime, utcnow

__all__ = [
    "CatalogLock",
    "CatalogModel",
    "CatalogSyncRun",
    "CuratedModel",
    "get_model",
    "get_models",
    "price_per_million",
]


_FILTER_COLUMNS = (
    "is_active",
    "provider",
    "modality",
    "context_length",
    "supports_vision",
    "supports_tools",
    "supports_structured_output",
    "supports_reasoning",
    "is_free",
    "produces_image",
)


class CatalogModel(Base):
    """One OpenRouter model as last seen by a sync. Never deleted: resources point at it."""

    __tablename__ = "models"
    __table_args__ = (
        # Substring search (LIKE '%word%') from a trigram index on PostgreSQL (pg_trgm, see the migration). SQLite
        # has no such index and scans search_text; there the index is declared empty (WHERE 0) so that both
        # databases share one schema.
        Index(
            "ix_models_search_text_trgm",
            "search_text",
            postgresql_using="gin",
            postgresql_ops={"search_text": "public.gin_trgm_ops"},
            sqlite_where=text("0"),
        ),
        # A provider's models in name order: names start with the provider's name, so walking the name index alone
        # would pass every model of the providers before it.
        Index("ix_models_provider_name", "provider", "name", "id"),
        # Counting matches of the common filters reads only this index (a covering index), never the wide rows.
        Index("ix_models_filter_count", *_FILTER_COLUMNS),
        # The same for price filters; a price sort also walks these in full order (many models share a price, the
        # free ones above all) and stops after one page.
        Index("ix_models_active_prompt_price", "is_active", "prompt_price_micro", "name", "id"),
        Index("ix_models_active_completion_price", "is_active", "completion_price_micro", "name", "id"),
        # SQLite's narrow copy of search_text: a text search tests this index instead of every whole row.
        # PostgreSQL finds text in the trigram index, so there this index is declared empty (WHERE false).
        Index("ix_models_active_search_text", "is_active", "search_text", postgresql_where=text("false")),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # OpenRouter id, may hold "/" and ":"
    canonical_slug: Mapped[str | None] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    provider: Mapped[str] = mapped_column(String(100))  # id prefix, e.g. "openai"; indexed with the name below
    provider_name: Mapped[str] = mapped_column(String(100))  # display name, e.g. "OpenAI"
    modality: Mapped[str] = mapped_column(String(16), index=True)  # text|image|audio|video|embedding|multimodal
    input_modalities: Mapped[list[str]] = mapped_column(JSON, default=list)
    output_modalities: Mapped[list[str]] = mapped_column(JSON, default=list)
    context_length: Mapped[int | None] = mapped_column(Integer, index=True)
    max_completion_tokens: Mapped[int | None] = mapped_column(Integer)

    # USD per token, exact; None when unknown (routers publish "-1").
    prompt_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    completion_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    request_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    image_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    image_output_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    # Integer mirrors for sorting and filtering (SQLite keeps ExactDecimal as text): micro-USD per 1M tokens,
    # rounded up, so a price filter never lets a dearer model through.
    prompt_price_micro: Mapped[int | None] = mapped_column(BigInteger, index=True)
    completion_price_micro: Mapped[int | None] = mapped_column(BigInteger, index=True)

    supported_parameters: Mapped[list[str]] = mapped_column(JSON, default=list)
    supports_vision: Mapped[bool] = mapped_column(Boolean, default=False)
    supports_tools: Mapped[bool] = mapped_column(Boolean, default=False)
    supports_structured_output: Mapped[bool] = mapped_column(Boolean, default=False)
    supports_reasoning: Mapped[bool] = mapped_column(Boolean, default=False)
    is_free: Mapped[bool] = mapped_column(Boolean, default=False)
    produces_image: Mapped[bool] = mapped_column(Boolean, default=False)
    is_moderated: Mapped[bool] = mapped_column(Boolean, default=False)

    created: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    expiration_date: Mapped[date | None] = mapped_column(Date)
    content_hash: Mapped[str] = mapped_column(String(64), default="")  # SHA-256 of raw: skip unchanged rows
    # Lower-cased id, name and description in one column, so a search scans one value per row.
    search_text: Mapped[str] = mapped_column(Text, default="")

    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)

    # OpenRouter's JSON lives in its own table: searches scan narrow rows (SQLite keeps big values inline). Loaded
    # only when asked for (``get_model(..., with_raw=True)``): every resource load joins its model.
    raw_row: Mapped[CatalogModelRaw | None] = relationship(lazy="raise", uselist=False, passive_deletes=True)

    @property
    def answers_chat(self) -> bool:
        """Whether a chat completion can run on this model (what every resource needs)."""
        return self.modality in CHAT_MODALITIES

    @property
    def raw(self) -> dict[str, Any]:
        """The model object exactly as OpenRouter sent it."""
        return self.raw_row.raw if self.raw_row is not None else {}


class CatalogModelRaw(Base):
    __tablename__ = "model_raw"

    id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    raw: Mapped[dict[str, Any]] = mapped_column(JSON)


class CuratedModel(Base):
    """The hand-picked list shown first; may name a model the catalog does not (yet) hold."""

    __tablename__ = "catalog_curated"

    model_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CatalogSyncRun(Base):
    """The report of one sync attempt, successful or not."""

    __tablename__ = "catalog_sync_runs"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    trigger: Mapped[str] = mapped_column(String(16))  # startup | schedule | cli | api
    source: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16), index=True)  # running | ok | failed | skipped
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    fetched: Mapped[int] = mapped_column(Integer, default=0)
    added: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    price_changes: Mapped[int] = mapped_column(Integer, default=0)
    deactivated: Mapped[int] = mapped_column(Integer, default=0)
    reactivated: Mapped[int] = mapped_column(Integer, default=0)
    newly_expiring: Mapped[int] = mapped_column(Integer, default=0)
    # The ids behind each count (price changes with old and new prices), capped in size by the sync.
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class CatalogLock(Base):
    """A named lease: whoever holds an unexpired lease may sync; works the same on SQLite and PostgreSQL."""

    __tablename__ = "catalog_locks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


async def get_model(db: AsyncSession, model_id: str, *, with_raw: bool = False) -> CatalogModel | None:
    """The stored model (active or not), or None; ``with_raw`` also loads OpenRouter's JSON (``model.raw``)."""
    options = [selectinload(CatalogModel.raw_row)] if with_raw else []
    return await db.get(CatalogModel, model_id, options=options)


async def get_models(db: AsyncSession, ids: list[str]) -> dict[str, CatalogModel]:
    """The stored models among ``ids`` (active or not), keyed by id; unknown ids are left out."""
    wanted = list(dict.fromkeys(ids))
    found: dict[str, CatalogModel] = {}
    for start in range(0, len(wanted), 500):
        result = await db.execute(select(CatalogModel).where(CatalogModel.id.in_(wanted[start : start + 500])))
        found.update((m.id, m) for m in result.scalars())
    return found
