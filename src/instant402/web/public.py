"""Public pages: the resource catalog, a resource's page, and the sandbox wallet's "try it" form.

Every template here receives only ``schemas.public_view`` of a resource, which never holds the system prompt, the
template text or anything about the creator's key.
"""

from __future__ import annotations

import json
import math
import shlex
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession
from x402.mechanisms.evm.constants import PERMIT2_ADDRESS

from instant402.accounts.models import User
from instant402.config import Mode, Settings
from instant402.deps import get_db, get_settings
from instant402.errors import ApiError, not_found
from instant402.resources import service
from instant402.resources.schemas import public_view
from instant402.web.common import page_router, page_user, read_form
from instant402.web.rendering import render

router = page_router()

PER_PAGE = 12
SORTS = {
    "newest": "Newest",
    "most_called": "Most called",
    "price": "Price: low to high",
    "price_desc": "Price: high to low",
}
KINDS = ("text", "json", "image")


def example_value(p: dict[str, Any]) -> Any:
    """A plausible value for a parameter, for snippets and pre-filled forms."""
    if p.get("default") is not None:
        return p["default"]
    kind = p["type"]
    if kind == "enum":
        return (p.get("enum") or [""])[0]
    if kind == "boolean":
        return True
    if kind == "integer":
        return int(p["min"]) if p.get("min") is not None else 1
    if kind == "number":
        return p["min"] if p.get("min") is not None else 1.5
    return f"your {p['name'].replace('_', ' ')}"


def python_snippet(view: dict[str, Any], settings: Settings) -> str:
    example = {p["name"]: example_value(p) for p in view["parameters"]}
    allowed = {"network": view["network"], "asset": settings.asset_address}
    snippet = f'''# pip install "x402[evm,httpx]" eth-account
import asyncio

from eth_account import Account
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner

client = x402Client()
register_exact_evm_client(client, EthAccountSigner(Account.from_key("0x<your private key>")))
# Pay only in the asset this resource asks for.
client.set_spend_controls({{"allowed_assets": [{json.dumps(allowed)}]}})


async def main():
    async with x402HttpxClient(client, timeout=120) as http:
        response = await http.post(
            "{view["endpoint"]}",
            json={json.dumps(example, ensure_ascii=False)},
        )
        print(response.status_code, response.json())


asyncio.run(main())
'''
    if view.get("pricing", {}).get("mode") == "metered":
        snippet = _metered_snippet(snippet)
    return snippet


def _metered_snippet(snippet: str) -> str:
    """A metered resource is paid with x402 ``upto``: the buyer signs the maximum and only the real cost is settled."""
    snippet = snippet.replace(
        "from x402.mechanisms.evm.signers import EthAccountSigner\n",
        "from x402.mechanisms.evm.signers import EthAccountSigner\n"
        "from x402.mechanisms.evm.upto import UptoEvmClientScheme\n",
    )
    return snippet.replace(
        "# Pay only in the asset",
        "# Metered: sign at most the maximum with `upto`; only the real cost is settled. Needs a one-time Permit2\n"
        f"# approval of the token (approve {PERMIT2_ADDRESS} from your account).\n"
        'client.register("eip155:*", UptoEvmClientScheme(EthAccountSigner(Account.from_key("0x<your private key>"))))\n'
        "# Pay only in the asset",
    )


def cli_line(view: dict[str, Any], settings: Settings) -> str:
    parts = ["instant402", "call", f"{view['creator']}/{view['slug']}"]
    for p in view["parameters"]:
        value = example_value(p)
        text = value if isinstance(value, str) else json.dumps(value)
        parts += ["--param", f"{p['name']}={text}"]
    parts += ["--url", settings.public_url.rstrip("/"), "--max-price", view["price"]["usd"]]
    return " ".join(shlex.quote(part) for part in parts)


def public_context(request: Request, view: dict[str, Any], settings: Settings) -> dict[str, Any]:
    return {
        "r": view,
        "snippet": python_snippet(view, settings),
        "cli": cli_line(view, settings),
        "can_try": settings.mode == Mode.sandbox and bool(settings.buyer_private_key) and view["available"],
        "examples": {p["name"]: example_value(p) for p in view["parameters"]},
        "try_values": {},
        "try_errors": {},
        "try_result": None,
    }


def typed_values(parameters: list[dict[str, Any]], form: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """A buyer's form input typed by each parameter's declared type; empty optional fields are left out."""
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for p in parameters:
        name, kind = p["name"], p["type"]
        if kind == "boolean":
            values[name] = bool(form.get(name))
            continue
        raw = form.get(name)
        if not isinstance(raw, str) or raw == "":
            continue
        try:
            if kind == "integer":
                values[name] = int(raw)
            elif kind == "number":
                values[name] = float(raw)
            else:
                values[name] = raw
        except ValueError:
            problems[name] = "Give a whole number." if kind == "integer" else "Give a number."
    return values, problems


# --- pages ---------------------------------------------------------------------------------------------------------


@router.get("/explore")
async def explore(
    request: Request,
    user: User | None = Depends(page_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    params = request.query_params
    q = (params.get("q") or "").strip()[:200]
    kind = params.get("kind") if params.get("kind") in KINDS else None
    sort = params.get("sort") if params.get("sort") in SORTS else "newest"
    try:
        page = max(1, min(10_000, int(params.get("page") or 1)))
    except ValueError:
        page = 1
    found = await service.search_public(db, q=q or None, modality=kind, sort=sort, page=page, per_page=PER_PAGE)
    items = [public_view(r, settings.public_url, found.stats.get(r.id, service.Stats())) for r in found.items]
    base = {k: v for k, v in {"q": q, "kind": kind or "", "sort": sort}.items() if v}
    return render(
        request,
        "explore.html",
        user=user,
        items=items,
        total=found.total,
        page=page,
        pages=max(1, math.ceil(found.total / PER_PAGE)),
        q=q,
        kind=kind,
        sort=sort,
        sorts=SORTS,
        kinds=KINDS,
        link=lambda **c: "/explore?" + urlencode({**base, **c}),
    )


async def _public(db: AsyncSession, settings: Settings, creator: str, slug: str) -> dict[str, Any]:
    resource = await service.get_public(db, creator, slug)
    stats = (await service.stats_for(db, [resource.id])).get(resource.id, service.Stats())
    return public_view(resource, settings.public_url, stats)


@router.get("/r/{creator}/{slug}")
async def resource_page(
    creator: str,
    slug: str,
    request: Request,
    user: User | None = Depends(page_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    view = await _public(db, settings, creator, slug)
    return render(request, "resource_public.html", user=user, **public_context(request, view, settings))


@router.post("/r/{creator}/{slug}/try")
async def try_with_sandbox_wallet(
    creator: str,
    slug: str,
    request: Request,
    user: User | None = Depends(page_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    """Sandbox only: pay the resource's own paid URL with the funded sandbox buyer key, through the SDK client."""
    if settings.mode != Mode.sandbox or not settings.buyer_private_key:
        raise not_found("page")
    form = await read_form(request)
    view = await _public(db, settings, creator, slug)
    await db.commit()  # end the read transaction: the paid call below writes from another request
    context = public_context(request, view, settings)
    values, problems = typed_values(view["parameters"], form)
    context["try_values"] = {k: form.get(k) for k in (p["name"] for p in view["parameters"])}
    if problems:
        context["try_errors"] = problems
        return render(request, "resource_public.html", status_code=422, user=user, **context)
    context["try_result"] = await pay_with_sandbox_wallet(settings, view["endpoint"], values)
    fields = (context["try_result"].get("body") or {}).get("error", {}).get("details", {}).get("fields")
    if isinstance(fields, dict):
        context["try_errors"] = {str(k): str(v) for k, v in fields.items()}
    return render(request, "resource_public.html", user=user, **context)


async def pay_with_sandbox_wallet(settings: Settings, url: str, values: dict[str, Any]) -> dict[str, Any]:
    from instant402.payments.buyer import make_buyer_client, pay_url

    allow = [{"network": settings.network, "asset": settings.asset_address}]
    client = make_buyer_client(settings.buyer_private_key, allow_assets=allow)
    try:
        paid = await pay_url(client, url, json=values, http_timeout=settings.max_timeout_seconds + 30)
    except Exception as exc:  # the SDK refuses to sign (e.g. unfunded wallet): show why, no charge happened
        raise ApiError(502, "sandbox_payment_failed", f"The sandbox wallet could not pay: {exc}") from None
    try:
        body = paid.response.json()
    except ValueError:
        body = {"error": {"message": paid.response.text[:500]}}
    receipt = paid.receipt.model_dump(by_alias=True, exclude_none=True) if paid.receipt else None
    return {"status": paid.response.status_code, "body": body, "receipt": receipt}
