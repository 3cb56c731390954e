"""Resources follow the catalog (model gone, fallback, expiry, return) and the creator's key and credit."""

from __future__ import annotations

from datetime import date

import pytest

from instant402.keys.service import delete_key
from instant402.resources import lifecycle
from tests.test_resources_helpers import give_key, published, seed_catalog, set_model, user_id

API = "/api/v1/me/resources"
LIST = "/api/v1/resources"


@pytest.fixture(autouse=True)
async def _catalog(database):
    await seed_catalog(database)


async def catalog_changed(database, model_id: str, active: bool | None = None, **kwargs) -> None:
    """What a catalog sync does: update the model row, then tell resources, in one transaction."""
    if active is not None:
        await set_model(database, model_id, is_active=active)
    async with database.session() as db:
        await lifecycle.on_catalog_changed(
            db,
            deactivated=[model_id] if active is False else [],
            reactivated=[model_id] if active is True else [],
            newly_expiring=[model_id] if kwargs.get("expiring") else [],
        )
        await db.commit()


async def own(client, creator, rid) -> dict:
    r = await client.get(f"{API}/{rid}", headers=creator.headers)
    assert r.status_code == 200
    return r.json()


async def test_deactivated_model_pauses_and_reactivation_restores(client, app, make_creator, database):
    creator, res = await published(client, app, make_creator)
    await catalog_changed(database, "acme/text-1", active=False)
    body = await own(client, creator, res["id"])
    assert (body["status"], body["pause_kind"]) == ("paused", "model_unavailable")
    assert "Model unavailable" in body["paused_reason"]
    assert "acme/text-1 is unavailable" in body["model_warning"]
    public = (await client.get(f"{LIST}/{creator.username}/summarizer")).json()
    assert public["available"] is False
    assert (await client.get(LIST)).json()["total"] == 0

    await catalog_changed(database, "acme/text-1", active=True)
    body = await own(client, creator, res["id"])
    assert (body["status"], body["pause_kind"], body["paused_reason"]) == ("published", None, None)
    assert body["model_warning"] is None
    assert (await client.get(LIST)).json()["total"] == 1


async def test_fallback_keeps_a_resource_running(client, app, make_creator, database):
    creator, res = await published(client, app, make_creator, fallback_model_ids=["acme/text-3", "acme/text-2"])
    await catalog_changed(database, "acme/text-3", active=False)
    assert (await own(client, creator, res["id"]))["running_on_fallback"] is None
    await catalog_changed(database, "acme/text-1", active=False)  # the first fallback still active is text-2
    body = await own(client, creator, res["id"])
    assert body["status"] == "published"
    assert body["running_on_fallback"] == "acme/text-2"
    assert "fallback acme/text-2" in body["model_warning"]
    # The fallback goes too: now it pauses.
    await catalog_changed(database, "acme/text-2", active=False)
    body = await own(client, creator, res["id"])
    assert (body["status"], body["pause_kind"], body["running_on_fallback"]) == ("paused", "model_unavailable", None)
    # A fallback returning is enough to run again, on it.
    await catalog_changed(database, "acme/text-2", active=True)
    body = await own(client, creator, res["id"])
    assert (body["status"], body["running_on_fallback"]) == ("published", "acme/text-2")
    # The main model returning moves it back.
    await catalog_changed(database, "acme/text-1", active=True)
    body = await own(client, creator, res["id"])
    assert (body["status"], body["running_on_fallback"], body["model_warning"]) == ("published", None, None)


async def test_manual_pause_survives_model_return(client, app, make_creator, database):
    creator, res = await published(client, app, make_creator)
    await client.post(f"{API}/{res['id']}/pause", headers=creator.headers)
    await catalog_changed(database, "acme/text-1", active=False)
    await catalog_changed(database, "acme/text-1", active=True)
    body = await own(client, creator, res["id"])
    assert (body["status"], body["pause_kind"]) == ("paused", "manual")


async def test_expiring_model_warns_its_resources(client, app, make_creator, database):
    creator, res = await published(client, app, make_creator)
    await set_model(database, "acme/text-1", expiration_date=date(2027, 3, 1))
    await catalog_changed(database, "acme/text-1", expiring=True)
    body = await own(client, creator, res["id"])
    assert body["status"] == "published"
    assert "retired on 2027-03-01" in body["model_warning"]
    r = await client.patch(f"{API}/{res['id']}", json={"name": "Renamed"}, headers=creator.headers)
    assert any("2027-03-01" in w["message"] for w in r.json()["warnings"])


async def test_drafts_are_never_published_by_the_catalog(client, make_creator, database):
    creator = await make_creator()
    from tests.test_resources_helpers import good

    rid = (await client.post(API, json=good(), headers=creator.headers)).json()["id"]
    await catalog_changed(database, "acme/text-1", active=False)
    assert (await own(client, creator, rid))["status"] == "draft"
    await catalog_changed(database, "acme/text-1", active=True)
    assert (await own(client, creator, rid))["status"] == "draft"


async def test_removing_the_key_pauses_and_a_new_key_resumes(client, app, make_creator, database):
    creator, res = await published(client, app, make_creator)
    uid = await user_id(database, creator.username)
    async with database.session() as db:
        assert await delete_key(db, uid) == 1
    body = await own(client, creator, res["id"])
    assert (body["status"], body["pause_kind"]) == ("paused", "no_key")
    r = await client.post(f"{API}/{res['id']}/resume", headers=creator.headers)
    assert r.status_code == 422 and "openrouter_key" in r.json()["error"]["details"]["fields"]
    await give_key(app, creator)
    body = await own(client, creator, res["id"])
    assert (body["status"], body["pause_kind"]) == ("published", None)


async def test_credit_and_budget_pauses_lift_by_kind(client, app, make_creator, database):
    creator, res = await published(client, app, make_creator)
    uid = await user_id(database, creator.username)
    async with database.session() as db:
        assert await lifecycle.pause_creator_resources(db, uid, "budget", "Daily budget reached.") == 1
        await db.commit()
    body = await own(client, creator, res["id"])
    assert (body["status"], body["pause_kind"], body["paused_reason"]) == ("paused", "budget", "Daily budget reached.")
    async with database.session() as db:
        assert await lifecycle.resume_creator_resources(db, uid, ["out_of_credit"]) == 0
        assert await lifecycle.resume_creator_resources(db, uid, ["budget"]) == 1
        await db.commit()
    assert (await own(client, creator, res["id"]))["status"] == "published"


async def test_resuming_after_the_model_went_away_stays_paused(client, app, make_creator, database):
    creator, res = await published(client, app, make_creator)
    uid = await user_id(database, creator.username)
    async with database.session() as db:
        await lifecycle.pause_creator_resources(db, uid, "out_of_credit", "No credit.")
        await db.commit()
    await catalog_changed(database, "acme/text-1", active=False)
    async with database.session() as db:
        assert await lifecycle.resume_creator_resources(db, uid, ["out_of_credit"]) == 0
        await db.commit()
    body = await own(client, creator, res["id"])
    assert (body["status"], body["pause_kind"]) == ("paused", "model_unavailable")
