"""The discovery doors: ``/openapi.json`` with every published resource, and ``GET /discovery/resources`` in the
x402 facilitator discovery format (the Bazaar listing), paginated and filterable by text and tag."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import Response
from starlette.routing import Route

from instant402.discovery import bazaar, openapi
from instant402.discovery.listing import Listed, Snapshot, snapshot
from instant402.payments.gateway import SERVICE_NAME
from instant402.runtime import Runtime
from instant402.sales import core

MAX_LIMIT = 100
MAX_OFFSET = 1_000_000

router = APIRouter(tags=["discovery"])


def _item(rt: Runtime, gateway: Any, entry: Listed) -> dict[str, Any] | None:
    r = entry.resource
    pay_to = r.pay_to or r.owner.payout_address
    if not pay_to:  # not payable yet: not listed
        return None
    # The quote's requirements and extension (not ``core.quote``: the listing needs no 402 answer, and a catalog of
    # thousands would only push the paid route's own quotes out of their cache).
    timeout = core.payment_timeout_seconds(r, rt.settings.max_timeout_seconds)
    requirements = gateway.requirements(r.price_atomic, pay_to, timeout)
    public = rt.settings.public_url.rstrip("/")
    return {
        "resource": entry.url,
        "type": "http",
        "x402Version": 2,
        "accepts": [requirements.model_dump(mode="json", by_alias=True, exclude_none=True)],
        "lastUpdated": entry.updated_at.isoformat(),
        "description": entry.description,
        "mimeType": "application/json",
        "serviceName": SERVICE_NAME,
        "tags": list(entry.tags),
        "extensions": bazaar.http_extension(r),
        "metadata": {
            "name": entry.name,
            "creator": entry.creator,
            "slug": entry.slug,
            "outputKind": entry.output_kind,
            "price": {"currency": "USD", "amount": entry.price_usd},
            "mcp": {"url": f"{public}/mcp", "tool": entry.tool},
            "openapi": f"{public}/openapi.json",
        },
    }


async def _items(rt: Runtime, snap: Snapshot) -> list[tuple[Listed, bytes, str]]:
    """Every payable listed resource with its discovery item (serialized once per resource version) and its search
    text, once per catalog version."""
    found = snap.derived.get("discovery")
    if found is None:
        found = []
        for n, entry in enumerate(snap.items):
            rendered = entry.derived.get("discovery")
            if rendered is None:
                # The requirements need the facilitator's answer: 503 payments_unavailable while it is unreachable.
                item = _item(rt, await rt.payments(), entry)
                text = " ".join((entry.name, entry.description, entry.creator, entry.slug, *entry.tags)).lower()
                rendered = entry.derived["discovery"] = (None if item is None else json.dumps(item).encode(), text)
                if n % 100 == 99:
                    await asyncio.sleep(0)  # a large catalog's first listing lets other requests through
            if rendered[0] is not None:
                found.append((entry, *rendered))
        snap.derived["discovery"] = found
    return found


@router.get(
    "/discovery/resources",
    summary="Published resources in the x402 discovery (Bazaar) format, paginated, by text and tag",
    responses={503: {"description": "Payments are unavailable (the facilitator cannot be reached)"}},
)
async def discovery_resources(
    request: Request,
    q: str | None = Query(default=None, max_length=200, description="Words in the name, description or tags"),
    tag: str | None = Query(default=None, max_length=64),
    type: str | None = Query(default=None, max_length=16, description="Only `http` resources are listed here"),
    limit: int = Query(default=20, ge=1, le=MAX_LIMIT),
    offset: int = Query(default=0, ge=0, le=MAX_OFFSET),
):
    rt = request.app.state.runtime
    entries = await _items(rt, await snapshot(rt))
    if type is not None and type != "http":
        entries = []
    if tag:
        wanted = tag.strip().lower()
        entries = [e for e in entries if wanted in (t.lower() for t in e[0].tags)]
    if q and q.strip():
        words = q.lower().split()
        entries = [e for e in entries if all(w in e[2] for w in words)]
    page = b",".join(item for _, item, _ in entries[offset : offset + limit])
    pagination = json.dumps({"limit": limit, "offset": offset, "total": len(entries)}).encode()
    content = b'{"x402Version":2,"items":[' + page + b'],"pagination":' + pagination + b"}"
    return Response(content, media_type="application/json")


def install(app: FastAPI) -> None:
    """Add the listing, and serve ``/openapi.json`` as the buyers' document (FastAPI's own, plus the resources)."""
    app.include_router(router)
    url = app.openapi_url
    if not url:
        return

    async def buyers_openapi(request: Request) -> Response:
        rt = request.app.state.runtime
        content = openapi.serialized(app.openapi(), await snapshot(rt))
        return Response(content, media_type="application/json")

    routes = app.router.routes
    for i, route in enumerate(routes):
        if isinstance(route, Route) and route.path == url:
            routes[i] = Route(url, buyers_openapi, methods=["GET", "HEAD"], include_in_schema=False)
            return
