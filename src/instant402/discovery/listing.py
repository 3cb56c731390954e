"""The published resources as discovery sees them, read once per catalog version.

Every discovery door (the buyers' OpenAPI, the discovery listing, MCP's tool list) reads the same snapshot: the
published resources with what a buyer needs to call them. The snapshot is rebuilt only when the catalog version
changes (how many resources are published, and the latest change to any of them), so a crawler reading the
documents again and again costs one small aggregate query per request.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import contains_eager

from instant402.accounts.models import User
from instant402.resources.estimate import atomic_to_usd
from instant402.resources.models import Resource
from instant402.resources.schemas import endpoint_url, input_example, input_schema, success_schema
from instant402.runtime import Runtime

TOOL_SEPARATOR = "__"  # usernames and slugs never hold an underscore


def tool_name(creator: str, slug: str) -> str:
    """The stable MCP tool name of ``creator``'s resource ``slug``."""
    return f"{creator}{TOOL_SEPARATOR}{slug}"


def parse_tool_name(name: str) -> tuple[str, str] | None:
    creator, sep, slug = name.partition(TOOL_SEPARATOR)
    return (creator, slug) if sep and creator and slug else None


@dataclass(frozen=True, slots=True)
class Listed:
    """One published resource, as every discovery door shows it."""

    creator: str
    slug: str
    name: str
    description: str
    tags: tuple[str, ...]
    output_kind: str
    price_atomic: int
    url: str
    input_schema: dict[str, Any]
    input_example: dict[str, Any] | None
    success_schema: dict[str, Any]
    updated_at: datetime
    resource: Any = field(repr=False, compare=False)

    @property
    def tool(self) -> str:
        return tool_name(self.creator, self.slug)

    @property
    def price_usd(self) -> str:
        """Decimal USD with 6 decimals (USDC's), e.g. ``0.010000``."""
        return f"{atomic_to_usd(self.price_atomic):.6f}"


@dataclass(slots=True)
class Snapshot:
    version: tuple
    items: list[Listed]
    by_creator: dict[str, list[Listed]]
    derived: dict[str, Any] = field(default_factory=dict)  # documents built from this snapshot, by name

    def scope(self, creator: str | None) -> list[Listed]:
        return self.items if creator is None else self.by_creator.get(creator.lower(), [])


_VERSION = select(func.count(Resource.id), func.max(Resource.updated_at)).where(Resource.status == "published")
_snapshots: weakref.WeakKeyDictionary[Runtime, Snapshot] = weakref.WeakKeyDictionary()
_locks: weakref.WeakKeyDictionary[Runtime, asyncio.Lock] = weakref.WeakKeyDictionary()


async def catalog_version(rt: Runtime) -> tuple:
    async with rt.db.sessions() as db:
        count, latest = (await db.execute(_VERSION)).one()
    return (int(count or 0), latest.isoformat() if latest else None)


async def snapshot(rt: Runtime) -> Snapshot:
    """The published resources, read again only when the catalog version moved."""
    version = await catalog_version(rt)
    current = _snapshots.get(rt)
    if current is not None and current.version == version:
        return current
    lock = _locks.setdefault(rt, asyncio.Lock())
    async with lock:
        current = _snapshots.get(rt)
        if current is None or current.version != version:
            current = _snapshots[rt] = await _load(rt, version)
    return current


async def _load(rt: Runtime, version: tuple) -> Snapshot:
    query = (
        select(Resource)
        .join(Resource.owner)
        .options(contains_eager(Resource.owner))
        .where(Resource.status == "published")
        .order_by(User.username, Resource.slug)
    )
    async with rt.db.sessions() as db:
        resources = list((await db.execute(query)).unique().scalars())
    public_url = rt.settings.public_url
    items = []
    for r in resources:
        creator = r.owner.username
        items.append(
            Listed(
                creator=creator,
                slug=r.slug,
                name=r.name,
                description=r.description or r.name,
                tags=tuple(r.tags or ()),
                output_kind=r.output_kind,
                price_atomic=r.price_atomic,
                url=endpoint_url(public_url, creator, r.slug),
                input_schema=input_schema(r),
                input_example=input_example(r),
                success_schema=success_schema(r),
                updated_at=r.updated_at,
                resource=r,
            )
        )
    by_creator: dict[str, list[Listed]] = {}
    for item in items:
        by_creator.setdefault(item.creator, []).append(item)
    return Snapshot(version, items, by_creator)
