"""Scan every text-like column of every table for a string (to prove secrets are not stored in clear)."""

from __future__ import annotations

from sqlalchemy import String, Text, select
from sqlalchemy.types import JSON, LargeBinary, TypeDecorator

from instant402.db.models import metadata


def _texty(column) -> bool:
    t = column.type
    if isinstance(t, TypeDecorator):
        t = t.impl
    return isinstance(t, String | Text | JSON | LargeBinary)


async def database_contains(database, needle: str) -> bool:
    raw = needle.encode()
    async with database.engine.connect() as conn:
        for table in metadata.sorted_tables:
            cols = [c for c in table.columns if _texty(c)]
            if not cols:
                continue
            for row in (await conn.execute(select(*cols))).all():
                for value in row:
                    if value is None:
                        continue
                    if isinstance(value, bytes | bytearray | memoryview):
                        if raw in bytes(value):
                            return True
                    elif needle in str(value):
                        return True
    return False
