from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from instant402.config import Settings
from instant402.db import Database
from instant402.db.migrate import current_revision, downgrade, upgrade
from instant402.db.models import metadata
from tests.support import db as testdb

# SQLite only: the catalog's FTS5 text index (migration 0002) and its shadow tables. No model declares them.
SQLITE_SEARCH_TABLES = {f"models_search{suffix}" for suffix in ("", "_data", "_idx", "_docsize", "_config")}


def _declared(name, type_, _parents) -> bool:
    return not (type_ == "table" and name in SQLITE_SEARCH_TABLES)


async def _fresh_database(tmp_path):
    schema = None
    if testdb.backend() == "postgresql":
        schema = testdb.new_schema_name("mig")
        await testdb.create_schema(schema)
    settings = Settings(data_dir=tmp_path, **testdb.database_overrides(tmp_path, schema))
    return Database(settings), schema


async def _tables(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names())) - {"alembic_version"}


async def _declared_tables(db: Database) -> set[str]:
    return await _tables(db) - SQLITE_SEARCH_TABLES


async def _drift(db: Database) -> list:
    async with db.engine.connect() as conn:
        return await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c, opts={"include_name": _declared}), metadata)
        )


async def test_upgrade_from_empty_downgrade_and_again(tmp_path):
    db, schema = await _fresh_database(tmp_path)
    try:
        assert await _tables(db) == set()
        await upgrade(db.engine)
        assert await _declared_tables(db) == set(metadata.tables)
        assert await _drift(db) == [], "models and migrations disagree"
        await downgrade(db.engine, "base")
        assert await _tables(db) == set()
        assert await current_revision(db.engine) is None
        await upgrade(db.engine)
        assert await _declared_tables(db) == set(metadata.tables)
        # One step down and up again, from head.
        head = await current_revision(db.engine)
        await downgrade(db.engine, "-1")
        await upgrade(db.engine)
        assert await current_revision(db.engine) == head
    finally:
        await db.dispose()
        if schema:
            await testdb.drop_schema(schema)
