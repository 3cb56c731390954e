from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path

from sqlalchemy import Engine, event, make_url, text
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from instant402.config import Settings
from instant402.db import sqlite_loop

SQLITE_CONNECTIONS = 15  # per process
PING_AFTER_IDLE_SECONDS = 5.0  # PostgreSQL: pooled connections idle this long are pinged before use


def make_private(data_dir: Path, database: Path | None) -> None:
    """The data dir 0700 and the SQLite files 0600, like the master-key file: they hold hidden prompts and session
    hashes. SQLite creates its -wal and -shm files with the database file's mode, so that one is made first."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(data_dir.stat().st_mode & 0o700)  # an older install's 0755 directory too
    if database is None:
        return
    with contextlib.suppress(FileNotFoundError):  # a database outside any existing directory fails at connect, as 503
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{database}{suffix}", 0o600)


def make_engine(settings: Settings) -> AsyncEngine:
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        path = make_url(url).database
        on_disk = bool(path) and path != ":memory:"
        make_private(settings.data_dir, Path(path) if on_disk else None)
        wait_seconds = sqlite_loop.BUSY_TIMEOUT_MS / 1000
        if on_disk:
            # A fixed set of connections (SQLAlchemy's default ceiling, 5 + 10 overflow, all kept open): a call holds
            # one only around its reads and writes, so under load demand swings, and overflow connections would be
            # closed whenever more than 5 sit idle, then reopened (a thread and its pragmas each) moments later.
            engine = create_async_engine(
                url,
                async_creator=partial(sqlite_loop.connect, path, timeout=wait_seconds),
                pool_size=SQLITE_CONNECTIONS,
                max_overflow=0,
            )
        else:
            engine = create_async_engine(url, connect_args={"timeout": wait_seconds})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            driver_conn = dbapi_conn.driver_connection
            if isinstance(driver_conn, sqlite_loop.LoopReadsConnection):
                driver_conn.wal = cur.fetchone()[0] == "wal"  # quick statements may skip the thread only in WAL mode
                # Checkpoints copy the log into the database and fsync it: the connection runs them on its thread.
                cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={sqlite_loop.BUSY_TIMEOUT_MS}")
            # Reads straight from the mapped file, not copied through the page cache: text searches scan ~25% faster.
            cur.execute("PRAGMA mmap_size=268435456")
            cur.close()

        return engine
    connect_args = {}
    if settings.database_schema:
        connect_args["server_settings"] = {"search_path": settings.database_schema}
    engine = create_async_engine(url, pool_size=10, max_overflow=20, connect_args=connect_args)
    _ping_when_idle(engine.sync_engine, PING_AFTER_IDLE_SECONDS)
    return engine


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection before use only when it sat idle ``idle_seconds`` or more (``pool_pre_ping`` pings
    every checkout: a round trip and ~0.25 ms of CPU, twice per owner test run). One used moments ago is alive; if
    the server went away meanwhile, the call fails with a 503 and the pool drops every connection older than that."""

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _used(_dbapi_conn, record) -> None:
        record.info["used_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn, record, _proxy) -> None:
        if time.monotonic() - record.info.get("used_at", 0.0) < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # As pool_pre_ping does: a new connection for this call, and none of the older ones reused.
            raise InvalidatePoolError(f"ping failed: {type(exc).__name__}") from exc


class Database:
    """The engine and session factory of one process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.engine = make_engine(settings)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # PostgreSQL reads in autocommit: no BEGIN before the first statement and no ROLLBACK when the connection goes
        # back to the pool (two round trips, ~0.13 ms of CPU per connection). Each statement still sees a consistent
        # snapshot, as in a READ COMMITTED transaction. SQLite keeps its transactions (see sqlite_loop).
        is_sqlite = self.engine.dialect.name == "sqlite"
        self._reads = self.engine if is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A Core connection for reads of prebuilt statements (see ``transaction``); on PostgreSQL each statement
        commits at once (a rare write on it, such as a token's last-use time, needs no transaction of its own)."""
        return self._reads.connect()

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A Core connection in a transaction, committed on exit (rolled back on an error): for writes of prebuilt
        statements, which need no ORM session (its bookkeeping costs more CPU than the statements)."""
        return self.engine.begin()

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()
