"""Public API: listing, search, filters, sorts, detail, stats; and the hidden prompt never leaves the server."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest
from starlette.routing import Route

from instant402.accounts.models import User
from instant402.errors import ApiError
from instant402.resources.models import Resource, ResourceRow
from instant402.resources.params import validate_input
from instant402.resources.service import get_for_call, get_own, get_own_row
from instant402.usage.models import UsageRecord
from tests.test_resources_helpers import (
    CANARY_SYSTEM,
    CANARY_TEMPLATE,
    PAYOUT,
    error_of,
    give_key,
    good,
    published,
    seed_catalog,
    user_id,
)

LIST = "/api/v1/resources"
API = "/api/v1/me/resources"
CANARIES = ("CANARY-SYSTEM-7f3a9c", "CANARY-TEMPLATE-2b8e41", CANARY_SYSTEM, CANARY_TEMPLATE)


@pytest.fixture(autouse=True)
async def _catalog(database):
    await seed_catalog(database)


def assert_no_canary(text: str, where: str) -> None:
    for canary in CANARIES:
        assert canary not in text, f"hidden text leaked in {where}"
    assert "ab" * 32 not in text, f"key leaked in {where}"


async def add_usage(database, resource_id: int, owner_id: int, statuses: list[str], kind: str = "paid") -> None:
    async with database.session() as db:
        for status in statuses:
            db.add(UsageRecord(resource_id=resource_id, owner_id=owner_id, kind=kind, status=status))
        await db.commit()


async def test_detail_shows_the_contract_and_nothing_hidden(client, app, make_creator):
    creator, _ = await published(client, app, make_creator)
    r = await client.get(f"{LIST}/{creator.username}/summarizer")
    assert r.status_code == 200, r.text
    body = r.json()
    assert_no_canary(r.text, "detail")
    assert body["creator"] == creator.username
    assert body["name"] == "Summarizer"
    assert body["model"] == {
        "id": "acme/text-1",
        "name": "Acme: text-1",
        "provider": "acme",
        "badges": ["structured_output"],
    }
    assert [p["name"] for p in body["parameters"]] == ["text", "tone", "words"]
    assert body["input_schema"]["properties"]["tone"] == {
        "type": "string",
        "enum": ["neutral", "funny"],
        "default": "neutral",
    }
    assert body["output"]["kind"] == "text"
    assert body["price"]["usd"] == "0.01" and body["price"]["atomic"] == "10000"
    assert body["endpoint"] == f"http://testserver/{creator.username}/summarizer"
    assert body["stats"] == {"calls": 0, "delivered": 0, "success_rate": None}
    assert body["available"] is True
    for hidden in ("system_prompt", "prompt_template", "id", "owner_id", "pay_to", "pause_kind", "paused_reason"):
        assert hidden not in body


async def test_drafts_and_archived_are_not_public(client, app, make_creator, database):
    creator = await make_creator(payout_address=PAYOUT)
    await client.post(API, json=good(), headers=creator.headers)
    r = await client.get(f"{LIST}/{creator.username}/summarizer")
    assert r.status_code == 404
    assert (await client.get(LIST)).json()["total"] == 0

    creator2, res = await published(client, app, make_creator, slug="kept")
    await add_usage(database, res["id"], await user_id(database, creator2.username), ["succeeded"])
    r = await client.delete(f"{API}/{res['id']}", headers=creator2.headers)
    assert r.status_code == 200 and r.json()["status"] == "archived"
    assert (await client.get(f"{LIST}/{creator2.username}/kept")).status_code == 404
    assert (await client.get(LIST)).json()["total"] == 0
    # History stays, and the archived resource cannot change any more.
    own = await client.get(f"{API}/{res['id']}", headers=creator2.headers)
    assert own.json()["status"] == "archived" and own.json()["stats"]["calls"] == 1
    r = await client.patch(f"{API}/{res['id']}", json={"name": "Back"}, headers=creator2.headers)
    assert r.status_code == 409


async def test_paused_is_found_by_address_but_not_listed(client, app, make_creator):
    creator, res = await published(client, app, make_creator)
    await client.post(f"{API}/{res['id']}/pause", json={"reason": "private reason"}, headers=creator.headers)
    r = await client.get(f"{LIST}/{creator.username}/summarizer")
    assert r.status_code == 200
    assert r.json()["status"] == "paused" and r.json()["available"] is False
    assert "private reason" not in r.text
    assert (await client.get(LIST)).json()["total"] == 0


async def test_search_filters_sorts_and_pages(client, app, make_creator, database):
    alice, _ = await published(client, app, make_creator, slug="cheap", name="Cheap poems", price_atomic=2_000)
    rid = (
        await client.post(
            API,
            json=good(slug="pricey", name="Pricey legal", tags=["law"], price_atomic=50_000, model_id="acme/text-2"),
            headers=alice.headers,
        )
    ).json()["id"]
    a2 = (await client.post(f"{API}/{rid}/publish", headers=alice.headers)).json()
    bob, b1 = await published(
        client, app, make_creator, slug="picture", name="Picture", model_id="acme/image-1", output_kind="image"
    )
    bob_id = await user_id(database, bob.username)
    await add_usage(database, b1["id"], bob_id, ["succeeded", "succeeded", "failed", "refused"])
    await add_usage(database, b1["id"], bob_id, ["succeeded"], kind="test")
    await add_usage(database, a2["id"], await user_id(database, alice.username), ["succeeded"])

    async def slugs(**params) -> list[str]:
        r = await client.get(LIST, params=params)
        assert r.status_code == 200, r.text
        return [x["slug"] for x in r.json()["items"]]

    assert await slugs() == ["picture", "pricey", "cheap"]  # newest first
    assert await slugs(q="POEM") == ["cheap"]
    assert await slugs(q="law") == ["pricey"]  # tags are searched
    assert await slugs(q="summarises") == ["picture", "pricey", "cheap"]  # description
    assert await slugs(q="100%") == []  # LIKE wildcards are literal
    assert await slugs(creator=bob.username) == ["picture"]
    assert await slugs(model="acme/text-2") == ["pricey"]
    assert await slugs(modality="image") == ["picture"]
    assert await slugs(provider="acme", min_price=20_000) == ["pricey"]
    assert await slugs(provider="other") == []
    assert await slugs(max_price=9_999) == ["cheap"]
    assert await slugs(sort="price") == ["cheap", "picture", "pricey"]
    assert await slugs(sort="most_called") == ["picture", "pricey", "cheap"]

    page = (await client.get(LIST, params={"per_page": 2, "page": 2})).json()
    assert page["total"] == 3 and [x["slug"] for x in page["items"]] == ["cheap"]
    detail = (await client.get(f"{LIST}/{bob.username}/picture")).json()
    assert detail["stats"] == {"calls": 3, "delivered": 2, "success_rate": 0.6667}
    assert "image_output" in detail["model"]["badges"]

    r = await client.get(LIST, params={"sort": "random"})
    assert r.status_code == 422 and "sort" in error_of(r)["details"]["fields"]
    r = await client.get(LIST, params={"per_page": 1000})
    assert r.status_code == 422


def _path_for(route: Route, creator: str) -> str:
    values = {"creator": creator, "slug": "summarizer", "username": creator}
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values.get(m.group(1), "1"), route.path)


async def test_canaries_never_appear_in_any_public_answer(client, app, make_creator, caplog):
    """Walk every GET route anonymously and as another creator, and the input errors: no hidden text anywhere."""
    # INFO is the production default; at DEBUG, database drivers log query parameters (a logging-setup matter).
    caplog.set_level(logging.INFO)
    creator, _ = await published(client, app, make_creator, output_kind="json", output_schema={"type": "object"})
    other = await make_creator()
    await give_key(app, other)
    paths = {f"{LIST}/{creator.username}/summarizer", f"{LIST}?q=canary", LIST}
    for route in app.routes:
        if isinstance(route, Route) and "GET" in (route.methods or ()) and not route.path.startswith("/api/v1/me"):
            paths.add(_path_for(route, creator.username))
    checked = 0
    for path in sorted(paths):
        for headers in ({}, other.headers):
            r = await client.get(path, headers=headers)
            assert r.status_code < 500, (path, r.status_code, r.text[:300])
            assert_no_canary(r.text, path)
            checked += 1
    assert checked >= 6
    # What the paid route answers before any payment: input errors (it runs validate_input first).
    async with app.state.db.session() as db:
        resource = await get_for_call(db, creator.username, "summarizer")
    for body in ({"text": 5}, {"nope": 1}, None, [], {"text": "x", "tone": "loud", "words": True}):
        with pytest.raises(ApiError) as caught:
            validate_input(resource, body)
        assert_no_canary(f"{caught.value.message} {caught.value.details}", "input error")
    for record in caplog.records:
        assert_no_canary(record.getMessage(), "log")


async def test_call_rows_hold_what_the_entity_holds(client, app, make_creator, database):
    creator, body = await published(client, app, make_creator)
    columns = [column.key for column in Resource.__table__.columns]
    assert [f.name for f in dataclasses.fields(ResourceRow)] == [*columns, "owner"]
    async with database.session() as db:
        user = await db.get(User, await user_id(database, creator.username))
        entity = await get_own(db, user, body["id"])
        for_call = await get_for_call(db, creator.username.upper(), body["slug"])  # names are case-insensitive
        own = await get_own_row(db, user.id, body["id"])
    for row in (for_call, own):
        assert {c: getattr(row, c) for c in columns} == {c: getattr(entity, c) for c in columns}
        assert row.active_model_id == entity.active_model_id
        with pytest.raises(dataclasses.FrozenInstanceError):
            row.price_atomic = 1  # a call never writes its resource
    assert (for_call.owner.username, for_call.owner.payout_address) == (creator.username, PAYOUT)
    assert own.owner is None
