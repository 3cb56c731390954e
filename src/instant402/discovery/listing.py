"""The published resources as discovery sees them, read once per catalog version and kept per resource.

Every discovery door (the buyers' OpenAPI, the discovery listing, MCP's tool list) reads the same snapshot: the
published resources with what a buyer needs to call them. The snapshot is rebuilt only when the catalog version
changes (how many resources are published, the latest change to any of them or their creators), and then only the
resources that changed are read and prepared again (with a pause every few, so a large catalog never holds the event
loop long).
Each entry keeps what the doors built from it (``derived``), so an unchanged resource is never rendered twice.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select

from instant402.accounts.models import User
from instant402.resources.estimate import atomic_to_usd
from instant402.resources.models import CallOwner, Resource, ResourceRow
from instant402.resources.schemas import endpoint_url, input_example, input_schema, success_schema
from instant402.runtime import Runtime

TOOL_SEPARATOR = "__"  # usernames and slugs never hold an underscore


def tool_name(creator: str, slug: str) -> str:
    """The stable MCP tool name of ``creator``'s resource ``slug``."""
    return f"{creator}{TOOL_SEPARATOR}{slug}"


def parse_tool_name(name: str) -> tuple[str, str] | None:
    creator, sep, slug = name.partition(TOOL_SEPARATOR)
    return (creator, slug) if sep and creator and slug else None


@dataclass(slots=True)
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
    stamp: tuple  # what the entry was built from: rebuilt when it changes
    resource: Any = field(repr=False, compare=False)  # a ResourceRow, as the sale core reads it
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # the doors' renderings

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


_resources, _users = Resource.__table__, User.__table__
# A creator's payout address is part of what is listed: their row's changes count too.
_VERSION = (
    select(func.count(_resources.c.id), func.max(_resources.c.updated_at), func.max(_users.c.updated_at))
    .join(_users, _users.c.id == _resources.c.owner_id)
    .where(_resources.c.status == "published")
)
_STAMPS = (
    select(
        _resources.c.id,
        _resources.c.version,
        _resources.c.created_at,
        _resources.c.updated_at,
        _users.c.username,
        _users.c.payout_address,
    )
    .join(_users, _users.c.id == _resources.c.owner_id)
    .where(_resources.c.status == "published")
    .order_by(_users.c.username, _resources.c.slug)
)
_ROWS = (
    select(_resources, _users.c.username.label("owner_username"), _users.c.payout_address)
    .join(_users, _users.c.id == _resources.c.owner_id)
    .where(_resources.c.id.in_(bindparam("ids", expanding=True)))
)
_CHUNK = 200  # rows read, and entries built, between two pauses
_snapshots: weakref.WeakKeyDictionary[Runtime, Snapshot] = weakref.WeakKeyDictionary()
_entries: weakref.WeakKeyDictionary[Runtime, dict[int, Listed]] = weakref.WeakKeyDictionary()
_locks: weakref.WeakKeyDictionary[Runtime, asyncio.Lock] = weakref.WeakKeyDictionary()


async def catalog_version(rt: Runtime) -> tuple:
    async with rt.db.sessions() as db:
        count, latest, owners = (await (await db.connection()).execute(_VERSION)).one()
    return (int(count or 0), latest.isoformat() if latest else None, owners.isoformat() if owners else None)


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
    known = _entries.setdefault(rt, {})
    async with rt.db.sessions() as db:
        conn = await db.connection()
        stamps = [(row[0], tuple(row[1:])) for row in await conn.execute(_STAMPS)]
        changed = [rid for rid, stamp in stamps if rid not in known or known[rid].stamp != stamp]
        for i in range(0, len(changed), _CHUNK):
            rows = (await conn.execute(_ROWS, {"ids": changed[i : i + _CHUNK]})).all()
            for row in rows:
                values = dict(row._mapping)
                owner = CallOwner(values.pop("owner_username"), values.pop("payout_address"))
                entry = _entry(rt, ResourceRow(**values, owner=owner))
                known[entry.resource.id] = entry
            await asyncio.sleep(0)
    items = [known[rid] for rid, _ in stamps if rid in known]
    published = {rid for rid, _ in stamps}
    for rid in [rid for rid in known if rid not in published]:
        del known[rid]
    by_creator: dict[str, list[Listed]] = {}
    for item in items:
        by_creator.setdefault(item.creator, []).append(item)
    return Snapshot(version, items, by_creator)


def _entry(rt: Runtime, r: Any) -> Listed:
    creator = r.owner.username
    return Listed(
        creator=creator,
        slug=r.slug,
        name=r.name,
        description=r.description or r.name,
        tags=tuple(r.tags or ()),
        output_kind=r.output_kind,
        price_atomic=r.price_atomic,
        url=endpoint_url(rt.settings.public_url, creator, r.slug),
        input_schema=input_schema(r),
        input_example=input_example(r),
        success_schema=success_schema(r),
        updated_at=r.updated_at,
        stamp=(r.version, r.created_at, r.updated_at, creator, r.owner.payout_address),
        resource=r,
    )
