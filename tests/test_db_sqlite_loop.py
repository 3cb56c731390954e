"""Quick statements on SQLite run on the event loop; nothing that waits for the write lock does."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from instant402.config import Mode, Settings
from instant402.db import Database, sqlite_loop
from instant402.db.sqlite_loop import LoopReadsConnection, quick_read, quick_write

metadata = MetaData()
items = Table("items", metadata, Column("id", Integer, primary_key=True), Column("name", String))
QUICK = quick_read(select(items.c.name)).where(items.c.id == bindparam("item_id"))
QUICK_INSERT = quick_write(insert(items))
QUICK_RENAME = quick_write(update(items)).where(items.c.id == bindparam("item_id"))


async def _database(tmp_path) -> Database:
    db = Database(Settings(mode=Mode.test, data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path}/q.db"))
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(insert(items), [{"id": 1, "name": "one"}])
    return db


class CountingQueue:
    def __init__(self, inner):
        self.inner, self.handed_over = inner, []

    def put_nowait(self, item):
        self.handed_over.append(item)
        self.inner.put_nowait(item)

    def functions(self) -> list[str]:
        # aiosqlite hands over partial(fn, *args)
        return [getattr(getattr(function, "func", function), "__name__", "") for _, function in self.handed_over]


class Ticks:
    """Counts turns of the event loop: a loop blocked by a waiting statement stops counting."""

    count = 0

    async def run(self):
        while True:
            self.count += 1
            await asyncio.sleep(0.01)


def _count_handovers(conn) -> CountingQueue:
    driver = _driver(conn)
    driver._tx = queue = CountingQueue(driver._tx)  # what is handed to aiosqlite's thread
    return queue


def _driver(conn) -> LoopReadsConnection:
    return conn.sync_connection.connection.dbapi_connection.driver_connection


async def test_marked_reads_skip_the_thread_and_others_do_not(tmp_path):
    db = await _database(tmp_path)
    try:
        async with db.engine.connect() as conn:
            driver = _driver(conn)
            assert isinstance(driver, LoopReadsConnection) and driver.wal
            driver._tx = queue = CountingQueue(driver._tx)  # what is handed to aiosqlite's thread
            handed_over = queue.handed_over

            assert (await conn.execute(QUICK, {"item_id": 1})).scalar_one() == "one"
            assert handed_over == []  # cursor, execute, fetch and close all ran on the loop

            await conn.execute(select(items.c.name))  # unmarked: a search or an aggregate keeps the thread
            assert len(handed_over) >= 1
            handed_over.clear()
            await conn.execute(insert(items).values(id=2, name="two"))
            assert (await conn.execute(QUICK, {"item_id": 2})).scalar_one() == "two"  # inside a write transaction
            assert len(handed_over) >= 2  # the write and the read in its transaction went to the thread
            await conn.commit()
    finally:
        await db.dispose()


@pytest.mark.parametrize("second_write", [insert(items), QUICK_INSERT], ids=["unmarked", "quick"])
async def test_quick_read_does_not_wait_for_a_writer_and_a_waiting_writer_does_not_block_the_loop(
    tmp_path, second_write
):
    db = await _database(tmp_path)
    try:
        async with db.engine.connect() as writer, db.engine.connect() as other:
            await writer.execute(insert(items).values(id=3, name="three"))  # holds the write lock, uncommitted
            # A reader sees the last committed state at once (WAL), on the loop.
            assert (await other.execute(QUICK, {"item_id": 3})).first() is None

            handed_over = _count_handovers(other).handed_over
            ticks = Ticks()
            ticking = asyncio.create_task(ticks.run())
            second = asyncio.create_task(other.execute(second_write, {"id": 4, "name": "four"}))
            await asyncio.sleep(0.3)
            assert not second.done()  # waiting for the lock, in aiosqlite's thread ...
            assert ticks.count >= 10  # ... while the loop keeps serving
            await writer.commit()
            await asyncio.wait_for(second, 10)
            await other.commit()
            ticking.cancel()
            assert len(handed_over) >= 2  # the statement and its commit went to the thread
            assert (await other.execute(QUICK, {"item_id": 4})).scalar_one() == "four"
    finally:
        await db.dispose()


async def test_a_quick_write_transaction_that_gets_the_lock_runs_on_the_loop(tmp_path):
    db = await _database(tmp_path)
    try:
        async with db.engine.connect() as conn, db.engine.connect() as reader:
            handed_over = _count_handovers(conn).handed_over
            await conn.execute(QUICK_INSERT, {"id": 10, "name": "ten"})
            await conn.execute(QUICK_RENAME, {"item_id": 1, "name": "uno"})
            await conn.execute(insert(items).values(id=11, name="eleven"))  # unmarked, but the lock is already held
            assert (await reader.execute(QUICK, {"item_id": 10})).first() is None  # not committed yet
            await conn.commit()
            assert handed_over == []
            assert (await reader.execute(QUICK, {"item_id": 10})).scalar_one() == "ten"
            assert (await reader.execute(QUICK, {"item_id": 1})).scalar_one() == "uno"
            assert (await reader.execute(QUICK, {"item_id": 11})).scalar_one() == "eleven"
    finally:
        await db.dispose()


async def test_a_failed_quick_write_rolls_back_and_frees_the_lock(tmp_path):
    db = await _database(tmp_path)
    try:
        async with db.engine.connect() as conn, db.engine.connect() as other:
            await conn.execute(QUICK_INSERT, {"id": 30, "name": "thirty"})
            with pytest.raises(IntegrityError):  # the same key again, as a replayed payment claim does
                await conn.execute(QUICK_INSERT, {"id": 30, "name": "again"})
            await conn.rollback()
            assert (await other.execute(QUICK, {"item_id": 30})).first() is None
            await other.execute(QUICK_INSERT, {"id": 31, "name": "thirty-one"})  # the lock is free: no wait
            await other.commit()
            assert (await conn.execute(QUICK, {"item_id": 31})).scalar_one() == "thirty-one"
    finally:
        await db.dispose()


async def test_commits_checkpoint_the_log_on_the_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_loop, "CHECKPOINT_EVERY", 3)
    db = await _database(tmp_path)
    try:
        async with db.engine.connect() as conn:
            queue = _count_handovers(conn)
            for n in range(6):
                await conn.execute(QUICK_INSERT, {"id": 40 + n, "name": "x"})
                await conn.commit()
            assert queue.functions().count("_checkpoint") == 2
            auto = (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar_one()
            assert auto == 0  # SQLite's own checkpoint would run inside a commit, on the loop
    finally:
        await db.dispose()
