"""Server-side catalog search: text query, filters, sort, pagination."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from sqlalchemy import Integer, Text, bindparam, cast, column, func, literal_column, select, text, true
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.catalog.models import CatalogModel, CuratedModel
from instant402.catalog.parse import CHAT_MODALITIES, MILLION, MODALITIES
from instant402.errors import field_error

SORTS = ("curated", "name", "prompt_price", "completion_price", "context", "newest")
INPUT_MODALITIES = ("text", "image", "audio", "video", "file")
MAX_QUERY_LENGTH = 200
MAX_TERMS = 10
MAX_PER_PAGE = 100
MAX_CONTEXT = 2**31 - 1  # the column is a (32-bit on PostgreSQL) INTEGER
MAX_PAGE = 100_000  # far past any catalog; keeps the offset within the database's integers
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
    chat_only: bool = False  # only models a resource can run on (see CHAT_MODALITIES)
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
    if query.min_context is not None and not 0 <= query.min_context <= MAX_CONTEXT:
        raise field_error("min_context", "Give a context length of 0 or more tokens (below 2^31).")
    if not 1 <= query.page <= MAX_PAGE:
        raise field_error("page", f"Pages go from 1 to {MAX_PAGE}.")
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


def _text_conditions(query: ModelQuery) -> list:
    return [CatalogModel.search_text.like(f"%{_escape_like(term)}%", escape="\\") for term in _terms(query)]


def _filtered(query: ModelQuery) -> list:
    """Every condition but the text terms (see _text_conditions)."""
    conditions = []
    if not query.include_inactive:
        conditions.append(CatalogModel.is_active == true())  # '=' so PostgreSQL uses the index
    # Provider and modality are written into the SQL, not sent as parameters: their counts differ widely (one
    # provider holds a fifth of the catalog), and PostgreSQL's generic plan for a prepared statement, which cannot
    # see the value, then walks the wrong index. Rendered by SQLAlchemy as escaped literals.
    if query.modality:
        conditions.append(CatalogModel.modality == bindparam(None, query.modality, literal_execute=True))
    if query.chat_only:
        conditions.append(CatalogModel.modality.in_(CHAT_MODALITIES))
    if query.provider:
        conditions.append(CatalogModel.provider == bindparam(None, query.provider.lower(), literal_execute=True))
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


_ROWID = literal_column("rowid")
_TRIGRAM = 3  # the shortest term a trigram index can find


def _text_matches(db: AsyncSession, query: ModelQuery, filters: list, text_conditions: list) -> list:
    """Conditions for a text search, shaped so each database tests the substrings on narrow data.

    PostgreSQL finds them in the trigram index. SQLite takes the candidates from its FTS5 trigram table
    (models_search, see the 0002 migration) and tests the LIKE conditions again on those rows only, so the
    results are exactly those of LIKE. Terms under three characters have no trigram: when every term is that short,
    the substring test runs over the narrow (is_active, search_text) index in a subquery, and only its matches are
    looked up for the other filters.
    """
    if db.get_bind().dialect.name != "sqlite":
        return [*filters, *text_conditions]
    long_terms = [term for term in _terms(query) if len(term) >= _TRIGRAM]
    if long_terms:
        # Each term as an FTS5 string (double quotes doubled); terms side by side must all match.
        match = " ".join('"' + term.replace('"', '""') + '"' for term in long_terms)
        candidates = text("SELECT rowid FROM models_search WHERE models_search MATCH :match").bindparams(match=match)
        candidates = candidates.columns(column("rowid", Integer))
        return [*filters, _ROWID.in_(candidates), *text_conditions]
    active = [] if query.include_inactive else [CatalogModel.is_active == true()]
    narrow = select(_ROWID).select_from(CatalogModel).where(*active, *text_conditions)
    return [*filters, _ROWID.in_(narrow)]


async def _count(db: AsyncSession, conditions: list) -> int:
    return (await db.execute(select(func.count()).select_from(CatalogModel).where(*conditions))).scalar_one()


async def _ordered_ids(db: AsyncSession, conditions: list, order) -> list[str]:
    return list((await db.execute(select(CatalogModel.id).where(*conditions).order_by(*order))).scalars())


async def _rows(db: AsyncSession, ids: list[str]) -> list[Row]:
    """The listing rows of ``ids``, in that order; looked up by primary key."""
    if not ids:
        return []
    found = {row.id: row for row in (await db.execute(select(*LIST_COLUMNS).where(CatalogModel.id.in_(ids)))).all()}
    return [found[i] for i in ids]


async def _page(db: AsyncSession, conditions: list, order, offset: int, limit: int, exclude=()) -> list[Row]:
    """Rows ``offset`` to ``offset + limit`` of the matches in ``order``, leaving out the ids in ``exclude``.

    With a LIMIT the database walks the order's index and stops after one page.
    """
    if limit <= 0:
        return []
    page_conditions = [*conditions, CatalogModel.id.not_in(list(exclude))] if exclude else conditions
    statement = select(*LIST_COLUMNS).where(*page_conditions).order_by(*order).limit(limit).offset(offset)
    return list((await db.execute(statement)).all())


async def search_models(db: AsyncSession, query: ModelQuery) -> ModelPage:
    """One page of matching models plus the total count; 422 when the page is past the end.

    A text search has to test every row's text anyway, so it lists all matching ids in order at once (narrow rows)
    and counts and pages from that list. Other searches count from indexes and fetch one page with a LIMIT.
    """
    validate(query)
    filters, text_conditions = _filtered(query), _text_conditions(query)
    # Text last: SQLite tests conditions in order, so cheap filters spare most rows the substring test.
    conditions = [*filters, *text_conditions]
    order = _NAME_ORDER if query.sort == "curated" else _ORDERS[query.sort]
    ids = None
    if text_conditions:
        ids = await _ordered_ids(db, _text_matches(db, query, filters, text_conditions), order)
        total = len(ids)
    else:
        total = await _count(db, conditions)
    pages = max(1, math.ceil(total / query.per_page))
    if query.page > pages:
        raise field_error("page", f"Page out of range: there are {pages} page(s) of results.")
    offset, limit = (query.page - 1) * query.per_page, query.per_page
    if query.sort != "curated":
        if ids is not None:
            models = await _rows(db, ids[offset : offset + limit])
        else:
            models = await _page(db, conditions, order, offset, limit)
        curated = set()
        if models:
            result = await db.execute(
                select(CuratedModel.model_id).where(CuratedModel.model_id.in_([m.id for m in models]))
            )
            curated = set(result.scalars())
        return ModelPage(models=models, curated=curated, total=total, page=query.page, per_page=query.per_page)

    # The curated matches (a short list) in list order, then every other match by name.
    positions = dict((await db.execute(select(CuratedModel.model_id, CuratedModel.position))).all())
    curated_rows = []
    if positions and ids is not None:
        curated_rows = await _rows(db, [i for i in ids if i in positions])
    elif positions:
        # Looked up by primary key, ordered here: the planner never has to weigh a join against the whole catalog.
        statement = select(*LIST_COLUMNS).where(*conditions, CatalogModel.id.in_(list(positions)))
        curated_rows = list((await db.execute(statement)).all())
    curated_rows.sort(key=lambda r: (positions[r.id], r.name, r.id))
    head = curated_rows[offset : offset + limit]
    curated = {row.id for row in curated_rows}
    rest_offset, rest_limit = max(0, offset - len(curated_rows)), limit - len(head)
    if ids is not None:
        rest_ids = [i for i in ids if i not in curated][rest_offset : rest_offset + max(0, rest_limit)]
        rest = await _rows(db, rest_ids)
    else:
        rest = await _page(db, conditions, _NAME_ORDER, rest_offset, rest_limit, curated)
    return ModelPage(models=head + rest, curated=curated, total=total, page=query.page, per_page=query.per_page)


async def provider_exists(db: AsyncSession, provider: str) -> bool:
    """Whether any stored model (active or not) comes from ``provider``; reads one index entry."""
    statement = select(CatalogModel.id).where(CatalogModel.provider == provider.lower()).limit(1)
    return (await db.execute(statement)).first() is not None


async def known_providers(db: AsyncSession) -> set[str]:
    result = await db.execute(select(CatalogModel.provider).distinct())
    return set(result.scalars())
