"""Drive the server-rendered pages like a browser would: a cookie session, CSRF tokens read from the forms."""

from __future__ import annotations

import re
import secrets
from urllib.parse import urlencode

import httpx

PAYOUT = "0x" + "ab" * 20


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


class WebUser:
    """One visitor with their own cookie jar; ``username`` is None for an anonymous visitor."""

    def __init__(self, app, username: str | None = None):
        transport = httpx.ASGITransport(app=app, client=(f"192.0.2.{secrets.randbelow(250) + 1}", 40000))
        self.http = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        self.username = username

    async def get(self, path: str, **kw) -> httpx.Response:
        return await self.http.get(path, **kw)

    async def csrf(self, page: str = "/") -> str:
        r = await self.http.get(page)
        return csrf_from(r.text)

    async def post(self, path: str, data: dict | list | None = None, page: str | None = None) -> httpx.Response:
        """Post a form with the CSRF token of ``page`` (default: the dashboard, or the sign-up page when anonymous)."""
        token = await self.csrf(page or ("/" if self.username else "/signup"))
        items = list(data.items()) if isinstance(data, dict) else list(data or [])
        body = urlencode([("csrf_token", token), *items])
        return await self.http.post(path, content=body, headers={"content-type": "application/x-www-form-urlencoded"})

    async def api(self, method: str, path: str, **kw) -> httpx.Response:
        """A JSON API call with the session cookie and the page's CSRF header, as the pages' scripts do."""
        headers = {"X-CSRF-Token": await self.csrf("/"), **kw.pop("headers", {})}
        return await self.http.request(method, path, headers=headers, **kw)

    async def close(self) -> None:
        await self.http.aclose()


async def sign_up(app, username: str | None = None, payout: str | None = PAYOUT) -> WebUser:
    username = username or f"w{secrets.token_hex(4)}"
    user = WebUser(app)
    data = {"username": username, "email": f"{username}@example.com", "password": "correct horse battery"}
    if payout:
        data["payout_address"] = payout
    r = await user.post("/signup", data)
    assert r.status_code == 303, r.text
    user.username = username
    return user


def resource_form(**changes) -> list[tuple[str, str]]:
    """The editor's fields for a small text resource with two parameters."""
    fields = {
        "name": "Haiku writer",
        "slug": "",
        "description": "Writes a haiku about a topic.",
        "tags": "poetry, fun",
        "model_id": "openai/gpt-4o-mini",
        "fallback_model_ids": "",
        "system_prompt": "You are a poet.",
        "prompt_template": "Write a {{mood}} haiku about {{topic}}.",
        "temperature": "0.7",
        "top_p": "",
        "max_tokens": "200",
        "output_kind": "text",
        "output_schema": "",
        "price": "0.01",
        "pay_to": "",
    }
    fields.update({k: v for k, v in changes.items() if not k.startswith("params")})
    params = changes.get(
        "params",
        [
            {"name": "topic", "type": "string", "required": "1", "max_length": "200", "description": "What about"},
            {"name": "mood", "type": "enum", "enum": "calm, stormy", "default": "calm", "description": "The mood"},
        ],
    )
    items = list(fields.items())
    for i, p in enumerate(params):
        items += [(f"params-{i}-{k}", v) for k, v in p.items()]
    return items
