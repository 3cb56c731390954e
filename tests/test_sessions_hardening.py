"""Sessions and client addresses: logout needs the CSRF token, the login back-off is one ladder per account, the
anonymous CSRF cookie is replaced at login, and forwarded headers count only from configured proxies."""

from __future__ import annotations

import secrets
import threading
import time

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from instant402.app import create_app
from instant402.cli import main as cli
from instant402.config import Settings
from instant402.web.csrf import ANON_CSRF_COOKIE
from tests.support.servers import free_port
from tests.test_web_forms import csrf_from


async def test_logout_with_a_session_cookie_needs_the_csrf_token(client, make_creator):
    creator = await make_creator()
    r = await client.post("/api/v1/auth/login", json={"login": creator.username, "password": creator.password})
    csrf = r.json()["csrf_token"]
    r = await client.post("/api/v1/auth/logout")
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    assert (await client.get("/api/v1/me")).status_code == 200  # still logged in
    assert (await client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})).status_code == 204
    assert (await client.get("/api/v1/me")).status_code == 401


async def login_from(app, address: str, login: str, password: str) -> int:
    transport = httpx.ASGITransport(app=app, client=(address, 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        r = await c.post("/api/v1/auth/login", json={"login": login, "password": password})
        return r.status_code


async def test_the_login_back_off_is_one_ladder_per_account(app, make_creator, settings):
    creator = await make_creator()
    names = [creator.username, creator.email, creator.username.upper(), creator.email, creator.username]
    assert len(names) == settings.login_free_failures
    for i, name in enumerate(names):  # each guess from its own address: only the account's ladder counts
        assert await login_from(app, f"198.18.0.{i + 1}", name, "not the password") == 401
    assert await login_from(app, "198.18.0.99", creator.email, creator.password) == 429
    # Names of no account still have their own ladder each.
    for i in range(settings.login_free_failures):
        assert await login_from(app, f"198.18.1.{i + 1}", "nobody-at-all", "whatever12") == 401
    assert await login_from(app, "198.18.1.99", "nobody-at-all", "whatever12") == 429


async def test_a_planted_anonymous_csrf_cookie_is_replaced_at_login(client, make_creator):
    creator = await make_creator()
    planted = "planted-by-someone-else-0123456789"
    client.cookies.set(ANON_CSRF_COOKIE, planted)
    page = await client.get("/login")
    assert csrf_from(page.text) == planted  # a form before login still works with it (double submit)
    r = await client.post(
        "/login", data={"csrf_token": planted, "login": creator.username, "password": creator.password}
    )
    assert r.status_code == 303
    rotated = r.cookies.get(ANON_CSRF_COOKIE)
    assert rotated and rotated != planted


def test_forwarded_headers_follow_the_trusted_proxies_setting(monkeypatch):
    assert Settings().uvicorn_proxy_options == {"proxy_headers": False, "forwarded_allow_ips": ""}
    configured = Settings(trusted_proxies=" 10.0.0.5, 192.168.0.0/16 ")
    assert configured.uvicorn_proxy_options == {"proxy_headers": True, "forwarded_allow_ips": "10.0.0.5,192.168.0.0/16"}
    # `instant402 serve` hands them to uvicorn (whose own default trusts 127.0.0.1).
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: seen.update(kw))
    monkeypatch.setattr(cli, "require_vault", lambda settings: None)
    monkeypatch.setenv("INSTANT402_TRUSTED_PROXIES", "")
    assert CliRunner().invoke(cli.app, ["serve"]).exit_code == 0
    assert seen["proxy_headers"] is False
    monkeypatch.setenv("INSTANT402_TRUSTED_PROXIES", "10.0.0.5")
    assert CliRunner().invoke(cli.app, ["serve"]).exit_code == 0
    assert seen["proxy_headers"] is True and seen["forwarded_allow_ips"] == "10.0.0.5"


@pytest.mark.parametrize(("trusted", "spoofable"), [("", False), ("127.0.0.1", True)])
def test_a_forwarded_for_header_steers_the_back_off_only_from_a_trusted_proxy(
    app, settings_overrides, migrated, trusted, spoofable
):  # app: its tables are cleaned afterwards
    settings = Settings(**{**settings_overrides, "trusted_proxies": trusted})
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", **settings.uvicorn_proxy_options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        statuses = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(settings.login_free_failures + 1):
                r = http.post(
                    "/api/v1/auth/login",
                    json={"login": f"guess-{secrets.token_hex(4)}", "password": "whatever12"},
                    headers={"X-Forwarded-For": f"203.0.113.{secrets.randbelow(250) + 1}"},
                )
                statuses.append(r.status_code)
        # From loopback, untrusted: every guess counts against 127.0.0.1, whatever the header says.
        assert statuses[-1] == (401 if spoofable else 429), statuses
    finally:
        server.should_exit = True
        thread.join(10)
