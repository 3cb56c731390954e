from __future__ import annotations

import httpx

from instant402.app import create_app


async def test_healthz_and_readyz(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    # The test app's facilitator (the public one) is not reachable here and its catalog is empty: not ready.
    r = await client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["database"] == "ok"
    assert {"facilitator", "catalog"} <= set(r.json()["failing"])


async def test_readyz_fails_when_database_is_down(settings, tmp_path):
    broken = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://nobody@127.0.0.1:1/none", "database_schema": None}
    )
    app = create_app(broken)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 503
    await app.state.db.dispose()


async def test_openapi_docs(client):
    import re

    spec = (await client.get("/openapi.json")).json()
    assert "/api/v1/auth/signup" in spec["paths"]
    for page in ("/docs", "/redoc"):
        html = (await client.get(page)).text
        assets = re.findall(r'(?:src|href|url)\s*[:=]\s*["\']([^"\']+)', html)
        assert assets, page
        # Offline: every script and stylesheet comes from this server.
        assert all(not a.startswith(("http:", "https:", "//")) for a in assets), (page, assets)
        for asset in assets:
            if asset.endswith((".js", ".css")):
                assert (await client.get(asset)).status_code == 200, asset


async def test_unknown_path_uses_error_shape(client):
    r = await client.get("/api/v1/nothing-here")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
