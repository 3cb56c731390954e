"""A live marketplace for end-to-end tests: the real app under uvicorn, the emulator, and the devnet."""

from __future__ import annotations

import secrets
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from instant402.app import create_app
from instant402.config import Settings
from tests.support.servers import free_port, serve_in_thread


@dataclass
class Seller:
    username: str
    headers: dict[str, str]
    payout: str
    openrouter_key: str


class Market:
    def __init__(self, url: str, settings: Settings, app, emulator, devnet):
        self.url = url
        self.settings = settings
        self.app = app
        self.emulator = emulator
        self.devnet = devnet
        self.http = httpx.Client(base_url=url, timeout=60)

    @property
    def allow_assets(self) -> list[dict[str, str]]:
        return [{"network": self.devnet.network, "asset": self.devnet.token}]

    def seller(self, *, credit=None) -> Seller:
        """A creator with a payout address on the devnet and a verified emulator key."""
        username = f"s-{secrets.token_hex(4)}"
        r = self.http.post(
            "/api/v1/auth/signup",
            json={"username": username, "email": f"{username}@example.com", "password": "correct horse battery"},
        )
        assert r.status_code == 201, r.text
        csrf = r.json()["csrf_token"]
        r = self.http.post("/api/v1/me/tokens", json={"name": "e2e"}, headers={"X-CSRF-Token": csrf})
        headers = {"Authorization": f"Bearer {r.json()['token']}"}
        self.http.cookies.clear()
        payout = self.devnet.new_account().address
        assert self.http.patch("/api/v1/me", json={"payout_address": payout}, headers=headers).status_code == 200
        key = "sk-or-v1-" + secrets.token_hex(32)
        self.emulator.add_key(key, limit=credit)
        r = self.http.put("/api/v1/me/openrouter-key", json={"key": key}, headers=headers)
        assert r.status_code in (200, 201), r.text
        return Seller(username, headers, payout, key)

    def publish(self, seller: Seller, **fields) -> dict:
        body = {
            "name": "Haiku writer",
            "slug": f"r-{secrets.token_hex(3)}",
            "description": "Writes a haiku about a topic.",
            "model_id": "openai/gpt-4o-mini",
            "system_prompt": "You are a poet.",
            "prompt_template": "Write a haiku about {{topic}}.",
            "parameters": [{"name": "topic", "type": "string", "required": True, "max_length": 200}],
            "max_tokens": 200,
            "price_atomic": 10_000,
            **fields,
        }
        r = self.http.post("/api/v1/me/resources", json=body, headers=seller.headers)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        r = self.http.post(f"/api/v1/me/resources/{rid}/publish", headers=seller.headers)
        assert r.status_code == 200, r.text
        return {
            "id": rid,
            "path": f"/{seller.username}/{body['slug']}",
            "url": f"{self.url}/{seller.username}/{body['slug']}",
        }

    def close(self) -> None:
        self.http.close()


def market_settings(base: dict, port: int, emulator, devnet, **extra) -> Settings:
    return Settings(
        **{
            **base,
            "public_url": f"http://127.0.0.1:{port}",
            "openrouter_base_url": emulator.base_url,
            "network": devnet.network,
            "asset_address": devnet.token,
            "asset_name": devnet.asset_name,
            "asset_version": devnet.asset_version,
            # Every test pays from 127.0.0.1: per-IP limits are tested on their own, not by accident here.
            "rate_limit_ip_per_minute": 0,
            "rate_limit_payer_per_minute": 0,
            **extra,
        }
    )


@contextmanager
def live_market(base_settings: dict, emulator, devnet, facilitator, **extra):
    port = free_port()
    settings = market_settings(base_settings, port, emulator, devnet, **extra)
    app = create_app(settings, facilitator=facilitator)
    with serve_in_thread(app, port) as url:
        market = Market(url, settings, app, emulator, devnet)
        try:
            yield market
        finally:
            market.close()
