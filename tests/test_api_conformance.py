"""Bounded integers (no overflow reaches the database), strict ids in bodies, documented error answers, and 405s
that name every method of their path."""

from __future__ import annotations

import pytest

HUGE = "99999999999999999999999"
INT32_OVER = str(2**31)  # fits 64 bits, not PostgreSQL's INTEGER columns


@pytest.mark.parametrize(
    "path",
    [
        f"/api/v1/resources?min_price={HUGE}",
        f"/api/v1/resources?max_price={HUGE}",
        f"/api/v1/models?min_context={HUGE}",
        f"/api/v1/models?min_context={INT32_OVER}",
        f"/api/v1/models?page={HUGE}",
        "/api/v1/models?per_page=1000",
    ],
)
async def test_out_of_range_integers_are_refused_anonymously(client, path):
    r = await client.get(path)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_input"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/api/v1/me/resources/{HUGE}"),
        ("PATCH", f"/api/v1/me/resources/{HUGE}"),
        ("DELETE", f"/api/v1/me/resources/{HUGE}"),
        ("POST", f"/api/v1/me/resources/{HUGE}/publish"),
        ("POST", f"/api/v1/me/resources/{HUGE}/test"),
        ("DELETE", f"/api/v1/me/tokens/{HUGE}"),
        ("GET", f"/api/v1/me/usage?resource_id={HUGE}"),
        ("GET", f"/api/v1/me/resources/{INT32_OVER}"),
        ("DELETE", f"/api/v1/me/tokens/{INT32_OVER}"),
        ("GET", f"/api/v1/me/usage?resource_id={INT32_OVER}"),
    ],
)
async def test_out_of_range_ids_are_refused(client, make_creator, method, path):
    creator = await make_creator()
    r = await client.request(method, path, headers=creator.headers, json={} if method == "PATCH" else None)
    assert r.status_code in (404, 422), r.text  # a 422 from the schema, or no such (digits-only) path
    r = await client.post("/api/v1/me/resources/preview", json={"resource_id": int(HUGE)}, headers=creator.headers)
    assert r.status_code == 422, r.text


async def test_notice_ids_are_integers_not_booleans(client, make_creator):
    creator = await make_creator()
    for ids in ([False], [True], ["1"], [0]):
        r = await client.post("/api/v1/me/notifications/read", json={"ids": ids}, headers=creator.headers)
        assert r.status_code == 422, (ids, r.text)
    r = await client.post("/api/v1/me/notifications/read", json={"ids": [1]}, headers=creator.headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/v1/me/resources", "GET, POST"),
        ("POST", "/api/v1/me", "GET, PATCH"),
        ("PATCH", "/api/v1/me/resources/preview", "POST"),
        ("POST", "/api/v1/me/openrouter-key", "DELETE, GET, PUT"),
    ],
)
async def test_method_not_allowed_names_every_method_of_the_path(client, method, path, allow):
    r = await client.request(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    assert r.json()["error"]["code"] == "method_not_allowed"


async def test_every_operation_documents_its_error_answers(client):
    schema = (await client.get("/openapi.json")).json()
    assert "HTTPValidationError" not in str(schema)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status in ("400", "401", "403", "404", "409", "413", "422", "429"):
                answer = operation["responses"][status]
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorBody", (method, path, status)
