"""JSON API for resources: thin adapters over ``resources.service``."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts.auth import current_user
from instant402.accounts.models import User
from instant402.config import Settings
from instant402.deps import MAX_INT, Id, StrictId, get_db, get_settings, public_rate_limit
from instant402.resources import service
from instant402.resources.schemas import creator_view, public_view
from instant402.resources.validation import ResourceIn, ResourcePatch

router = APIRouter(prefix="/api/v1", tags=["resources"])


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resource_id: StrictId | None = Field(default=None, description="Preview a saved resource...")
    resource: ResourceIn | None = Field(default=None, description="...or a definition not saved yet.")
    values: dict[str, Any] | None = Field(default=None, description="Sample input; defaults apply when omitted.")


class PauseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=300)


def _saved(saved: service.Saved, settings: Settings) -> dict[str, Any]:
    return {
        **creator_view(saved.resource, settings.public_url),
        "estimate": saved.estimate.as_dict(),
        "warnings": [w.as_dict() for w in saved.warnings],
    }


# --- creator API ---------------------------------------------------------------------------------------------------


@router.get("/me/resources")
async def my_resources(
    user: User = Depends(current_user), db: AsyncSession = Depends(get_db), settings: Settings = Depends(get_settings)
):
    return {"items": [creator_view(r, settings.public_url) for r in await service.list_own(db, user)]}


@router.post("/me/resources", status_code=201)
async def create(
    body: ResourceIn,
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    return _saved(await service.create_resource(db, settings, user, body), settings)


@router.post("/me/resources/preview")
async def preview(
    body: PreviewIn,
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    result = await service.preview(
        db, settings, user, resource_id=body.resource_id, definition=body.resource, values=body.values
    )
    return {
        "messages": result.messages,
        "values": result.values,
        "estimate": result.estimate.as_dict(),
        "warnings": [w.as_dict() for w in result.warnings],
        "input_schema": result.input_schema,
    }


@router.get("/me/resources/{resource_id:int}")  # digits only: /me/resources/preview is another route
async def my_resource(
    resource_id: Id,
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    resource = await service.get_own(db, user, resource_id)
    stats = (await service.stats_for(db, [resource.id])).get(resource.id, service.Stats())
    view = creator_view(resource, settings.public_url)
    view["stats"] = stats.as_dict()
    view["estimate"] = service.estimate_cost(resource, resource.model).as_dict()
    return view


@router.patch("/me/resources/{resource_id:int}")
async def update(
    resource_id: Id,
    body: ResourcePatch,
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    return _saved(await service.update_resource(db, settings, user, resource_id, body), settings)


@router.delete("/me/resources/{resource_id:int}")
async def delete(resource_id: Id, user: User = Depends(current_user), db: AsyncSession = Depends(get_db)):
    outcome = await service.delete_resource(db, user, resource_id)
    if outcome == "deleted":
        return Response(status_code=204)
    return {"status": "archived", "message": "The resource has call history, so it was archived instead."}


@router.post("/me/resources/{resource_id}/publish")
async def publish(
    resource_id: Id,
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    return _saved(await service.publish_resource(db, user, resource_id), settings)


@router.post("/me/resources/{resource_id}/pause")
async def pause(
    resource_id: Id,
    body: PauseIn | None = None,
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    resource = await service.pause_resource(db, user, resource_id, body.reason if body else None)
    return creator_view(resource, settings.public_url)


@router.post("/me/resources/{resource_id}/resume")
async def resume(
    resource_id: Id,
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    return _saved(await service.resume_resource(db, user, resource_id), settings)


# --- public API ----------------------------------------------------------------------------------------------------


@router.get("/resources", dependencies=[Depends(public_rate_limit)])
async def search(
    q: str | None = Query(default=None, max_length=200),
    creator: str | None = Query(default=None, max_length=64),
    model: str | None = Query(default=None, max_length=255),
    modality: Literal["text", "json", "image"] | None = None,
    provider: str | None = Query(default=None, max_length=100),
    min_price: int | None = Query(default=None, ge=0, le=MAX_INT, description="USDC atomic units"),
    max_price: int | None = Query(default=None, ge=0, le=MAX_INT, description="USDC atomic units"),
    sort: service.Sort = "newest",
    page: int = Query(default=1, ge=1, le=10_000),
    per_page: int = Query(default=20, ge=1, le=100),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    found = await service.search_public(
        db,
        q=q,
        creator=creator,
        model=model,
        modality=modality,
        provider=provider,
        min_price=min_price,
        max_price=max_price,
        sort=sort,
        page=page,
        per_page=per_page,
    )
    return {
        "items": [public_view(r, settings.public_url, found.stats.get(r.id, service.Stats())) for r in found.items],
        "total": found.total,
        "page": found.page,
        "per_page": found.per_page,
    }


@router.get("/resources/{creator}/{slug}", dependencies=[Depends(public_rate_limit)])
async def detail(
    creator: str, slug: str, db: AsyncSession = Depends(get_db), settings: Settings = Depends(get_settings)
):
    resource = await service.get_public(db, creator, slug)
    stats = (await service.stats_for(db, [resource.id])).get(resource.id, service.Stats())
    return public_view(resource, settings.public_url, stats)
