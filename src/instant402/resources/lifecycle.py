"""How resources react to events elsewhere: catalog changes, the creator's OpenRouter key, credit and budgets.

The resources domain owns these functions; the catalog sync, the key vault and the execution engine call them inside
their own transaction (they flush, the caller commits). Automatic pauses carry a ``pause_kind`` so that the system
lifts exactly the pauses it set; a creator's manual pause is never lifted automatically.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.catalog.models import CatalogModel
from instant402.db.base import utcnow
from instant402.resources.models import KEY_PAUSE_KINDS, Resource

MODEL_UNAVAILABLE = "model_unavailable"

_KEY_REASONS = {
    "no_key": "No OpenRouter key is saved: add one to resume.",
    "key_invalid": "OpenRouter rejected the saved key: replace it to resume.",
    "out_of_credit": "The OpenRouter key is out of credit: top it up and verify the key to resume.",
}


class _ModelInfo:
    __slots__ = ("expiration_date", "id", "is_active", "name")

    def __init__(self, id: str, name: str, is_active: bool, expiration_date: date | None):
        self.id, self.name, self.is_active, self.expiration_date = id, name, is_active, expiration_date


async def _model_infos(db: AsyncSession, ids: Iterable[str]) -> dict[str, _ModelInfo]:
    # Column query: always fresh, even when the sync updated rows behind the session's back.
    ids = set(ids)
    if not ids:
        return {}
    query = select(CatalogModel.id, CatalogModel.name, CatalogModel.is_active, CatalogModel.expiration_date)
    with db.no_autoflush:  # pending resource changes are committed by the caller, with its own error handling
        rows = await db.execute(query.where(CatalogModel.id.in_(ids)))
    return {r.id: _ModelInfo(r.id, r.name, r.is_active, r.expiration_date) for r in rows}


def _pause(resource: Resource, kind: str, reason: str) -> None:
    resource.status = "paused"
    resource.pause_kind = kind
    resource.paused_reason = reason[:300]
    resource.updated_at = utcnow()


def _unpause(resource: Resource) -> None:
    resource.status = "published"
    resource.pause_kind = None
    resource.paused_reason = None
    resource.updated_at = utcnow()


def apply_model_state(resource: Resource, models: dict[str, _ModelInfo]) -> None:
    """Bring a resource in line with its models: main, else first active fallback, else paused (if it was live)."""
    main = models.get(resource.model_id)
    warnings: list[str] = []
    if main is not None and main.is_active:
        resource.running_on_fallback = None
        running = main
    else:
        running = next(
            (models[f] for f in resource.fallback_model_ids or () if f in models and models[f].is_active), None
        )
        resource.running_on_fallback = running.id if running else None
        if running:
            warnings.append(f"{resource.model_id} is unavailable; calls run on the fallback {running.id}.")
        else:
            warnings.append(f"{resource.model_id} is unavailable and no fallback is available.")
    if running is not None and running.expiration_date is not None:
        warnings.append(f"{running.id} is scheduled to be retired on {running.expiration_date.isoformat()}.")
    resource.model_warning = " ".join(warnings)[:500] or None

    if running is None and resource.status == "published":
        _pause(resource, MODEL_UNAVAILABLE, f"Model unavailable: {resource.model_id} is no longer offered.")
    elif running is not None and resource.status == "paused" and resource.pause_kind == MODEL_UNAVAILABLE:
        _unpause(resource)


async def refresh_model_state(db: AsyncSession, resources: list[Resource]) -> None:
    ids = {r.model_id for r in resources} | {f for r in resources for f in r.fallback_model_ids or ()}
    models = await _model_infos(db, ids)
    for resource in resources:
        apply_model_state(resource, models)


async def on_catalog_changed(
    db: AsyncSession, *, deactivated: list[str], reactivated: list[str], newly_expiring: list[str]
) -> None:
    """Pause resources whose model went away (or move them to a fallback); lift automatic pauses on return."""
    changed = set(deactivated) | set(reactivated) | set(newly_expiring)
    if not changed:
        return
    query = select(Resource).where(
        Resource.status != "archived",
        or_(
            Resource.model_id.in_(changed),
            Resource.running_on_fallback.is_not(None),
            Resource.pause_kind == MODEL_UNAVAILABLE,
            Resource.model_warning.is_not(None),
        ),
    )
    resources = list((await db.execute(query.execution_options(populate_existing=True))).unique().scalars())
    # Fallbacks live in a JSON list, so they are not matched in SQL: a changed fallback only matters to a resource
    # whose main model is gone, and those are selected above through running_on_fallback or the pause kind.
    await refresh_model_state(db, resources)
    await db.flush()


async def pause_creator_resources(db: AsyncSession, user_id: int, kind: str, reason: str) -> int:
    """Pause the creator's published resources for an automatic reason (credit, budget...); return how many."""
    rows = (
        await db.execute(select(Resource).where(Resource.owner_id == user_id, Resource.status == "published"))
    ).unique()
    count = 0
    for resource in rows.scalars():
        _pause(resource, kind, reason)
        count += 1
    await db.flush()
    return count


async def resume_creator_resources(db: AsyncSession, user_id: int, kinds: Iterable[str]) -> int:
    """Lift the creator's automatic pauses of the given kinds; the model check decides where they land."""
    kinds = [k for k in kinds if k != "manual"]
    if not kinds:
        return 0
    query = select(Resource).where(
        Resource.owner_id == user_id, Resource.status == "paused", Resource.pause_kind.in_(kinds)
    )
    resources = list((await db.execute(query)).unique().scalars())
    for resource in resources:
        _unpause(resource)
    # A model that went away meanwhile pauses it again, with that reason.
    await refresh_model_state(db, resources)
    await db.flush()
    return sum(1 for r in resources if r.status == "published")


async def pause_for_missing_key(db: AsyncSession, user_id: int, reason: str | None = None, kind: str = "no_key") -> int:
    """Pause the creator's published resources that need an OpenRouter key; return how many."""
    return await pause_creator_resources(db, user_id, kind, reason or _KEY_REASONS.get(kind, "Key problem."))


async def resume_after_key_fixed(db: AsyncSession, user_id: int) -> int:
    """Lift pauses caused by the key (missing, invalid, out of credit); return how many resumed."""
    return await resume_creator_resources(db, user_id, KEY_PAUSE_KINDS)
