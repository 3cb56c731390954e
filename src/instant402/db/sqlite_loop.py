"""aiosqlite without the thread hop for work that cannot wait: quick statements run on the event loop.

aiosqlite runs every sqlite3 call on a thread of its own so that the event loop never blocks, and SQLAlchemy makes
three or four such calls per statement (cursor, execute, fetch, close). Each hop costs ~0.1 ms of CPU, while a read
or write of a row by key takes a few microseconds. What can block is waiting: for the write lock, or for the disk.
In WAL mode a reader never waits for a writer, and a commit only appends to the log (synchronous=NORMAL: no fsync),
so:
- statements marked with ``quick_read`` run on the loop when no write transaction is open, with their fetches;
- a transaction whose first statement is marked with ``quick_write`` takes the write lock with ``BEGIN IMMEDIATE``
  without waiting (busy_timeout 0); when it gets the lock, that statement, the rest of the transaction and its
  commit run on the loop (nothing in it can wait any more); when another writer holds the lock, the statement goes
  to the thread and waits there as usual;
- opening and closing cursors, and commit/rollback with nothing to end, run on the loop;
- everything else (other writes and commits, schema changes, unmarked reads such as searches and aggregates) keeps
  the thread.
Checkpoints are the one slow part of a commit (they copy the log into the database and fsync it), so the connections
turn automatic checkpoints off and every ``CHECKPOINT_EVERY``-th commit runs a passive checkpoint on the thread.
"""

from __future__ import annotations

import sqlite3
from functools import partial
from typing import Any

import aiosqlite

QUICK = "/*quick*/"
_QUICK_READ = "SELECT " + QUICK
_QUICK_WRITES = ("INSERT " + QUICK, "UPDATE " + QUICK, "DELETE " + QUICK)
BUSY_TIMEOUT_MS = 30_000  # how long a statement on the thread waits for the write lock
CHECKPOINT_EVERY = 100  # commits per passive checkpoint (SQLite's own default is every 1,000 pages of log)


def quick_read(statement):
    """Mark a SELECT that reads a few rows by key (a marker comment; harmless on PostgreSQL)."""
    return statement.prefix_with(QUICK)


def quick_write(statement):
    """Mark an INSERT, UPDATE or DELETE of a few rows by key that may start its transaction on the event loop."""
    return statement.prefix_with(QUICK)


class LoopReadsConnection(aiosqlite.Connection):
    """An aiosqlite connection that runs calls which cannot block inline (see the module's docstring)."""

    wal = False  # set once the connection is known to be in WAL mode (see engine's connect hook)
    _last_inline = False  # whether the statement being fetched ran inline
    _locked_inline = False  # whether this connection's open transaction took the write lock on the loop
    _commits = 0  # commits since the last checkpoint, in this process

    async def _execute(self, fn, *args, **kwargs):
        if self._connection is None:
            return await super()._execute(fn, *args, **kwargs)
        ends = getattr(fn, "__self__", None) is self._connection and fn.__name__ in ("commit", "rollback")
        if not ends:
            if self._inline(fn, args):
                return fn(*args, **kwargs)
            return await super()._execute(fn, *args, **kwargs)
        inline = self._locked_inline or not self._connection.in_transaction
        self._locked_inline = False
        result = fn(*args, **kwargs) if inline else await super()._execute(fn, *args, **kwargs)
        if fn.__name__ == "commit" and self.wal:
            LoopReadsConnection._commits += 1
            if LoopReadsConnection._commits >= CHECKPOINT_EVERY:
                LoopReadsConnection._commits = 0
                await super()._execute(_checkpoint, self._connection)
        return result

    def _inline(self, fn, args: tuple) -> bool:
        owner, name = getattr(fn, "__self__", None), getattr(fn, "__name__", "")
        if isinstance(owner, sqlite3.Cursor):
            if name == "execute":
                self._last_inline = self._statement_inline(args[0] if isinstance(args[0], str) else "")
                return self._last_inline
            if name.startswith("fetch"):
                return self._last_inline
            return name == "close"
        return owner is self._connection and name == "cursor"

    def _statement_inline(self, sql: str) -> bool:
        if self._connection.in_transaction:
            return self._locked_inline  # holding the write lock: nothing in this transaction waits
        if not self.wal:
            return False
        if sql.startswith(_QUICK_READ):
            return True
        return sql.startswith(_QUICK_WRITES) and self._lock_without_waiting()

    def _lock_without_waiting(self) -> bool:
        conn = self._connection
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # "database is locked": another writer has it, wait on the thread
            return False
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._locked_inline = True
        return True


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


async def connect(path: str, **kwargs: Any) -> LoopReadsConnection:
    """What SQLAlchemy's ``async_creator`` calls: a started connection with a daemon thread."""
    connection = LoopReadsConnection(partial(sqlite3.connect, path, check_same_thread=False, **kwargs), 64)
    connection._thread.daemon = True  # as SQLAlchemy does for its own aiosqlite connections
    return await connection
