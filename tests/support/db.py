"""Which database a test run uses: SQLite by default, PostgreSQL with INSTANT402_TEST_DB=postgresql."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import asyncpg

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def backend() -> str:
    return os.environ.get("INSTANT402_TEST_DB", "sqlite")


def pg_url() -> str:
    return os.environ.get("INSTANT402_TEST_POSTGRES_URL", DEFAULT_PG_URL)


def _raw_pg_dsn() -> str:
    return pg_url().replace("postgresql+asyncpg://", "postgresql://")


def new_schema_name(tag: str = "t") -> str:
    # Each run (and each migration test) gets its own schema, so parallel runs cannot collide.
    return f"{tag}_{os.getpid()}_{secrets.token_hex(4)}"


async def create_schema(name: str) -> None:
    conn = await asyncpg.connect(_raw_pg_dsn())
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()


async def drop_schema(name: str) -> None:
    conn = await asyncpg.connect(_raw_pg_dsn())
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


def database_overrides(tmp: Path, schema: str | None) -> dict:
    """Settings overrides pointing at a fresh database: a new SQLite file or a new PostgreSQL schema."""
    if backend() == "postgresql":
        return {"database_url": pg_url(), "database_schema": schema}
    return {"database_url": f"sqlite+aiosqlite:///{tmp / 'test.db'}"}


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0
