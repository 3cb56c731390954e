"""HTTP routes of the execution domain: generated media, job status, the creator's limits and notices."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts.auth import current_user
from instant402.accounts.models import User
from instant402.deps import StrictBigId, get_db
from instant402.errors import not_found
from instant402.execution import budgets, jobs, notify
from instant402.execution.media import EXTENSIONS, LocalMediaStore, MediaStore, local_media_store, parse_media_name
from instant402.execution.models import Notification

router = APIRouter(tags=["execution"])

IMMUTABLE = "public, max-age=31536000, immutable"


def media_store(request: Request) -> MediaStore:
    """The app's media store (``app.state.media_store``), created on first use from the settings."""
    store = getattr(request.app.state, "media_store", None)
    if store is None:
        store = local_media_store(request.app.state.settings)
        request.app.state.media_store = store
    return store


@router.get("/media/{name}", include_in_schema=False)
async def get_media(name: str, request: Request) -> Response:
    parsed = parse_media_name(name)
    if parsed is None:
        raise not_found("media")
    sha, ext = parsed
    store = media_store(request)
    headers = {"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"}
    if isinstance(store, LocalMediaStore):
        path = store.path(sha, ext)
        if not path.is_file():
            raise not_found("media")
        return FileResponse(path, media_type=EXTENSIONS[ext], headers=headers)
    data = await store.get(sha, ext)
    if data is None:
        raise not_found("media")
    return Response(data, media_type=EXTENSIONS[ext], headers=headers)


@router.get("/jobs/{token}", tags=["jobs"], summary="A long run's state, and its result and receipt when done")
async def get_job(token: str, request: Request):
    body, headers = await jobs.job_status(request.app.state.runtime, token)
    return JSONResponse(body, headers=headers)


# --- the creator's cost limits and notices ------------------------------------------------------------------------


class LimitsPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    per_call_cap_usd: str | None = Field(None, description="USD decimal; null: each resource's own price")
    daily_budget_usd: str | None = Field(None, description="USD decimal; null: no daily budget")
    webhook_url: str | None = Field(None, description="http(s) URL notified of pauses and refusals; null: none")


class ReadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[StrictBigId] | None = Field(None, max_length=500, description="Notices to mark read; null: all of them")


@router.get("/api/v1/me/limits", tags=["limits"], summary="Your per-call cost cap, daily budget and webhook")
async def get_limits(request: Request, user: User = Depends(current_user), db: AsyncSession = Depends(get_db)):
    return await budgets.limits_out(db, user.id)


@router.patch("/api/v1/me/limits", tags=["limits"], summary="Change your per-call cap, daily budget or webhook")
async def patch_limits(
    body: LimitsPatch, request: Request, user: User = Depends(current_user), db: AsyncSession = Depends(get_db)
):
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    await budgets.update_limits(request.app.state.runtime, db, user.id, changes)
    return await budgets.limits_out(db, user.id)


def _notice_out(row: Notification) -> dict:
    return {
        "id": row.id,
        "kind": row.kind,
        "message": row.message,
        "details": row.details,
        "created_at": row.created_at,
        "read": row.read_at is not None,
    }


@router.get("/api/v1/me/notifications", tags=["limits"], summary="Your notices: pauses, refusals, budget")
async def get_notifications(
    unread: bool = Query(False, description="Only notices not yet marked read"),
    limit: int = Query(50, ge=1, le=200),
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
):
    rows = await notify.list_notifications(db, user.id, unread_only=unread, limit=limit)
    return {"items": [_notice_out(r) for r in rows]}


@router.post("/api/v1/me/notifications/read", tags=["limits"], summary="Mark notices read (all when no ids)")
async def read_notifications(
    body: ReadBody | None = None, user: User = Depends(current_user), db: AsyncSession = Depends(get_db)
):
    return {"marked": await notify.mark_read(db, user.id, body.ids if body else None)}
