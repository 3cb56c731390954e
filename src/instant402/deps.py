"""Request-scoped dependencies shared by every domain's routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from annotated_types import Ge, Le
from fastapi import Request
from pydantic import Strict
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.config import Settings
from instant402.db import Database

# Integers from a request fit the column they are compared with, so a larger number in a path, query or body is a
# 422 from its schema, never an overflow in the database driver. INTEGER columns are 32-bit on PostgreSQL (users,
# resources, tokens); BIGINT ones (prices, notices) are bounded at 2^53 - 1, which every JSON client reads exactly.
MAX_INT32 = 2**31 - 1
MAX_INT = 2**53 - 1
Id = Annotated[int, Ge(1), Le(MAX_INT32)]  # a user, resource or token id in a path or query
StrictId = Annotated[int, Strict(), Ge(1), Le(MAX_INT32)]  # the same in a JSON body: no booleans, no strings
StrictBigId = Annotated[int, Strict(), Ge(1), Le(MAX_INT)]  # a BIGINT id (notices) in a JSON body


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_database(request: Request) -> Database:
    return request.app.state.db


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.db.sessions() as session:
        yield session


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def public_rate_limit(request: Request) -> None:
    """Per-address limit on the public API (the paid route applies its own, with the same limiter)."""
    from instant402.execution.limits import RateLimited

    try:
        await request.app.state.runtime.limits.check_ip(client_ip(request))
    except RateLimited as exc:
        raise exc.to_api_error() from None
