"""Catalog sync: fetch OpenRouter's model list, upsert it in bulk, deactivate what went away, report."""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.catalog.curation import seed_default_curated
from instant402.catalog.models import CatalogLock, CatalogModel, CatalogModelRaw, CatalogSyncRun
from instant402.catalog.parse import PRICE_FIELDS, InvalidModel, format_decimal, parse_model, provider_display_names
from instant402.db import Database
from instant402.db.base import utcnow
from instant402.ops import metrics

log = logging.getLogger(__name__)

LOCK_NAME = "sync"
LOCK_LEASE = timedelta(minutes=15)  # a crashed holder blocks syncs for at most this long
FETCH_TIMEOUT = 60.0
CHUNK = 500  # rows per bulk statement: bounded memory and parameter counts
DETAIL_CAP = 1000  # ids kept per list in the report row

_PRICE_COLUMNS = list(PRICE_FIELDS)
_UPDATE_COLUMNS = [c.name for c in CatalogModel.__table__.columns if c.name not in ("id", "first_seen_at")]


class SyncError(Exception):
    """The fetched list cannot be trusted; the catalog is left unchanged."""


@dataclass
class SyncReport:
    status: str  # ok | failed | busy
    trigger: str
    source: str
    run_id: int | None = None
    error: str | None = None
    fetched: int = 0
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    price_changes: list[dict[str, Any]] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)
    reactivated: list[str] = field(default_factory=list)
    newly_expiring: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # entries we could not read (left as they were)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def counts(self) -> dict[str, int]:
        return {
            "fetched": self.fetched,
            "added": len(self.added),
            "updated": len(self.updated),
            "price_changes": len(self.price_changes),
            "deactivated": len(self.deactivated),
            "reactivated": len(self.reactivated),
            "newly_expiring": len(self.newly_expiring),
            "skipped": len(self.skipped),
        }

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("started_at", "finished_at"):
            data[key] = data[key].isoformat() if data[key] else None
        data["counts"] = self.counts()
        return data


def _dialect_insert(db: AsyncSession):
    return postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert


# --- the lock -------------------------------------------------------------------------------------------------


async def _acquire_lock(database: Database, holder: str) -> bool:
    """Take the sync lease if nobody holds an unexpired one; atomic on SQLite (one writer) and PostgreSQL (row lock)."""
    async with database.session() as db:
        insert = _dialect_insert(db)
        await db.execute(insert(CatalogLock).values(name=LOCK_NAME).on_conflict_do_nothing(index_elements=["name"]))
        now = utcnow()
        result = await db.execute(
            update(CatalogLock)
            .where(
                CatalogLock.name == LOCK_NAME,
                or_(CatalogLock.holder.is_(None), CatalogLock.expires_at.is_(None), CatalogLock.expires_at < now),
            )
            .values(holder=holder, expires_at=now + LOCK_LEASE)
            .execution_options(synchronize_session=False)
        )
        await db.commit()
        return result.rowcount == 1


async def _release_lock(database: Database, holder: str) -> None:
    async with database.session() as db:
        await db.execute(
            update(CatalogLock)
            .where(CatalogLock.name == LOCK_NAME, CatalogLock.holder == holder)
            .values(holder=None, expires_at=None)
            .execution_options(synchronize_session=False)
        )
        await db.commit()


# --- fetching -------------------------------------------------------------------------------------------------


async def fetch_models(base_url: str, http: httpx.AsyncClient) -> list[Any]:
    """The raw model objects of ``{base_url}/models?output_modalities=all``; SyncError when untrustworthy."""
    url = base_url.rstrip("/") + "/models"
    try:
        response = await http.get(url, params={"output_modalities": "all"}, timeout=FETCH_TIMEOUT)
    except httpx.HTTPError as exc:
        raise SyncError(f"could not fetch the model list: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise SyncError(f"the model list answered HTTP {response.status_code}")
    try:
        body = json.loads(response.content)
    except ValueError:
        raise SyncError("the model list is not valid JSON (truncated or malformed)") from None
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise SyncError("the model list has no 'data' array")
    models = body["data"]
    total = body.get("total_count")
    if isinstance(total, int) and not isinstance(total, bool) and len(models) < total:
        raise SyncError(f"the model list is truncated: {len(models)} of {total} models")
    if not models:
        raise SyncError("the model list is empty")
    return models


# --- the sync -------------------------------------------------------------------------------------------------


async def sync_catalog(
    database: Database, base_url: str, *, http: httpx.AsyncClient | None = None, trigger: str = "manual"
) -> SyncReport:
    """Fetch and apply the model list once; one at a time across processes. Always returns a report."""
    report = SyncReport(status="running", trigger=trigger, source=base_url[:500], started_at=utcnow())
    holder = secrets.token_hex(16)
    if not await _acquire_lock(database, holder):
        report.status, report.error = "busy", "another catalog sync is running"
        await _record_run(database, report)
        return report
    try:
        report.run_id = await _record_run(database, report)
        try:
            if http is None:
                async with httpx.AsyncClient(follow_redirects=True) as client:
                    raw_models = await fetch_models(base_url, client)
            else:
                raw_models = await fetch_models(base_url, http)
            await _apply(database, raw_models, report)
        except SyncError as exc:
            report.status, report.error = "failed", str(exc)
        except Exception as exc:  # recorded, never half-applied: _apply commits once at its very end
            log.exception("catalog sync failed")
            report.status, report.error = "failed", f"internal error: {type(exc).__name__}"
        if not report.ok:
            report.finished_at = utcnow()
            await _record_run(database, report)
            log.warning("catalog sync failed: %s", report.error)
        metrics.catalog_sync(report.status)
        return report
    finally:
        await _release_lock(database, holder)


async def _record_run(database: Database, report: SyncReport, db: AsyncSession | None = None) -> int:
    """Create or update the report row (inside ``db`` when given, else in its own transaction)."""
    values = {
        "trigger": report.trigger[:16],
        "source": report.source,
        "status": report.status,
        "error": report.error,
        "started_at": report.started_at or utcnow(),
        "finished_at": report.finished_at,
        "fetched": report.fetched,
        "added": len(report.added),
        "updated": len(report.updated),
        "price_changes": len(report.price_changes),
        "deactivated": len(report.deactivated),
        "reactivated": len(report.reactivated),
        "newly_expiring": len(report.newly_expiring),
        "details": {
            key: getattr(report, key)[:DETAIL_CAP]
            for key in ("added", "updated", "price_changes", "deactivated", "reactivated", "newly_expiring", "skipped")
        },
    }
    if db is not None:
        await db.execute(update(CatalogSyncRun).where(CatalogSyncRun.id == report.run_id).values(**values))
        return report.run_id
    async with database.session() as session:
        if report.run_id is None:
            run = CatalogSyncRun(**values)
            session.add(run)
            await session.commit()
            return run.id
        await session.execute(update(CatalogSyncRun).where(CatalogSyncRun.id == report.run_id).values(**values))
        await session.commit()
        return report.run_id


def _price_text(value) -> str | None:
    return format_decimal(value)  # PostgreSQL pads NUMERIC with zeros: normalise


async def _apply(database: Database, raw_models: list[Any], report: SyncReport) -> None:
    names = provider_display_names([m for m in raw_models if isinstance(m, dict)])
    report.fetched = len(raw_models)
    async with database.session() as db:
        if db.get_bind().dialect.name == "postgresql":
            # New rows wait in the trigram index's pending list and join the index in one bulk merge (at the latest
            # in the vacuum after the sync) instead of one index insertion per row.
            await db.execute(text("SET LOCAL gin_pending_list_limit = '256MB'"))
        existing = {
            row.id: row
            for row in await db.execute(
                select(
                    CatalogModel.id,
                    CatalogModel.content_hash,
                    CatalogModel.is_active,
                    CatalogModel.expiration_date,
                    *[getattr(CatalogModel, c) for c in _PRICE_COLUMNS],
                )
            )
        }
        active_before = sum(1 for row in existing.values() if row.is_active)

        seen: set[str] = set()
        readable = 0
        to_write: list[dict[str, Any]] = []
        now = utcnow()
        for index, raw in enumerate(raw_models):
            raw_models[index] = None  # let parsed entries go as we move on: keeps peak memory down
            try:
                values = parse_model(raw, names)
            except InvalidModel as exc:
                model_id = raw.get("id") if isinstance(raw, dict) else None
                if isinstance(model_id, str):
                    seen.add(model_id)  # present but unreadable: keep the stored row as it is
                report.skipped.append(str(exc)[:300])
                continue
            model_id = values["id"]
            if model_id in seen:
                continue
            seen.add(model_id)
            readable += 1
            old = existing.get(model_id)
            if values["expiration_date"] is not None and (old is None or old.expiration_date is None):
                report.newly_expiring.append(model_id)
            if old is None:
                report.added.append(model_id)
            else:
                if not old.is_active:
                    report.reactivated.append(model_id)
                if old.content_hash == values["content_hash"] and old.is_active:
                    continue
                if old.content_hash != values["content_hash"]:
                    report.updated.append(model_id)
                changes = {
                    c: {"old": _price_text(getattr(old, c)), "new": _price_text(values[c])}
                    for c in _PRICE_COLUMNS
                    if getattr(old, c) != values[c]
                }
                if changes:
                    report.price_changes.append({"id": model_id, **changes})
            values.update(is_active=True, first_seen_at=now, last_seen_at=now)
            to_write.append(values)

        if readable == 0:
            raise SyncError("the model list holds no readable model")
        if active_before and len(seen) * 2 < active_before:
            raise SyncError(f"the model list is implausibly small: {len(seen)} models while {active_before} are active")

        insert = _dialect_insert(db)
        statement = insert(CatalogModel.__table__)
        statement = statement.on_conflict_do_update(
            index_elements=["id"],
            set_={column: getattr(statement.excluded, column) for column in _UPDATE_COLUMNS},
        )
        raw_statement = insert(CatalogModelRaw.__table__)
        raw_statement = raw_statement.on_conflict_do_update(
            index_elements=["id"], set_={"raw": raw_statement.excluded.raw}
        )
        for start in range(0, len(to_write), CHUNK):
            chunk = to_write[start : start + CHUNK]
            raws = [{"id": v["id"], "raw": v.pop("raw")} for v in chunk]
            await db.execute(statement, chunk)
            await db.execute(raw_statement, raws)
        del to_write

        report.deactivated = sorted(i for i, row in existing.items() if row.is_active and i not in seen)
        for start in range(0, len(report.deactivated), CHUNK):
            chunk = report.deactivated[start : start + CHUNK]
            await db.execute(
                update(CatalogModel)
                .where(CatalogModel.id.in_(chunk))
                .values(is_active=False)
                .execution_options(synchronize_session=False)
            )
        # Every active row now is one this fetch listed; rows written above already carry ``now``, and writing them
        # twice would double the work (and on PostgreSQL the dead rows).
        await db.execute(
            update(CatalogModel)
            .where(CatalogModel.is_active.is_(True), CatalogModel.last_seen_at < now)
            .values(last_seen_at=now)
            .execution_options(synchronize_session=False)
        )
        await seed_default_curated(db)

        from instant402.resources.lifecycle import on_catalog_changed

        await on_catalog_changed(
            db,
            deactivated=list(report.deactivated),
            reactivated=list(report.reactivated),
            newly_expiring=list(report.newly_expiring),
        )
        report.status, report.finished_at = "ok", utcnow()
        await _record_run(database, report, db)
        await db.commit()
    log.info("catalog sync done: %s", report.counts())
    await _refresh_statistics(database)


async def _refresh_statistics(database: Database) -> None:
    """Fresh planner statistics after a sync, so searches pick the right index from the first request on.

    PostgreSQL also vacuums: a sync rewrites many rows, and counting from an index needs the dead ones gone.
    Best effort: a sync that committed stays a success even if this cannot run.
    """
    postgres = database.engine.dialect.name == "postgresql"
    statements = ["VACUUM (ANALYZE) models"] if postgres else ["ANALYZE models", "ANALYZE catalog_curated"]
    try:
        async with database.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")  # VACUUM refuses transactions
            for statement in statements:
                await conn.execute(text(statement))
    except Exception:
        log.warning("could not refresh catalog statistics after the sync", exc_info=True)


# --- reading reports ------------------------------------------------------------------------------------------


async def catalog_size(db: AsyncSession, *, active_only: bool = True) -> int:
    query = select(func.count()).select_from(CatalogModel)
    if active_only:
        query = query.where(CatalogModel.is_active.is_(True))
    return (await db.execute(query)).scalar_one()


async def recent_runs(db: AsyncSession, limit: int = 10) -> list[CatalogSyncRun]:
    result = await db.execute(select(CatalogSyncRun).order_by(CatalogSyncRun.id.desc()).limit(limit))
    return list(result.scalars())
