"""``/openapi.json`` and ``/discovery/resources`` with thousands of published resources.

One published resource is made through the API, then cloned in the database (new slugs, one creator per 50) up to
each size. For each size: the first request after a catalog change (snapshot read + document built + serialized)
and then repeated requests (the catalog version query and the kept bytes), over real HTTP (uvicorn, SQLite).
Printed, not asserted.

    .venv/bin/python benchmarks/openapi_bench.py [--sizes 1000,5000]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

import httpx
from sqlalchemy import func, insert, select, update
from tests.support.emulator import running_emulator
from tests.support.market import live_market

from instant402.accounts.models import User
from instant402.catalog.sync import sync_catalog
from instant402.config import Mode, Settings
from instant402.db import Database
from instant402.db.migrate import upgrade
from instant402.devnet import Devnet, build_facilitator
from instant402.resources.models import Resource


async def clone(database: Database, total: int) -> None:
    """Published copies of the first resource up to ``total``, spread over creators of 50 each."""
    async with database.sessions() as db:
        conn = await db.connection()
        template = dict((await conn.execute(select(Resource.__table__).limit(1))).one()._mapping)
        owner = dict((await conn.execute(select(User.__table__).where(User.id == template["owner_id"]))).one()._mapping)
        count = (await conn.execute(select(Resource.__table__.c.id))).all()
        have = len(count)
        owner_id = template["owner_id"]
        rows = []
        for i in range(have, total):
            if i % 50 == 0:
                user = {k: v for k, v in owner.items() if k != "id"}
                user.update(username=f"bench-{i}-{secrets.token_hex(2)}", email=f"bench{i}@example.com")
                owner_id = (await conn.execute(insert(User.__table__).values(user).returning(User.id))).scalar_one()
            row = {k: v for k, v in template.items() if k != "id"}
            row.update(owner_id=owner_id, slug=f"r-{i}", name=f"Resource {i}", tags=["bench", f"t{i % 10}"])
            rows.append(row)
        if rows:
            await conn.execute(insert(Resource.__table__), rows)
        await db.commit()


async def touch(database: Database) -> None:
    """One resource edited: a new version of it, so the catalog version moves."""
    async with database.sessions() as db:
        table = Resource.__table__
        rid = (await db.execute(select(table.c.id).limit(1))).scalar_one()
        await db.execute(
            update(table).where(table.c.id == rid).values(version=table.c.version + 1, updated_at=func.now())
        )
        await db.commit()


def timed_get(http: httpx.Client, path: str, **params) -> tuple[float, int]:
    start = time.perf_counter()
    r = http.get(path, params=params or None)
    r.raise_for_status()
    return (time.perf_counter() - start) * 1000, len(r.content)


async def main(sizes: list[int]) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="openapi-bench-"))
    base = {
        "mode": Mode.test,
        "data_dir": data_dir,
        "public_url": "http://testserver",
        "log_format": "text",
        "database_url": f"sqlite+aiosqlite:///{data_dir}/bench.db",
    }
    db = Database(Settings(**base))
    await upgrade(db.engine)
    await db.dispose()
    devnet = Devnet.start(data_dir=data_dir, buyers=1)
    with running_emulator() as emulator, live_market(base, emulator, devnet, build_facilitator(devnet)) as market:
        database = Database(market.settings)
        await sync_catalog(database, emulator.base_url)
        market.publish(market.seller())
        http = httpx.Client(base_url=market.url, timeout=120)
        for size in sizes:
            await clone(database, size)
            first, length = timed_get(http, "/openapi.json")  # every resource new to this process
            warm = [timed_get(http, "/openapi.json")[0] for _ in range(20)]
            first_listing, _ = timed_get(http, "/discovery/resources", limit=100)
            listing = [timed_get(http, "/discovery/resources", q="resource 12", limit=100)[0] for _ in range(20)]
            await touch(database)
            changed, _ = timed_get(http, "/openapi.json")
            changed_listing, _ = timed_get(http, "/discovery/resources", limit=100)
            print(f"{size} published resources:")
            print(
                f"  /openapi.json           first (all new) {first:8.1f} ms   then median "
                f"{statistics.median(warm):6.1f} ms   ({length / 1e6:.1f} MB)"
            )
            print(
                f"  /discovery/resources    first (all new) {first_listing:8.1f} ms   then median "
                f"{statistics.median(listing):6.1f} ms (text filter, 100 per page)"
            )
            print(
                f"  after one resource changed: /openapi.json {changed:.1f} ms, "
                f"/discovery/resources {changed_listing:.1f} ms"
            )
        http.close()
        await database.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000")
    asyncio.run(main([int(s) for s in parser.parse_args().sizes.split(",")]))
