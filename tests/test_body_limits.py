"""Request bodies are limited while they arrive, on every route: a declared size over the limit is refused before the
app runs, and an undeclared (chunked) body is refused as soon as it passes the limit, never read whole."""

from __future__ import annotations

import httpx

CHUNK = 64 * 1024


class Counted:
    """A request body of ``total`` bytes, sent in chunks without a Content-Length; counts what the server pulled."""

    def __init__(self, total: int):
        self.total = total
        self.pulled = 0

    async def __aiter__(self):
        while self.pulled < self.total:
            self.pulled += CHUNK
            yield b"x" * CHUNK


def assert_too_large(r: httpx.Response, limit: int) -> None:
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    assert str(limit) in r.json()["error"]["message"]


async def test_a_streamed_body_is_cut_off_at_the_limit(client, settings):
    body = Counted(100 * 1024 * 1024)
    r = await client.post("/api/v1/auth/login", content=body, headers={"Content-Type": "application/json"})
    assert_too_large(r, settings.max_body_bytes)
    assert body.pulled <= settings.max_body_bytes + CHUNK  # not the 100 MB


async def test_a_declared_size_over_the_limit_is_refused_before_the_app_runs(client, settings):
    big = b"{" + b" " * settings.max_body_bytes + b"}"
    # A route that would otherwise answer 401 (no session) or 404 (no such creator): the size is judged first.
    assert_too_large(await client.post("/api/v1/me/tokens", content=big), settings.max_body_bytes)
    assert_too_large(await client.put("/api/v1/me/openrouter-key", content=big), settings.max_body_bytes)


async def test_the_paid_route_has_its_own_smaller_limit(client, settings):
    small = settings.max_request_bytes
    body = b'{"topic": "' + b"a" * small + b'"}'
    assert_too_large(await client.post("/nobody-here/some-slug", content=body), small)
    assert_too_large(await client.post("/api/v1/me/resources/1/test", content=body), small)
    streamed = Counted(10 * small)
    assert_too_large(await client.post("/api/v1/me/resources/1/test", content=streamed), small)
    # Other routes keep the app's limit: the same body reaches them (and is refused for its own reasons).
    r = await client.post("/api/v1/me/tokens", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 401
