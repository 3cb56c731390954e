"""The public API is limited per client address, like the paid route (429 with Retry-After)."""

from __future__ import annotations

import httpx

from instant402.app import create_app


async def test_public_api_is_rate_limited_per_address(settings, migrated):
    app = create_app(settings.model_copy(update={"rate_limit_ip_per_minute": 3}))
    try:
        for path in ("/api/v1/resources", "/api/v1/models"):
            transport = httpx.ASGITransport(app=app, client=(f"192.0.2.{len(path)}", 1))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                statuses = [(await c.get(path)).status_code for _ in range(4)]
                assert statuses == [200, 200, 200, 429], (path, statuses)
                r = await c.get(path)
                assert r.json()["error"]["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
        # Another address still gets through.
        other = httpx.ASGITransport(app=app, client=("192.0.2.200", 1))
        async with httpx.AsyncClient(transport=other, base_url="http://t") as c:
            assert (await c.get("/api/v1/resources")).status_code == 200
    finally:
        await app.state.runtime.aclose()
        await app.state.db.dispose()
