"""aiosqlite without the thread hop for work that cannot wait: quick reads run on the event loop.

aiosqlite runs every sqlite3 call on a thread of its own so that the event loop never blocks, and SQLAlchemy makes
three or four such calls per statement (cursor, execute, fetch, close). Each hop costs ~0.1 ms of CPU, while a read
by key takes a few microseconds. In WAL mode a reader never waits for a writer, so:
- statements marked with ``quick_read`` run on the loop when no write transaction is open, with their fetches;
- opening and closing cursors, and commit/rollback with nothing to end, run on the loop;
- everything that may wait for the write lock or the disk (writes, commits, schema changes) and unmarked reads
  (searches, aggregates: long enough to be worth running beside the loop) keep the thread.
"""

from __future__ import annotations

import sqlite3
from functools import partial
from typing import Any

import aiosqlite

QUICK_READ = "/*quick*/"
_QUICK_PREFIX = "SELECT " + QUICK_READ


def quick_read(statement):
    """Mark a SELECT that reads a few rows by key (a marker comment; harmless on PostgreSQL)."""
    return statement.prefix_with(QUICK_READ)


class LoopReadsConnection(aiosqlite.Connection):
    """An aiosqlite connection that runs calls which cannot block inline (see the module's docstring)."""

    wal = False  # set once the connection is known to be in WAL mode (see engine's connect hook)
    _last_inline = False  # whether the statement being fetched ran inline

    async def _execute(self, fn, *args, **kwargs):
        if self._connection is not None and self._inline(fn, args):
            return fn(*args, **kwargs)
        return await super()._execute(fn, *args, **kwargs)

    def _inline(self, fn, args: tuple) -> bool:
        owner, name = getattr(fn, "__self__", None), getattr(fn, "__name__", "")
        if isinstance(owner, sqlite3.Cursor):
            if name == "execute":
                self._last_inline = (
                    self.wal
                    and not self._connection.in_transaction
                    and isinstance(args[0], str)
                    and args[0].startswith(_QUICK_PREFIX)
                )
                return self._last_inline
            if name.startswith("fetch"):
                return self._last_inline
            return name == "close"
        if owner is self._connection:
            return name == "cursor" or (name in ("commit", "rollback") and not self._connection.in_transaction)
        return False


async def connect(path: str, **kwargs: Any) -> LoopReadsConnection:
    """What SQLAlchemy's ``async_creator`` calls: a started connection with a daemon thread."""
    connection = LoopReadsConnection(partial(sqlite3.connect, path, check_same_thread=False, **kwargs), 64)
    connection._thread.daemon = True  # as SQLAlchemy does for its own aiosqlite connections
    return await connection
