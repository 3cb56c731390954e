"""JSON API for the caller's own OpenRouter key: thin adapters over ``keys.service`` (all /me-scoped)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts.auth import current_user
from instant402.accounts.models import User
from instant402.config import Settings
from instant402.deps import get_db, get_settings
from instant402.keys import service
from instant402.keys.schemas import (
    ActivityOut,
    CheckOut,
    DeleteOut,
    KeyIn,
    KeyOut,
    activity_out,
    check_out,
    key_out,
)
from instant402.keys.vault import Vault

router = APIRouter(prefix="/api/v1/me/openrouter-key", tags=["keys"])


def get_vault(request: Request) -> Vault:
    return request.app.state.vault


@router.get("", response_model=KeyOut)
async def show_key(user: User = Depends(current_user), db: AsyncSession = Depends(get_db)):
    return key_out(await service.get_state(db, user.id))


@router.put("", response_model=CheckOut)
async def save_key(
    body: KeyIn,
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
    vault: Vault = Depends(get_vault),
    settings: Settings = Depends(get_settings),
):
    return check_out(await service.save_key(db, vault, settings, user.id, body.key))


@router.post("/verify", response_model=CheckOut)
async def verify_key(
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
    vault: Vault = Depends(get_vault),
    settings: Settings = Depends(get_settings),
):
    return check_out(await service.verify_saved_key(db, vault, settings, user.id))


@router.delete("", response_model=DeleteOut)
async def delete_key(user: User = Depends(current_user), db: AsyncSession = Depends(get_db)):
    paused = await service.delete_key(db, user.id)
    message = "Key removed."
    if paused:
        message += f" {paused} resource(s) that need it were paused (reason: no OpenRouter key)."
    return DeleteOut(removed=True, paused_resources=paused, message=message)


@router.get("/events", response_model=ActivityOut)
async def key_events(user: User = Depends(current_user), db: AsyncSession = Depends(get_db)):
    return activity_out(await service.key_activity(db, user.id))
