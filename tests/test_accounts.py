from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from instant402.accounts.models import ApiToken, User
from instant402.app import create_app

GOOD = {"username": "alice", "email": "alice@example.com", "password": "a long password"}
CHECKSUMMED = "0x52908400098527886E0F7030069857D2E4169EE7"


async def user_count(database) -> int:
    async with database.session() as s:
        return (await s.execute(select(func.count()).select_from(User))).scalar_one()


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("override", "field", "fragment"),
    [
        ({"username": "ab"}, "username", "at least 3"),
        ({"username": "a" * 33}, "username", "at most 32"),
        ({"username": "Alice"}, "username", "lowercase"),
        ({"username": "al ice"}, "username", "Use lowercase letters"),
        ({"username": "-alice"}, "username", "Use lowercase letters"),
        ({"username": "al--ice"}, "username", "Use lowercase letters"),
        ({"username": "al_ice"}, "username", "Use lowercase letters"),
        ({"username": "admin"}, "username", "reserved"),
        ({"username": "api"}, "username", "reserved"),
        ({"email": "not-an-email"}, "email", "valid email"),
        ({"email": "x" * 250 + "@example.com"}, "email", ""),
        ({"password": "short"}, "password", "at least 10"),
        ({"payout_address": "0x1234"}, "payout_address", "40 hexadecimal"),
        ({"payout_address": CHECKSUMMED.replace("E0F", "e0F")}, "payout_address", "checksum"),
        ({"payout_address": "0x" + "0" * 40}, "payout_address", "zero address"),
        ({"surprise": 1}, "surprise", "not allowed"),
        ({"username": 42}, "username", ""),
    ],
)
async def test_signup_rules(client, database, override, field, fragment):
    r = await client.post("/api/v1/auth/signup", json={**GOOD, **override})
    assert r.status_code == 422, r.text
    err = error_of(r)
    assert field in err["details"]["fields"]
    assert fragment in err["details"]["fields"][field]
    assert await user_count(database) == 0


@pytest.mark.parametrize("missing", ["username", "email", "password"])
async def test_signup_missing_field(client, database, missing):
    body = {k: v for k, v in GOOD.items() if k != missing}
    r = await client.post("/api/v1/auth/signup", json=body)
    assert r.status_code == 422
    assert error_of(r)["details"]["fields"][missing] == "This field is required."
    assert await user_count(database) == 0


async def test_signup_malformed_json(client, database):
    r = await client.post(
        "/api/v1/auth/signup", content=b'{"username": "al', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert error_of(r)["code"] == "malformed_json"
    assert await user_count(database) == 0


async def test_signup_duplicates(client, database):
    assert (await client.post("/api/v1/auth/signup", json=GOOD)).status_code == 201
    r = await client.post("/api/v1/auth/signup", json={**GOOD, "email": "other@example.com"})
    assert r.status_code == 409 and error_of(r)["code"] == "username_taken"
    r = await client.post("/api/v1/auth/signup", json={**GOOD, "username": "alice2", "email": "ALICE@example.com"})
    assert r.status_code == 409 and error_of(r)["code"] == "email_taken"
    assert await user_count(database) == 1


async def test_signup_normalises_payout_address(client):
    r = await client.post("/api/v1/auth/signup", json={**GOOD, "payout_address": CHECKSUMMED.lower()})
    assert r.status_code == 201
    assert r.json()["user"]["payout_address"] == CHECKSUMMED


async def test_login_logout_and_cookie_flags(client):
    r = await client.post("/api/v1/auth/signup", json=GOOD)
    assert r.status_code == 201
    client.cookies.clear()
    for login in ("alice", "ALICE@example.com"):
        r = await client.post("/api/v1/auth/login", json={"login": login, "password": GOOD["password"]})
        assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"]
    assert "i402_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # served over http here
    assert (await client.get("/api/v1/me")).json()["username"] == "alice"
    r = await client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": r.json()["csrf_token"]})
    assert r.status_code == 204
    assert (await client.get("/api/v1/me")).status_code == 401


async def test_wrong_password(client):
    await client.post("/api/v1/auth/signup", json=GOOD)
    client.cookies.clear()
    r = await client.post("/api/v1/auth/login", json={"login": "alice", "password": "wrong password!"})
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_credentials"
    r = await client.post("/api/v1/auth/login", json={"login": "nobody", "password": "wrong password!"})
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_credentials"


async def test_secure_cookie_over_https(settings, migrated):
    app = create_app(settings.model_copy(update={"public_url": "https://market.example"}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://market.example") as c:
        r = await c.post("/api/v1/auth/signup", json={**GOOD, "username": "secure-one", "email": "s@example.com"})
        assert r.status_code == 201
        assert "Secure" in r.headers["set-cookie"]
    await app.state.db.dispose()


async def test_login_backoff_per_account(client, make_creator):
    creator = await make_creator("bob")
    for _ in range(5):
        r = await client.post("/api/v1/auth/login", json={"login": "bob", "password": "not the password"})
        assert r.status_code == 401
    # Five failures lock the account: even the right password now waits.
    r = await client.post("/api/v1/auth/login", json={"login": "bob", "password": creator.password})
    assert r.status_code == 429
    assert error_of(r)["code"] == "login_throttled"
    assert int(r.headers["Retry-After"]) >= 1


async def test_login_backoff_per_address(app, make_creator):
    await make_creator("carol")
    transport = httpx.ASGITransport(app=app, client=("192.0.2.99", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        for i in range(5):
            r = await c.post("/api/v1/auth/login", json={"login": f"guess{i}", "password": "whatever12"})
            assert r.status_code == 401
        r = await c.post("/api/v1/auth/login", json={"login": "carol", "password": "correct horse battery"})
        assert r.status_code == 429
    # Another address is not affected.
    other = httpx.ASGITransport(app=app, client=("192.0.2.100", 1))
    async with httpx.AsyncClient(transport=other, base_url="http://testserver") as c:
        r = await c.post("/api/v1/auth/login", json={"login": "carol", "password": "correct horse battery"})
        assert r.status_code == 200


async def test_tokens_create_use_list_revoke(client, make_creator, database):
    creator = await make_creator()
    r = await client.post("/api/v1/me/tokens", json={"name": "ci"}, headers=creator.headers)
    assert r.status_code == 201
    token, token_id = r.json()["token"], r.json()["id"]
    assert token.startswith("i402_") and r.json()["prefix"] == token[:12]
    unused = (await client.get("/api/v1/me/tokens", headers=creator.headers)).json()
    assert {t["name"]: t["last_used_at"] for t in unused}["ci"] is None
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["username"] == creator.username
    listed = (await client.get("/api/v1/me/tokens", headers=creator.headers)).json()
    assert {t["name"] for t in listed} == {"tests", "ci"}
    assert {t["name"]: t["last_used_at"] for t in listed}["ci"] is not None  # touched by its first use
    assert all("token" not in t for t in listed)
    assert (await client.delete(f"/api/v1/me/tokens/{token_id}", headers=creator.headers)).status_code == 204
    r = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_token"
    assert (await client.delete(f"/api/v1/me/tokens/{token_id}", headers=creator.headers)).status_code == 404


async def test_unknown_or_malformed_tokens(client):
    r = await client.get("/api/v1/me", headers={"Authorization": "Bearer i402_nope"})
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_token"
    r = await client.get("/api/v1/me", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    r = await client.get("/api/v1/me")
    assert r.status_code == 401 and error_of(r)["code"] == "unauthenticated"
    r = await client.delete("/api/v1/me/tokens/not-a-number", headers={"Authorization": "Bearer x"})
    assert r.status_code in (401, 422)


async def test_cannot_revoke_another_creators_token(client, make_creator, database):
    a, b = await make_creator(), await make_creator()
    async with database.session() as s:
        b_token_id = (await s.execute(select(ApiToken.id).join(User).where(User.username == b.username))).scalar_one()
    r = await client.delete(f"/api/v1/me/tokens/{b_token_id}", headers=a.headers)
    assert r.status_code == 404
    assert (await client.get("/api/v1/me", headers=b.headers)).status_code == 200


async def test_tokens_are_stored_hashed(client, make_creator, database):
    from tests.support.scan import database_contains

    creator = await make_creator()
    assert not await database_contains(database, creator.token)
    assert not await database_contains(database, creator.password)
    assert await database_contains(database, creator.token[:12])  # the visible prefix is kept (scanner works)


async def test_payout_address_update(client, make_creator):
    creator = await make_creator()
    r = await client.patch("/api/v1/me", json={"payout_address": "nope"}, headers=creator.headers)
    assert r.status_code == 422 and "payout_address" in error_of(r)["details"]["fields"]
    r = await client.patch("/api/v1/me", json={"payout_address": CHECKSUMMED}, headers=creator.headers)
    assert r.status_code == 200 and r.json()["payout_address"] == CHECKSUMMED
    r = await client.patch("/api/v1/me", json={"payout_address": None}, headers=creator.headers)
    assert r.status_code == 200 and r.json()["payout_address"] is None


async def test_cookie_session_needs_csrf_header_for_changes(client):
    r = await client.post("/api/v1/auth/signup", json=GOOD)
    csrf = r.json()["csrf_token"]
    r = await client.patch("/api/v1/me", json={"payout_address": CHECKSUMMED})
    assert r.status_code == 403 and error_of(r)["code"] == "csrf_failed"
    r = await client.patch("/api/v1/me", json={"payout_address": CHECKSUMMED}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200


async def test_no_username_can_take_a_path_of_the_app(app):
    """A creator's paid URL is /{username}/{slug}: every other route's first segment must be refused as a name."""
    from instant402.accounts.validation import username_problem

    def paths(router):
        for route in router.routes:
            if hasattr(route, "original_router"):  # an included router
                yield from paths(route.original_router)
            elif hasattr(route, "path"):
                yield route.path

    firsts = {path.split("/")[1] for path in paths(app.router)} - {"", "{creator:creator}"}
    assert {"api", "settings", "explore", "static-offline-docs"} <= firsts
    takeable = sorted(first for first in firsts if username_problem(first) is None)
    assert takeable == []
