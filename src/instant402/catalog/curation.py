"""The curated list: well-known models shown first, in the list's order. Changed by CLI or admin API, never SQL."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.catalog.models import CatalogModel, CatalogSyncRun, CuratedModel
from instant402.errors import ApiError, field_error

MAX_ID_LENGTH = 255


@cache
def default_curated_ids() -> tuple[str, ...]:
    """The list the project ships (catalog/curated_default.json)."""
    text = resources.files("instant402.catalog").joinpath("curated_default.json").read_text()
    return tuple(json.loads(text))


async def seed_default_curated(db: AsyncSession) -> bool:
    """Store the shipped list once: on the first successful sync, and only if nobody curated anything yet."""
    if (await db.execute(select(func.count()).select_from(CuratedModel))).scalar_one():
        return False
    done_before = await db.execute(select(CatalogSyncRun.id).where(CatalogSyncRun.status == "ok").limit(1))
    if done_before.first() is not None:
        return False  # an administrator emptied the list on purpose
    db.add_all(CuratedModel(model_id=model_id, position=i) for i, model_id in enumerate(default_curated_ids()))
    await db.flush()
    return True


async def curated_ids(db: AsyncSession) -> list[str]:
    result = await db.execute(select(CuratedModel.model_id).order_by(CuratedModel.position, CuratedModel.model_id))
    return list(result.scalars())


async def list_curated(db: AsyncSession) -> list[tuple[CuratedModel, CatalogModel | None]]:
    """The curated entries in order, each with its catalog model (None when the catalog does not hold it)."""
    result = await db.execute(
        select(CuratedModel, CatalogModel)
        .outerjoin(CatalogModel, CatalogModel.id == CuratedModel.model_id)
        .order_by(CuratedModel.position, CuratedModel.model_id)
    )
    return [(curated, model) for curated, model in result.all()]


def _check_id(model_id: str) -> str:
    model_id = (model_id or "").strip()
    if not model_id or len(model_id) > MAX_ID_LENGTH:
        raise field_error("model_id", f"Give a model id of 1 to {MAX_ID_LENGTH} characters.")
    return model_id


async def add_curated(db: AsyncSession, model_id: str) -> CuratedModel:
    """Append a catalog model to the curated list; commits."""
    model_id = _check_id(model_id)
    model = await db.get(CatalogModel, model_id)
    if model is None:
        raise ApiError(404, "model_not_found", f"The catalog has no model {model_id!r}.", {"model_id": model_id})
    if not model.answers_chat:
        message = (
            f"{model_id} is a {model.modality} model: it cannot answer a chat completion, so no resource can use it."
        )
        raise ApiError(422, "model_not_chat", message, {"model_id": model_id})
    if await db.get(CuratedModel, model_id) is not None:
        raise ApiError(409, "already_curated", f"{model_id} is already in the curated list.", {"model_id": model_id})
    last = (await db.execute(select(func.max(CuratedModel.position)))).scalar_one()
    entry = CuratedModel(model_id=model_id, position=0 if last is None else last + 1)
    db.add(entry)
    await db.commit()
    return entry


async def remove_curated(db: AsyncSession, model_id: str) -> None:
    """Take a model off the curated list; commits."""
    model_id = _check_id(model_id)
    result = await db.execute(delete(CuratedModel).where(CuratedModel.model_id == model_id))
    if result.rowcount == 0:
        raise ApiError(404, "not_curated", f"{model_id} is not in the curated list.", {"model_id": model_id})
    await db.commit()
