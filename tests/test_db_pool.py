"""PostgreSQL's pool pings a connection before use only after it sat idle: a dead idle connection is replaced
unseen, a dead recently used one fails its call as "unreachable" (a 503) once, and the next call reconnects."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text

from instant402.config import Settings
from instant402.db import Database
from instant402.db import engine as db_engine
from instant402.db.errors import unreachable
from tests.support import db as testdb

pytestmark = pytest.mark.postgres_only

_PID = text("SELECT pg_backend_pid()")


async def _pid(db: Database) -> int:
    async with db.engine.connect() as conn:
        return (await conn.execute(_PID)).scalar_one()


async def _ask_server(query: str, *args):
    """One value, asked on a connection of its own (outside the pool under test)."""
    conn = await asyncpg.connect(testdb.pg_url().replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def _kill(pid: int) -> None:
    assert await _ask_server("SELECT pg_terminate_backend($1)", pid)


@pytest.fixture
def database(tmp_path, monkeypatch):
    def make(idle_seconds: float) -> Database:
        monkeypatch.setattr(db_engine, "PING_AFTER_IDLE_SECONDS", idle_seconds)
        return Database(Settings(data_dir=tmp_path, database_url=testdb.pg_url()))

    return make


async def test_an_idle_dead_connection_is_replaced_before_use(database):
    db = database(0.0)  # every pooled connection counts as idle: pinged before use
    try:
        first = await _pid(db)
        await _kill(first)
        assert await _pid(db) != first  # the ping failed, a new connection answered
    finally:
        await db.dispose()


async def test_a_recently_used_dead_connection_fails_once_as_unreachable(database):
    db = database(3600.0)  # never idle long enough: not pinged
    try:
        first = await _pid(db)
        await _kill(first)
        with pytest.raises(Exception) as failed:
            await _pid(db)
        assert unreachable(failed.value)  # answered 503 by the app
        assert await _pid(db) != first  # the pool reconnects for the next call
    finally:
        await db.dispose()


async def _state(pid: int) -> str:
    return await _ask_server("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)


async def test_reads_on_a_core_connection_run_without_a_transaction(database):
    # Autocommit: no BEGIN before the reads and no ROLLBACK after them (two round trips saved per connection).
    db = database(60.0)
    try:
        async with db.connect() as conn:
            pid = (await conn.execute(_PID)).scalar_one()
            assert await _state(pid) == "idle"
        async with db.transaction() as conn:  # writes keep their transaction
            pid = (await conn.execute(_PID)).scalar_one()
            assert await _state(pid) == "idle in transaction"
    finally:
        await db.dispose()
