"""Quick reads on SQLite run on the event loop; writes still wait for the write lock off the loop."""

from __future__ import annotations

import asyncio

from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select

from instant402.config import Mode, Settings
from instant402.db import Database
from instant402.db.sqlite_loop import LoopReadsConnection, quick_read

metadata = MetaData()
items = Table("items", metadata, Column("id", Integer, primary_key=True), Column("name", String))
QUICK = quick_read(select(items.c.name)).where(items.c.id == bindparam("item_id"))


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


async def test_quick_read_does_not_wait_for_a_writer_and_a_waiting_writer_does_not_block_the_loop(tmp_path):
    db = await _database(tmp_path)
    try:
        async with db.engine.connect() as writer, db.engine.connect() as other:
            await writer.execute(insert(items).values(id=3, name="three"))  # holds the write lock, uncommitted
            # A reader sees the last committed state at once (WAL), on the loop.
            assert (await other.execute(QUICK, {"item_id": 3})).first() is None

            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticking = asyncio.create_task(ticker())
            second = asyncio.create_task(other.execute(insert(items).values(id=4, name="four")))
            await asyncio.sleep(0.3)
            assert not second.done()  # waiting for the lock, in aiosqlite's thread ...
            assert ticks >= 10  # ... while the loop keeps serving
            await writer.commit()
            await asyncio.wait_for(second, 10)
            await other.commit()
            ticking.cancel()
            assert (await other.execute(QUICK, {"item_id": 4})).scalar_one() == "four"
    finally:
        await db.dispose()
