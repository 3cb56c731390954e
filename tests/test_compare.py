"""Compare models: the same resource and inputs on up to four models, as owner test runs within the limits."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select

from instant402.app import create_app
from instant402.catalog.sync import sync_catalog
from instant402.resources.models import Resource
from instant402.usage.models import UsageRecord
from tests.browser.helpers import WebUser
from tests.test_web_pages import catalog, create_resource, creator_with_key, web_app  # noqa: F401 fixtures

MODELS = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4.5", "google/gemini-2.5-pro"]


async def compare(user: WebUser, rid: int, models, values=None, page: str = "/"):
    token = await user.csrf(page)
    return await user.http.post(
        f"/api/v1/me/resources/{rid}/compare",
        json={"models": models, "input": {"topic": "the sea"} if values is None else values},
        headers={"X-CSRF-Token": token},
    )


async def runs_of(database, rid: int) -> list[UsageRecord]:
    async with database.session() as db:
        return list(await db.scalars(select(UsageRecord).where(UsageRecord.resource_id == rid)))


async def test_compare_runs_each_model_as_a_test(app, web_app, emulator, catalog, database):  # noqa: F811
    user, _ = await creator_with_key(web_app, emulator)
    rid = await create_resource(user)
    r = await compare(user, rid, MODELS)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["model"] for x in results] == MODELS and all("error" not in x for x in results), results
    rows = await runs_of(database, rid)
    assert sorted(row.model_requested for row in rows) == sorted(MODELS)
    assert {row.kind for row in rows} == {"test"} and {row.amount_atomic for row in rows} == {0}
    by_model = {row.model_requested: row for row in rows}
    for x in results:
        # The cost shown is the one recorded from the upstream's bill; the margin is at the current price.
        assert Decimal(x["upstream_cost_usd"]) == by_model[x["model"]].upstream_cost
        assert Decimal(x["margin_usd"]) == Decimal("0.01") - Decimal(x["upstream_cost_usd"])
        assert x["tokens"]["completion_tokens"] > 0 and x["latency_ms"] >= 0 and x["output"]["type"] == "text"
    # The resource itself did not change model.
    async with database.session() as db:
        assert (await db.get(Resource, rid)).model_id == "openai/gpt-4o-mini"


async def test_compare_refuses_bad_requests_and_changes_nothing(app, web_app, emulator, catalog, database):  # noqa: F811
    user, _ = await creator_with_key(web_app, emulator)
    rid = await create_resource(user)
    five = [*MODELS, "openai/o4-mini", "anthropic/claude-sonnet-4.5"]
    r = await compare(user, rid, five)
    assert r.status_code == 422 and "models" in r.json()["error"]["details"]["fields"]
    r = await compare(user, rid, ["openai/gpt-4o-mini", "nobody/nothing"])
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"] == {
        "models.1": "No model with this id in the catalog."
    }
    r = await compare(user, rid, ["openai/gpt-4o-mini"], values={"topic": 7})
    assert r.status_code == 422 and "topic" in r.json()["error"]["details"]["fields"]
    assert (await compare(user, rid, "openai/gpt-4o-mini")).status_code == 422
    assert await runs_of(database, rid) == []
    # Someone else's resource is not found; without a login, 401.
    other, _ = await creator_with_key(web_app, emulator)
    assert (await compare(other, rid, MODELS[:1])).status_code == 404
    anon = WebUser(web_app)
    r = await anon.http.post(f"/api/v1/me/resources/{rid}/compare", json={"models": MODELS[:1], "input": {}})
    assert r.status_code in (401, 403)


async def test_compare_respects_the_daily_budget(app, web_app, emulator, catalog, database):  # noqa: F811
    user, _ = await creator_with_key(web_app, emulator)
    rid = await create_resource(user)
    r = await user.post(
        "/settings/limits", {"per_call_cap_usd": "", "daily_budget_usd": "0.000001", "webhook_url": ""}, "/settings"
    )
    assert r.status_code == 200
    r = await compare(user, rid, MODELS[:2])
    assert r.status_code == 200
    assert all(x["error"].startswith("Skipped") for x in r.json()["results"])
    assert await runs_of(database, rid) == []  # nothing ran over the budget


@pytest.fixture
async def one_slot_app(app, settings, emulator_server, emulator):
    """A creator may run one upstream call at a time; the rest wait their turn."""
    application = create_app(
        settings.model_copy(
            update={
                "openrouter_base_url": emulator_server.base_url,
                "creator_concurrency": 1,
                "creator_concurrency_ceiling": 1,
                "creator_max_wait_seconds": 30.0,
            }
        )
    )
    report = await sync_catalog(application.state.db, emulator.base_url)
    assert report.ok
    yield application
    await application.state.db.dispose()


async def test_compare_respects_the_concurrency_limit(app, one_slot_app, emulator, database):
    user, key = await creator_with_key(one_slot_app, emulator)
    rid = await create_resource(user)
    emulator.fault(kind="latency", latency_ms=150, key=key)
    try:
        r = await compare(user, rid, MODELS)
    finally:
        emulator.clear_faults()
    assert r.status_code == 200 and all("error" not in x for x in r.json()["results"]), r.text
    assert emulator.stats(key)["max_in_flight"] == 1  # three models, one at a time
    assert len(await runs_of(database, rid)) == 3
