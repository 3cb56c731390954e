"""Pages cannot be framed and carry a content security policy; trailing-slash redirects go to the configured public
URL, never to the Host header the client sent."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("path", ["/", "/login", "/signup", "/explore"])
async def test_pages_refuse_framing_and_carry_a_csp(client, path):
    r = await client.get(path)
    assert r.status_code == 200, r.text
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "object-src 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text and "<script type" not in r.text  # nothing inline the policy would block


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/api/v1/resources/", "/api/v1/resources"),
        ("/api/v1/resources/?page=2", "/api/v1/resources?page=2"),
        ("/login/", "/login"),
    ],
)
async def test_slash_redirects_use_the_public_url(client, settings, path, target):
    r = await client.get(path, headers={"Host": "evil.example"})
    assert r.status_code == 307, r.text
    assert r.headers["location"] == settings.public_url + target
    assert "evil.example" not in r.headers["location"]


async def test_unknown_paths_are_still_404(client):
    r = await client.get("/api/v1/nothing-here/", headers={"Host": "evil.example"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
