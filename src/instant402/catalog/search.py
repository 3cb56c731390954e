"""Server-side catalog search: text query, filters, sort, pagination."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from sqlalchemy import Text, cast, func, select, true
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

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
    models: list[Row]  # LIST_COLUMNS by name: model.id, model.name, ...
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


def _terms(query: ModelQuery) -> list[str]:
    return (query.q or "").lower().split()


def _filtered(query: ModelQuery) -> list:
    conditions = []
    if not query.include_inactive:
        conditions.append(CatalogModel.is_active == true())  # '=' so PostgreSQL uses the index
    if query.modality:
        conditions.append(CatalogModel.modality == query.modality)
    if query.provider:
        conditions.append(CatalogModel.provider == query.provider.lower())
    for name, wanted in (query.flags or {}).items():
        conditions.append(FLAGS[name] == wanted)
    if query.max_prompt_price is not None:
        conditions.append(CatalogModel.prompt_price_micro <= _micro_ceiling(query.max_prompt_price))
    if query.max_completion_price is not None:
        conditions.append(CatalogModel.completion_price_micro <= _micro_ceiling(query.max_completion_price))
    if query.min_context is not None:
        conditions.append(CatalogModel.context_length >= query.min_context)
    if query.input_modality:
        # A JSON list's text holds each element quoted; the value is one of a fixed set, so no escaping is needed.
        conditions.append(cast(CatalogModel.input_modalities, Text).like(f'%"{query.input_modality}"%'))
    # Text last: SQLite tests conditions in order, so cheap filters spare most rows the substring scan.
    # PostgreSQL answers these from the trigram index on search_text.
    for term in _terms(query):
        conditions.append(CatalogModel.search_text.like(f"%{_escape_like(term)}%", escape="\\"))
    return conditions


_NAME_ORDER = (CatalogModel.name, CatalogModel.id)
# NULLS LAST rather than "column IS NULL": PostgreSQL can then walk the column's index and stop after one page.
_ORDERS = {
    "name": _NAME_ORDER,
    "prompt_price": (CatalogModel.prompt_price_micro.asc().nulls_last(), *_NAME_ORDER),
    "completion_price": (CatalogModel.completion_price_micro.asc().nulls_last(), *_NAME_ORDER),
    "context": (CatalogModel.context_length.desc().nulls_last(), *_NAME_ORDER),
    "newest": (CatalogModel.created.desc().nulls_last(), *_NAME_ORDER),
}

# What a listing shows: plain columns, no ORM objects (and never the raw JSON or the search text).
LIST_COLUMNS = [
    column
    for column in CatalogModel.__table__.columns
    if column.name not in ("search_text", "content_hash", "prompt_price_micro", "completion_price_micro")
]


async def _count(db: AsyncSession, conditions: list) -> int:
    return (await db.execute(select(func.count()).select_from(CatalogModel).where(*conditions))).scalar_one()


async def _page(db: AsyncSession, conditions: list, order, offset: int, limit: int, one_pass: bool, exclude=()):
    """Rows ``offset`` to ``offset + limit`` of the matches in ``order`` leaving out the ids in ``exclude`` (which
    the caller knows match), and how many match in all, ``exclude`` included.

    ``one_pass`` counts in the same query (a window count): for text searches, where reading every row is the cost,
    so it is paid once. Otherwise the count and the page are separate, each answered from indexes.
    """
    if limit <= 0:
        return [], await _count(db, conditions)
    page_conditions = [*conditions, CatalogModel.id.not_in(list(exclude))] if exclude else conditions
    columns = [*LIST_COLUMNS, func.count().over().label("match_count")] if one_pass else LIST_COLUMNS
    statement = select(*columns).where(*page_conditions).order_by(*order).limit(limit).offset(offset)
    rows = list((await db.execute(statement)).all())
    if one_pass and rows:
        return rows, rows[0].match_count + len(exclude)
    return rows, await _count(db, conditions)


async def _curated_first(db: AsyncSession, conditions: list, offset: int, limit: int, one_pass: bool):
    """The curated matches (a short list) in list order, then every other match by name."""
    positions = dict((await db.execute(select(CuratedModel.model_id, CuratedModel.position))).all())
    curated = []
    if positions:
        # Looked up by primary key, ordered here: the planner never has to weigh a join against the whole catalog.
        statement = select(*LIST_COLUMNS).where(*conditions, CatalogModel.id.in_(list(positions)))
        curated = sorted((await db.execute(statement)).all(), key=lambda r: (positions[r.id], r.name, r.id))
    head = curated[offset : offset + limit]
    curated_ids = {row.id for row in curated}
    rest_offset = max(0, offset - len(curated))
    rest, total = await _page(db, conditions, _NAME_ORDER, rest_offset, limit - len(head), one_pass, curated_ids)
    return head + rest, total, curated_ids


async def search_models(db: AsyncSession, query: ModelQuery) -> ModelPage:
    """One page of matching models plus the total count; 422 when the page is past the end."""
    validate(query)
    conditions = _filtered(query)
    offset = (query.page - 1) * query.per_page
    one_pass = bool(_terms(query))
    if query.sort == "curated":
        models, total, curated = await _curated_first(db, conditions, offset, query.per_page, one_pass)
    else:
        models, total = await _page(db, conditions, _ORDERS[query.sort], offset, query.per_page, one_pass)
        curated = set()
        if models:
            result = await db.execute(
                select(CuratedModel.model_id).where(CuratedModel.model_id.in_([m.id for m in models]))
            )
            curated = set(result.scalars())
    pages = max(1, math.ceil(total / query.per_page))
    if query.page > pages:
        raise field_error("page", f"Page out of range: there are {pages} page(s) of results.")
    return ModelPage(models=models, curated=curated, total=total, page=query.page, per_page=query.per_page)


async def provider_exists(db: AsyncSession, provider: str) -> bool:
    """Whether any stored model (active or not) comes from ``provider``; reads one index entry."""
    statement = select(CatalogModel.id).where(CatalogModel.provider == provider.lower()).limit(1)
    return (await db.execute(statement)).first() is not None


async def known_providers(db: AsyncSession) -> set[str]:
    result = await db.execute(select(CatalogModel.provider).distinct())
    return set(result.scalars())
