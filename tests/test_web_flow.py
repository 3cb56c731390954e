"""The creator's flow without surprises: sign-up errors at once, the editor's defaults, flags, and publishing."""

from __future__ import annotations

import re

from sqlalchemy import select

from instant402.resources.models import Resource
from tests.browser.helpers import WebUser, resource_form, sign_up
from tests.test_web_pages import catalog, create_resource, creator_with_key, web_app  # noqa: F401 fixtures


async def test_sign_up_shows_every_field_error_at_once(app, web_app):  # noqa: F811
    anon = WebUser(web_app)
    bad = {"username": "X", "email": "nope", "password": "short", "payout_address": "0x12"}
    r = await anon.post("/signup", bad, page="/signup")
    assert r.status_code == 422
    for name in ("username", "email", "password", "payout_address"):
        assert f'id="e-{name}"' in r.text, name
    # The API answers the same: every field in one 422.
    r = await anon.http.post(
        "/api/v1/auth/signup", json={"username": "X", "email": "nope", "password": "correct horse battery"}
    )
    assert r.status_code == 422 and set(r.json()["error"]["details"]["fields"]) == {"username", "email"}


async def test_a_default_makes_a_parameter_optional(app, web_app, emulator, catalog, database):  # noqa: F811
    user, _ = await creator_with_key(web_app, emulator)
    params = [
        {"name": "topic", "type": "string", "required": "1", "description": "What about"},
        {"name": "mood", "type": "string", "required": "1", "default": "calm", "description": "The mood"},
    ]
    rid = await create_resource(user, params=params)
    async with database.session() as db:
        saved = (await db.get(Resource, rid)).parameters
    assert [(p["name"], p.get("required", False)) for p in saved] == [("topic", True), ("mood", False)]
    assert saved[1]["default"] == "calm"
    # A new row in the editor starts optional, as the API's parameters do.
    page = (await user.get("/resources/new")).text
    template = page.split("<template data-param-template>", 1)[1].split("</template>", 1)[0]
    assert 'id="p-__i__-required"' in template and "checked" not in template


async def test_unused_parameter_is_flagged_and_errors_read_as_fields(app, web_app, emulator, catalog):  # noqa: F811
    user, _ = await creator_with_key(web_app, emulator)
    params = [
        {"name": "topic", "type": "string", "required": "1"},
        {"name": "mood", "type": "string", "default": "calm"},
        {"name": "extra", "type": "string", "description": "never used"},
    ]
    rid = await create_resource(user, prompt_template="Write a {{mood}} haiku about {{topic}}.", params=params)
    page = (await user.get(f"/resources/{rid}/edit")).text
    rows = page.split("<template data-param-template>", 1)[0]
    notes = re.findall(r"data-unused-note (hidden)?\s*>.*?data-unused-name>(\w+)<", rows, re.S)
    assert notes == [("hidden", "topic"), ("hidden", "mood"), ("", "extra")]  # only the unused one shows
    # Errors: a summary in words linked to each field, and the message next to the field itself.
    form = resource_form(name="", price="abc", params=[{"name": "topic", "type": "integer", "default": "x"}])
    r = await user.post("/resources/new", form, page="/resources/new")
    assert r.status_code == 422
    summary = r.text.split('data-testid="form-errors"', 1)[1].split("</div>", 1)[0]
    assert 'href="#f-price">Price</a>' in summary and 'href="#p-0-default">Parameter 1 (topic): default</a>' in summary
    assert "price_atomic" not in summary and "parameters.0" not in summary
    assert 'id="e-parameters-0-default"' in r.text


async def test_save_and_publish_and_the_loss_confirmation(app, web_app, emulator, catalog, database):  # noqa: F811
    user, _ = await creator_with_key(web_app, emulator)
    r = await user.post("/resources/new", [*resource_form(), ("then", "publish")], page="/resources/new")
    assert r.status_code == 303 and re.fullmatch(r"/resources/\d+", r.headers["location"])
    rid = int(r.headers["location"].rsplit("/", 1)[1])
    async with database.session() as db:
        assert (await db.get(Resource, rid)).status == "published"
    # A price below the typical upstream cost: publishing asks first, and nothing is published until confirmed.
    costly = resource_form(name="Opus haiku", model_id="anthropic/claude-opus-4.1", price="0.001", max_tokens="4000")
    r = await user.post("/resources/new", [*costly, ("then", "publish")], page="/resources/new")
    assert r.status_code == 409 and "a typical call loses" in r.text and 'data-testid="confirm-publish"' in r.text
    async with database.session() as db:
        loser = await db.scalar(select(Resource).where(Resource.name == "Opus haiku"))
        assert loser.status == "draft"
    owner = (await user.get(f"/resources/{loser.id}")).text
    assert 'data-confirm="At this price a typical call loses money' in owner  # the button asks in the browser too
    r = await user.post(f"/resources/{loser.id}/publish", {}, page=f"/resources/{loser.id}")
    assert r.status_code == 409
    r = await user.post(f"/resources/{loser.id}/publish", {"confirm_loss": "1"}, page=f"/resources/{loser.id}")
    assert r.status_code == 303
    async with database.session() as db:
        assert (await db.get(Resource, loser.id)).status == "published"


async def test_editor_has_save_and_publish_for_drafts_only(app, web_app, emulator, catalog):  # noqa: F811
    user = await sign_up(web_app)
    assert 'data-testid="save-publish"' in (await user.get("/resources/new")).text
    user, _ = await creator_with_key(web_app, emulator)
    rid = await create_resource(user)
    assert 'data-testid="save-publish"' in (await user.get(f"/resources/{rid}/edit")).text
    await user.post(f"/resources/{rid}/publish", {}, page=f"/resources/{rid}")
    assert 'data-testid="save-publish"' not in (await user.get(f"/resources/{rid}/edit")).text
