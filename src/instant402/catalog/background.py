"""The catalog's background task: sync at start-up when the catalog is empty, then daily at a fixed UTC time.

The app's lifespan calls ``start_catalog_sync(app)`` after start-up and ``await stop_catalog_sync(app)`` on
shutdown. Several processes may run the task: the database lock lets one sync at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, time, timedelta

from instant402.config import Mode, Settings
from instant402.db.base import utcnow

log = logging.getLogger(__name__)


def parse_schedule(value: str) -> time:
    """ "HH:MM" (24h, UTC) -> time; ValueError otherwise."""
    try:
        hours, minutes = value.strip().split(":")
        return time(int(hours), int(minutes), tzinfo=UTC)
    except (ValueError, AttributeError):
        raise ValueError(f"INSTANT402_CATALOG_SYNC_SCHEDULE must be HH:MM in UTC, not {value!r}") from None


def next_run(now: datetime, at: time) -> datetime:
    """The first moment strictly after ``now`` whose UTC clock reads ``at``."""
    candidate = datetime.combine(now.astimezone(UTC).date(), at.replace(tzinfo=None), tzinfo=UTC)
    if candidate <= now:
        candidate += timedelta(days=1)
    return candidate


def sync_enabled(settings: Settings) -> bool:
    if settings.catalog_sync_enabled is not None:
        return settings.catalog_sync_enabled
    return settings.mode != Mode.test


async def catalog_background_task(app) -> None:
    """Run forever (until cancelled): first sync when the catalog is empty, then one per day."""
    from instant402.catalog.sync import catalog_size, sync_catalog

    settings: Settings = app.state.settings
    database = app.state.db
    at = parse_schedule(settings.catalog_sync_schedule)
    try:
        async with database.session() as db:
            empty = await catalog_size(db, active_only=False) == 0
        if empty:
            report = await sync_catalog(database, settings.openrouter_base_url, trigger="startup")
            log.info("start-up catalog sync: %s %s", report.status, report.error or report.counts())
    except Exception:  # the app must keep serving even when the first sync cannot run
        log.exception("start-up catalog sync failed")
    while True:
        wake = next_run(utcnow(), at)
        await asyncio.sleep(max(0.0, (wake - utcnow()).total_seconds()))
        try:
            report = await sync_catalog(database, settings.openrouter_base_url, trigger="schedule")
            log.info("scheduled catalog sync: %s %s", report.status, report.error or report.counts())
        except Exception:
            log.exception("scheduled catalog sync failed")


def start_catalog_sync(app) -> asyncio.Task | None:
    """Start the task when sync is enabled (fails fast on a bad schedule); keeps it on ``app.state``."""
    settings: Settings = app.state.settings
    if not sync_enabled(settings):
        return None
    parse_schedule(settings.catalog_sync_schedule)
    task = asyncio.create_task(catalog_background_task(app), name="catalog-sync")
    app.state.catalog_sync_task = task
    return task


async def stop_catalog_sync(app) -> None:
    task: asyncio.Task | None = getattr(app.state, "catalog_sync_task", None)
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    app.state.catalog_sync_task = None
