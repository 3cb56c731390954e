"""Creator API: create, validation rules (one test each), update, publish, pause, resume, delete, ownership."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from instant402.resources.models import Resource
from tests.test_resources_helpers import good, seed_catalog

API = "/api/v1/me/resources"


@pytest.fixture(autouse=True)
async def _catalog(database):
    await seed_catalog(database)


async def resource_count(database) -> int:
    async with database.session() as db:
        return (await db.execute(select(func.count()).select_from(Resource))).scalar_one()


async def test_create_returns_the_definition_estimate_and_warnings(client, make_creator, database):
    creator = await make_creator()
    r = await client.post(API, json=good(), headers=creator.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "draft"
    assert body["slug"] == "summarizer"
    assert body["tags"] == ["writing", "summary"]
    assert body["network"] == "eip155:84532" or body["network"]
    assert body["endpoint"] == f"http://testserver/{creator.username}/summarizer"
    assert body["price"] == {"atomic": "10000", "usd": "0.01", "asset": "USDC", "network": body["network"]}
    est = body["estimate"]
    assert est["completion_tokens"] == {"typical": 250, "worst_case": 500}
    assert est["prompt_tokens"]["worst_case"] > 2000  # the 2000-character input counts in full
    assert body["input_schema"]["required"] == ["text"]
    assert body["input_schema"]["additionalProperties"] is False
    assert await resource_count(database) == 1
