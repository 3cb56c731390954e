"""Server-side catalog search: text query, filters, sort, pagination."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from sqlalchemy import Select, Text, and_, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer, raiseload

from instant402.catalog.models import CatalogModel, CuratedModel
from instant402.catalog.parse import MILLION, MODALITIES
from instant402.errors import field_error

SORTS = ("curated", "name", "prompt_price", "completion_price", "context", "newest")
INPUT_MODALITIES = ("text", "image", "audio", "video", "file")
MAX_QUERY_LENGTH = 200
MAX_TERMS = 10
MAX_PER_PAGE = 100
MAX_PRICE_PER_MILLION = Decimal(1_000_000)  # USD per 1M tokens; beyond this a filter is a typo

# Capability flag name in the API -> column.
FLAGS = {
    "vision": CatalogModel.supports_vision,
    "tools": CatalogModel.supports_tools,
    "structured_output": CatalogModel.supports_structured_output,
    "reasoning": CatalogModel.supports_reasoning,
    "image_output": CatalogModel.produces_image,
    "free": CatalogModel.is_free,
}


@dataclass
class ModelQuery:
    q: str | None = None
    modality: str | None = None
    provider: str | None = None
    input_modality: str | None = None
    flags: dict[str, bool] | None = None
    max_prompt_price: Decimal | None = None  # USD per 1M tokens
    max_completion_price: Decimal | None = None
    min_context: int | None = None
    include_inactive: bool = False
    sort: str = "curated"
    page: int = 1
    per_page: int = 20


@dataclass
class ModelPage:
    models: list[CatalogModel]
    curated: set[str]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


def parse_price_filter(name: str, value: str | None) -> Decimal | None:
    """A maximum price per 1M tokens given as a decimal string; 422 naming ``name`` when unusable."""
    if value is None or value == "":
        return None
    try:
        price = Decimal(value.strip())
    except InvalidOperation:
        raise field_error(name, "Give a decimal number of USD per 1M tokens, e.g. 2.5.") from None
    if not price.is_finite():
        raise field_error(name, "Give a finite decimal number.")
    if price < 0:
        raise field_error(name, "A price cannot be negative.")
    if price > MAX_PRICE_PER_MILLION:
        raise field_error(name, f"At most {MAX_PRICE_PER_MILLION} USD per 1M tokens.")
    return price


def validate(query: ModelQuery) -> ModelQuery:
    """Check every field; raises a 422 naming the first bad parameter."""
    if query.q is not None:
        query.q = query.q.strip()
        if len(query.q) > MAX_QUERY_LENGTH:
            raise field_error("q", f"At most {MAX_QUERY_LENGTH} characters.")
        if len(query.q.split()) > MAX_TERMS:
            raise field_error("q", f"At most {MAX_TERMS} words.")
    if query.modality is not None and query.modality not in MODALITIES:
        raise field_error("modality", f"Unknown modality; use one of: {', '.join(MODALITIES)}.")
    if query.input_modality is not None and query.input_modality not in INPUT_MODALITIES:
        raise field_error("input_modality", f"Unknown input modality; use one of: {', '.join(INPUT_MODALITIES)}.")
    if query.sort not in SORTS:
        raise field_error("sort", f"Unknown sort; use one of: {', '.join(SORTS)}.")
    if query.min_context is not None and query.min_context < 0:
        raise field_error("min_context", "Give a context length of 0 or more tokens.")
    if query.page < 1:
        raise field_error("page", "Pages start at 1.")
    if not 1 <= query.per_page <= MAX_PER_PAGE:
        raise field_error("per_page", f"Give 1 to {MAX_PER_PAGE} models per page.")
    return query


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _micro_ceiling(price_per_million: Decimal) -> int:
    # Stored mirrors are micro-USD per 1M tokens rounded up; compare against the floor of the limit.
    return math.floor(price_per_million * MILLION)


def _filtered(query: ModelQuery) -> list:
    conditions = []
    if not query.include_inactive:
        conditions.append(CatalogModel.is_active.is_(True))
    for term in (query.q or "").lower().split():
        conditions.append(CatalogModel.search_text.like(f"%{_escape_like(term)}%", escape="\\"))
    if query.modality:
        conditions.append(CatalogModel.modality == query.modality)
    if query.provider:
        conditions.append(CatalogModel.provider == query.provider.lower())
    if query.input_modality:
        # A JSON list's text holds each element quoted; the value is one of a fixed set, so no escaping is needed.
        conditions.append(cast(CatalogModel.input_modalities, Text).like(f'%"{query.input_modality}"%'))
    for name, wanted in (query.flags or {}).items():
        conditions.append(FLAGS[name].is_(wanted))
    if query.max_prompt_price is not None:
        conditions.append(CatalogModel.prompt_price_micro <= _micro_ceiling(query.max_prompt_price))
    if query.max_completion_price is not None:
        conditions.append(CatalogModel.completion_price_micro <= _micro_ceiling(query.max_completion_price))
    if query.min_context is not None:
        conditions.append(CatalogModel.context_length >= query.min_context)
    return conditions


def _ordered(statement: Select, sort: str) -> Select:
    name_order = (CatalogModel.name, CatalogModel.id)
    if sort == "curated":
        statement = statement.outerjoin(CuratedModel, CuratedModel.model_id == CatalogModel.id)
        return statement.order_by(CuratedModel.position.is_(None), CuratedModel.position, *name_order)
    if sort == "name":
        return statement.order_by(*name_order)
    if sort == "prompt_price":
        column = CatalogModel.prompt_price_micro
        return statement.order_by(column.is_(None), column, *name_order)
    if sort == "completion_price":
        column = CatalogModel.completion_price_micro
        return statement.order_by(column.is_(None), column, *name_order)
    if sort == "context":
        column = CatalogModel.context_length
        return statement.order_by(column.is_(None), column.desc(), *name_order)
    # newest
    return statement.order_by(CatalogModel.created.is_(None), CatalogModel.created.desc(), *name_order)


async def search_models(db: AsyncSession, query: ModelQuery) -> ModelPage:
    """One page of matching models plus the total count; 422 when the page is past the end."""
    validate(query)
    conditions = _filtered(query)
    where = and_(*conditions) if conditions else None
    count = select(func.count()).select_from(CatalogModel)
    if where is not None:
        count = count.where(where)
    total = (await db.execute(count)).scalar_one()
    pages = max(1, math.ceil(total / query.per_page))
    if query.page > pages:
        raise field_error("page", f"Page out of range: there are {pages} page(s) of results.")

    # Lists never show the raw JSON: leave the biggest columns on the server.
    statement = select(CatalogModel).options(
        raiseload(CatalogModel.raw_row), defer(CatalogModel.search_text, raiseload=True)
    )
    if where is not None:
        statement = statement.where(where)
    statement = _ordered(statement, query.sort).limit(query.per_page).offset((query.page - 1) * query.per_page)
    models = list((await db.execute(statement)).scalars())
    curated = set()
    if models:
        result = await db.execute(
            select(CuratedModel.model_id).where(CuratedModel.model_id.in_([m.id for m in models]))
        )
        curated = set(result.scalars())
    return ModelPage(models=models, curated=curated, total=total, page=query.page, per_page=query.per_page)


async def known_providers(db: AsyncSession) -> set[str]:
    result = await db.execute(select(CatalogModel.provider).distinct())
    return set(result.scalars())
