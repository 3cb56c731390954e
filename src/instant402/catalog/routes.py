"""Catalog HTTP API: public browsing and search, admin sync and curation. Thin adapters over the domain functions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts.auth import current_admin
from instant402.catalog import curation
from instant402.catalog.models import CatalogModel, get_model
from instant402.catalog.parse import format_decimal, price_per_million
from instant402.catalog.search import (
    FLAGS,
    MAX_CONTEXT,
    MAX_PAGE,
    MAX_PER_PAGE,
    ModelQuery,
    parse_price_filter,
    provider_exists,
    search_models,
)
from instant402.catalog.sync import recent_runs, sync_catalog
from instant402.deps import get_db, public_rate_limit
from instant402.errors import ApiError, field_error, not_found

router = APIRouter(tags=["catalog"])

_LIST_PARAMS = {
    "q",
    "modality",
    "provider",
    "input_modality",
    *FLAGS,
    "max_prompt_price",
    "max_completion_price",
    "min_context",
    "include_inactive",
    "chat",
    "sort",
    "page",
    "per_page",
}


def _per_million(value) -> str | None:
    return format_decimal(price_per_million(value))


def model_summary(model: CatalogModel | Row, curated: bool | None = None) -> dict[str, Any]:
    """The public view of a model (an ORM object or a search row); prices per 1M tokens as exact decimal strings."""
    data = {
        "id": model.id,
        "canonical_slug": model.canonical_slug,
        "name": model.name,
        "description": model.description,
        "provider": model.provider,
        "provider_name": model.provider_name,
        "modality": model.modality,
        "input_modalities": model.input_modalities,
        "output_modalities": model.output_modalities,
        "context_length": model.context_length,
        "max_completion_tokens": model.max_completion_tokens,
        "pricing": {
            "prompt_per_million": _per_million(model.prompt_price),
            "completion_per_million": _per_million(model.completion_price),
            "image_output_per_million": _per_million(model.image_output_price),
            "request": format_decimal(model.request_price),
            "image": format_decimal(model.image_price),
        },
        "capabilities": {
            "vision": model.supports_vision,
            "tools": model.supports_tools,
            "structured_output": model.supports_structured_output,
            "reasoning": model.supports_reasoning,
            "image_output": model.produces_image,
            "free": model.is_free,
        },
        "supported_parameters": model.supported_parameters,
        "is_moderated": model.is_moderated,
        "created": model.created.isoformat() if model.created else None,
        "expiration_date": model.expiration_date.isoformat() if model.expiration_date else None,
        "is_active": model.is_active,
        "first_seen_at": model.first_seen_at.isoformat(),
        "last_seen_at": model.last_seen_at.isoformat(),
    }
    if curated is not None:
        data["curated"] = curated
    return data


@router.get("/api/v1/models", dependencies=[Depends(public_rate_limit)])
async def list_models(
    request: Request,
    q: str | None = Query(None, description="Words to find in the id, name or description."),
    modality: str | None = Query(None, description="text, image, audio, video, embedding or multimodal."),
    provider: str | None = Query(None, description="Provider id, the part of the model id before '/'."),
    input_modality: str | None = Query(None, description="text, image, audio, video or file."),
    vision: bool | None = None,
    tools: bool | None = None,
    structured_output: bool | None = None,
    reasoning: bool | None = None,
    image_output: bool | None = None,
    free: bool | None = None,
    max_prompt_price: str | None = Query(None, description="Highest prompt price, USD per 1M tokens."),
    max_completion_price: str | None = Query(None, description="Highest completion price, USD per 1M tokens."),
    min_context: int | None = Query(None, ge=0, le=MAX_CONTEXT, description="Smallest context length in tokens."),
    include_inactive: bool = False,
    chat: bool = Query(False, description="Only models that answer chat completions (what a resource can run on)."),
    sort: str = Query("curated", description="curated, name, prompt_price, completion_price, context, newest."),
    page: int = Query(1, ge=1, le=MAX_PAGE),
    per_page: int = Query(20, ge=1, le=MAX_PER_PAGE),
    db: AsyncSession = Depends(get_db),
):
    """Search the catalog. Curated models come first by default."""
    for name in request.query_params:
        if name not in _LIST_PARAMS:
            raise field_error(name, "Unknown parameter.")
    if provider is not None and not await provider_exists(db, provider):
        raise field_error("provider", "Unknown provider.")
    flags = {"vision": vision, "tools": tools, "structured_output": structured_output, "reasoning": reasoning}
    flags |= {"image_output": image_output, "free": free}
    query = ModelQuery(
        q=q,
        modality=modality,
        provider=provider,
        input_modality=input_modality,
        flags={k: v for k, v in flags.items() if v is not None},
        max_prompt_price=parse_price_filter("max_prompt_price", max_prompt_price),
        max_completion_price=parse_price_filter("max_completion_price", max_completion_price),
        min_context=min_context,
        include_inactive=include_inactive,
        chat_only=chat,
        sort=sort,
        page=page,
        per_page=per_page,
    )
    result = await search_models(db, query)
    # Plain JSON values only: JSONResponse skips FastAPI's generic encoder walk, a large share of a request's time.
    return JSONResponse(
        {
            "data": [model_summary(m, m.id in result.curated) for m in result.models],
            "total": result.total,
            "page": result.page,
            "per_page": result.per_page,
            "pages": result.pages,
        }
    )


@router.get("/api/v1/models/{model_id:path}", dependencies=[Depends(public_rate_limit)])
async def show_model(model_id: str, db: AsyncSession = Depends(get_db)):
    """One model, active or not, with OpenRouter's raw description of it."""
    model = await get_model(db, model_id, with_raw=True)
    if model is None:
        raise not_found("model")
    curated_ids = await curation.curated_ids(db)
    return {**model_summary(model, model.id in curated_ids), "raw": model.raw}


# --- admin ----------------------------------------------------------------------------------------------------


class CurateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_id: str = Field(min_length=1, max_length=255)


def _sync_run_view(run) -> dict[str, Any]:
    return {
        "id": run.id,
        "trigger": run.trigger,
        "status": run.status,
        "error": run.error,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "counts": {
            k: getattr(run, k)
            for k in ("fetched", "added", "updated", "price_changes", "deactivated", "reactivated", "newly_expiring")
        },
    }


@router.post("/api/v1/admin/catalog/sync", dependencies=[Depends(current_admin)])
async def admin_sync(request: Request):
    """Sync now from the configured OpenRouter base URL; the report comes back."""
    settings = request.app.state.settings
    report = await sync_catalog(request.app.state.db, settings.openrouter_base_url, trigger="api")
    if report.status == "busy":
        raise ApiError(409, "sync_in_progress", "Another catalog sync is running; try again shortly.")
    if not report.ok:
        raise ApiError(502, "catalog_sync_failed", f"Catalog sync failed: {report.error}", {"report": report.as_dict()})
    return report.as_dict()


@router.get("/api/v1/admin/catalog/sync", dependencies=[Depends(current_admin)])
async def admin_sync_runs(db: AsyncSession = Depends(get_db)):
    """The latest sync reports, newest first."""
    return {"data": [_sync_run_view(run) for run in await recent_runs(db, 20)]}


def _curated_view(entry, model: CatalogModel | None) -> dict[str, Any]:
    return {
        "model_id": entry.model_id,
        "position": entry.position,
        "in_catalog": model is not None,
        "is_active": bool(model and model.is_active),
        "name": model.name if model else None,
    }


@router.get("/api/v1/admin/catalog/curated", dependencies=[Depends(current_admin)])
async def admin_curated(db: AsyncSession = Depends(get_db)):
    return {"data": [_curated_view(entry, model) for entry, model in await curation.list_curated(db)]}


@router.post("/api/v1/admin/catalog/curated", status_code=201, dependencies=[Depends(current_admin)])
async def admin_curate(body: CurateIn, db: AsyncSession = Depends(get_db)):
    entry = await curation.add_curated(db, body.model_id)
    return _curated_view(entry, await get_model(db, entry.model_id))


@router.delete("/api/v1/admin/catalog/curated/{model_id:path}", status_code=204, dependencies=[Depends(current_admin)])
async def admin_uncurate(model_id: str, db: AsyncSession = Depends(get_db)):
    await curation.remove_curated(db, model_id)
    return Response(status_code=204)
