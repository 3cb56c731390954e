"""The discovery doors: ``/openapi.json`` with every published resource, and ``GET /discovery/resources`` in the
x402 facilitator discovery format (the Bazaar listing), paginated and filterable by text and tag."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route

from instant402.discovery import openapi
from instant402.discovery.listing import Listed, Snapshot, snapshot
from instant402.errors import ApiError
from instant402.runtime import Runtime
from instant402.sales import core

MAX_LIMIT = 100
MAX_OFFSET = 1_000_000

router = APIRouter(tags=["discovery"])


def _item(rt: Runtime, gateway: Any, entry: Listed) -> dict[str, Any] | None:
    try:
        quote = core.quote(rt, gateway, entry.resource)
    except ApiError:  # no payout address yet: not payable, not listed
        return None
    public = rt.settings.public_url.rstrip("/")
    return {
        "resource": entry.url,
        "type": "http",
        "x402Version": 2,
        "accepts": [quote.requirements.model_dump(mode="json", by_alias=True, exclude_none=True)],
        "lastUpdated": entry.updated_at.isoformat(),
        "description": entry.description,
        "mimeType": "application/json",
        "serviceName": "instant402",
        "tags": list(entry.tags),
        "extensions": quote.extensions,
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


async def _items(rt: Runtime, snap: Snapshot) -> list[tuple[Listed, dict[str, Any], str]]:
    """Every listed resource with its discovery item and search text, built once per catalog version."""
    found = snap.derived.get("discovery")
    if found is None:
        gateway = await rt.payments()
        found = []
        for entry in snap.items:
            item = _item(rt, gateway, entry)
            if item is not None:
                text = " ".join((entry.name, entry.description, entry.creator, entry.slug, *entry.tags)).lower()
                found.append((entry, item, text))
        snap.derived["discovery"] = found
    return found


@router.get(
    "/discovery/resources",
    summary="Published resources in the x402 discovery (Bazaar) format, paginated, by text and tag",
    responses={422: {"description": "Invalid paging or filter"}},
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
    page = [item for _, item, _ in entries[offset : offset + limit]]
    body = {"x402Version": 2, "items": page, "pagination": {"limit": limit, "offset": offset, "total": len(entries)}}
    return JSONResponse(body)


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
