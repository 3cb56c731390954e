"""The model browser: search, filters, sort, curated and all tabs, pagination and a detail panel."""

from __future__ import annotations

import math
from datetime import date, timedelta
from urllib.parse import urlencode

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts.models import User
from instant402.catalog import curation
from instant402.catalog.models import get_model
from instant402.catalog.parse import MODALITIES
from instant402.catalog.routes import model_summary
from instant402.catalog.search import (
    FLAGS,
    INPUT_MODALITIES,
    SORTS,
    ModelQuery,
    known_providers,
    parse_price_filter,
    search_models,
)
from instant402.deps import get_db
from instant402.errors import ApiError, field_error
from instant402.web.common import field_errors, page_router, require_user
from instant402.web.rendering import render

router = page_router()

PER_PAGE = 20
EXPIRY_WARNING_DAYS = 30
FLAG_LABELS = {
    "vision": "Vision",
    "tools": "Tools",
    "structured_output": "Structured output",
    "reasoning": "Reasoning",
    "image_output": "Image output",
    "free": "Free",
}
_FILTER_NAMES = ("q", "modality", "provider", "input_modality", "max_prompt_price", "max_completion_price")
_FILTER_NAMES += ("min_context", "sort", *FLAGS)


def expiry_soon(expiration: str | date | None, today: date | None = None) -> bool:
    if expiration is None:
        return False
    day = date.fromisoformat(expiration) if isinstance(expiration, str) else expiration
    return day <= (today or date.today()) + timedelta(days=EXPIRY_WARNING_DAYS)


def _int_or_none(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise field_error(name, "Give a whole number.") from None


def _query(params, page: int) -> ModelQuery:
    return ModelQuery(
        chat_only=bool(params.get("pick")),  # picking for a resource: only models it can run on
        q=params.get("q") or None,
        modality=params.get("modality") or None,
        provider=params.get("provider") or None,
        input_modality=params.get("input_modality") or None,
        flags={name: True for name in FLAGS if params.get(name)},
        max_prompt_price=parse_price_filter("max_prompt_price", params.get("max_prompt_price")),
        max_completion_price=parse_price_filter("max_completion_price", params.get("max_completion_price")),
        min_context=_int_or_none(params.get("min_context"), "min_context"),
        sort=params.get("sort") or "curated",
        page=page,
        per_page=PER_PAGE,
    )


async def _curated_page(db: AsyncSession, q: str, page: int) -> tuple[list[dict], int]:
    """The curated list in its order; only the text search applies to it."""
    terms = q.lower().split()
    models = [
        m
        for _, m in await curation.list_curated(db)
        if m is not None and m.is_active and m.answers_chat and all(t in f"{m.id} {m.name}".lower() for t in terms)
    ]
    start = (page - 1) * PER_PAGE
    return [model_summary(m, True) for m in models[start : start + PER_PAGE]], len(models)


@router.get("/models")
async def models_page(request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)):
    params = request.query_params
    tab = "all" if params.get("tab") == "all" else "curated"
    pick = params.get("pick") or ""
    errors: dict[str, str] = {}
    try:
        page = max(1, _int_or_none(params.get("page"), "page") or 1)
    except ApiError:
        page = 1
    models: list[dict] = []
    total = 0
    if tab == "curated":
        models, total = await _curated_page(db, params.get("q", ""), page)
    else:
        try:
            provider = params.get("provider")
            if provider and provider.lower() not in await known_providers(db):
                raise ApiError(422, "invalid_input", "Unknown provider.", {"fields": {"provider": "Unknown provider."}})
            found = await search_models(db, _query(params, page))
            models, total = [model_summary(m, m.id in found.curated) for m in found.models], found.total
        except ApiError as err:
            errors = field_errors(err)
    detail = None
    if show := params.get("show"):
        model = await get_model(db, show)
        if model is not None:
            curated = model.id in await curation.curated_ids(db)
            detail = model_summary(model, curated)
            detail["expiring_soon"] = expiry_soon(detail["expiration_date"])
    base = {k: params[k] for k in ("tab", "pick", *_FILTER_NAMES) if params.get(k)}

    def link(**changes) -> str:
        query = {**base, **{k: v for k, v in changes.items() if v is not None}}
        return "/models?" + urlencode({k: v for k, v in query.items() if v not in ("", None)})

    pick_target = f"/resources/{pick}/edit" if pick.isdigit() else "/resources/new"
    return render(
        request,
        "models.html",
        user=user,
        tab=tab,
        models=models,
        total=total,
        page=page,
        pages=max(1, math.ceil(total / PER_PAGE)),
        params=params,
        errors=errors,
        detail=detail,
        link=link,
        pick=pick,
        pick_target=pick_target,
        modalities=MODALITIES,
        input_modalities=INPUT_MODALITIES,
        providers=sorted(await known_providers(db)),
        sorts=SORTS,
        flag_labels=FLAG_LABELS,
        expiry_soon=expiry_soon,
    )
