from __future__ import annotations

import re


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "form has no CSRF token"
    return match.group(1)


async def test_signup_page_and_form(client):
    page = await client.get("/signup")
    assert page.status_code == 200 and "<form" in page.text and 'for="f-username"' in page.text
    r = await client.post(
        "/signup",
        data={
            "csrf_token": csrf_from(page.text),
            "username": "dora",
            "email": "d@example.com",
            "password": "long enough pw",
        },
    )
    assert r.status_code == 303 and "i402_session=" in r.headers["set-cookie"]
    home = await client.get("/")
    assert "dora" in home.text


async def test_form_post_without_csrf_is_refused(client):
    await client.get("/signup")
    r = await client.post("/signup", data={"username": "eve", "email": "e@example.com", "password": "long enough pw"})
    assert r.status_code == 403
    r = await client.post(
        "/signup",
        data={"csrf_token": "forged", "username": "eve", "email": "e@example.com", "password": "long enough pw"},
    )
    assert r.status_code == 403
    assert (
        await client.post("/api/v1/auth/login", json={"login": "eve", "password": "long enough pw"})
    ).status_code == 401


async def test_signup_form_shows_field_errors(client):
    page = await client.get("/signup")
    r = await client.post(
        "/signup",
        data={"csrf_token": csrf_from(page.text), "username": "x", "email": "bad", "password": "long enough pw"},
    )
    assert r.status_code == 422
    assert 'id="e-username"' in r.text and "at least 3" in r.text


async def test_login_form_and_logout(client, make_creator):
    creator = await make_creator()
    page = await client.get("/login")
    r = await client.post(
        "/login", data={"csrf_token": csrf_from(page.text), "login": creator.username, "password": creator.password}
    )
    assert r.status_code == 303
    home = await client.get("/")
    r = await client.post("/logout", data={"csrf_token": csrf_from(home.text)})
    assert r.status_code == 303
    assert "Log in" in (await client.get("/")).text
