"""Creator and public pages through httpx: every page renders, forms show errors next to fields, actions work."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import update

from instant402.app import create_app
from instant402.catalog.models import CatalogModel
from instant402.catalog.sync import sync_catalog
from instant402.db.base import utcnow
from instant402.resources.models import Resource
from instant402.usage.models import UsageRecord
from tests.browser.helpers import PAYOUT, WebUser, resource_form, sign_up


@pytest.fixture(scope="module")
async def web_app(app, settings, emulator_server):
    """The app with the emulator as OpenRouter (keys are checked live, the catalog comes from it)."""
    application = create_app(settings.model_copy(update={"openrouter_base_url": emulator_server.base_url}))
    yield application
    await application.state.db.dispose()


@pytest.fixture
async def catalog(app, web_app, emulator):
    report = await sync_catalog(web_app.state.db, emulator.base_url)
    assert report.ok, report


def new_key(emulator, limit=None) -> str:
    key = "sk-or-v1-" + secrets.token_hex(32)
    emulator.add_key(key, limit=limit)
    return key


async def creator_with_key(web_app, emulator, limit=None) -> tuple[WebUser, str]:
    user = await sign_up(web_app)
    key = new_key(emulator, limit)
    r = await user.post("/settings/key", {"key": key}, page="/settings")
    assert r.status_code == 200 and "verified" in r.text, r.text
    return user, key


async def create_resource(user: WebUser, **changes) -> int:
    r = await user.post("/resources/new", resource_form(**changes), page="/resources/new")
    assert r.status_code == 303, r.text
    return int(re.search(r"/resources/(\d+)/edit", r.headers["location"]).group(1))


async def test_creator_pages_send_anonymous_visitors_to_login(app, web_app):
    anon = WebUser(web_app)
    for path in ("/settings", "/models", "/resources/new", "/resources/1", "/resources/1/edit", "/resources/1/preview"):
        r = await anon.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next=")
    # Logging in from there comes back to the page.
    user = await sign_up(web_app)
    page = await anon.get("/login?next=/settings")
    assert 'name="next" value="/settings"' in page.text
    r = await anon.post(
        "/login", {"login": user.username, "password": "correct horse battery", "next": "/settings"}, page="/login"
    )
    await anon.post("/logout", {}, page="/")
    assert r.status_code == 303 and r.headers["location"] == "/settings"
    login = {"login": user.username, "password": "correct horse battery", "next": "//evil.example"}
    r = await anon.post("/login", login, page="/login")
    assert r.headers["location"] == "/"


async def test_key_card_saves_refuses_verifies_and_removes(app, web_app, emulator, catalog):
    user = await sign_up(web_app)
    page = await user.get("/settings")
    assert page.status_code == 200 and "no key" in page.text and 'for="f-key"' in page.text
    # A malformed key and a key OpenRouter rejects are refused next to the field; nothing is saved.
    r = await user.post("/settings/key", {"key": "not-a-key"}, page="/settings")
    assert r.status_code == 422 and 'id="e-key"' in r.text and "sk-or-v1-" in r.text
    unknown = "sk-or-v1-" + secrets.token_hex(32)
    r = await user.post("/settings/key", {"key": unknown}, page="/settings")
    assert r.status_code == 422 and "rejected" in r.text and unknown not in r.text
    assert "no key" in (await user.get("/settings")).text
    # A valid key: verified, masked, credit shown, never the key itself.
    key = new_key(emulator, limit="0.5")
    r = await user.post("/settings/key", {"key": key}, page="/settings")
    assert r.status_code == 200, r.text
    assert "verified" in r.text and key not in r.text and key[-4:] in r.text
    assert "$0.50" in r.text and "low credit" in r.text
    # The dashboard warns about the low credit.
    assert "Low OpenRouter credit" in (await user.get("/")).text
    # Verify now after a top-up: the new credit shows.
    emulator.top_up(key, "5")
    r = await user.post("/settings/key/verify", {}, page="/settings")
    assert r.status_code == 200 and "$5.00" in r.text
    # Remove: the button says how many published resources it pauses, then they are paused.
    rid = await create_resource(user)
    assert (await user.post(f"/resources/{rid}/publish", {}, page=f"/resources/{rid}")).status_code == 303
    page = await user.get("/settings")
    assert "1 published resource affected" in page.text
    r = await user.post("/settings/key/remove", {}, page="/settings")
    assert r.status_code == 200 and "1 resource(s)" in r.text and "no key" in r.text
    home = await user.get("/")
    # One condition, one alert: the paused resource is named in the key's alert, not in a second one.
    assert "No OpenRouter key is saved" in home.text and "Paused until then:" in home.text
    assert home.text.count('data-testid="alert"') == 1


async def test_payout_address_and_api_tokens(app, web_app):
    user = await sign_up(web_app, payout=None)
    assert "No payout address" in (await user.get("/")).text
    r = await user.post("/settings/payout", {"payout_address": "0x123"}, page="/settings")
    assert r.status_code == 422 and 'id="e-payout_address"' in r.text and 'value="0x123"' in r.text
    r = await user.post("/settings/payout", {"payout_address": PAYOUT}, page="/settings")
    assert r.status_code == 200 and "Payout address saved" in r.text
    assert "No payout address" not in (await user.get("/")).text
    # A token is shown once, works for the API, then can be revoked.
    r = await user.post("/settings/tokens", {"token_name": ""}, page="/settings")
    assert r.status_code == 422 and 'id="e-token_name"' in r.text
    r = await user.post("/settings/tokens", {"token_name": "laptop"}, page="/settings")
    token = re.search(r'data-testid="new-token">([^<]+)<', r.text).group(1)
    assert token not in (await user.get("/settings")).text
    api = WebUser(web_app)
    assert (await api.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    token_id = re.search(r"/settings/tokens/(\d+)/revoke", (await user.get("/settings")).text).group(1)
    assert (await user.post(f"/settings/tokens/{token_id}/revoke", {}, page="/settings")).status_code == 200
    assert (await api.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})).status_code == 401
    # Someone else's token id is not found.
    other = await sign_up(web_app)
    assert (await other.post(f"/settings/tokens/{token_id}/revoke", {}, page="/settings")).status_code == 404


async def test_model_browser_tabs_filters_sort_pages_and_detail(app, web_app, catalog):
    user = await sign_up(web_app)
    curated = await user.get("/models")
    assert curated.status_code == 200 and 'aria-current="page">Curated' in curated.text
    all_models = await user.get("/models?tab=all")
    total = int(re.search(r'data-testid="model-count">(\d+)', all_models.text).group(1))
    assert total > 0
    free = await user.get("/models?tab=all&free=1")
    n_free = int(re.search(r'data-testid="model-count">(\d+)', free.text).group(1))
    assert 0 < n_free < total
    assert "free" in free.text
    images = await user.get("/models?tab=all&image_output=1")
    ids = re.findall(r'data-model-id="([^"]+)"', images.text)
    assert ids
    cheap = await user.get("/models?tab=all&sort=prompt_price&max_prompt_price=1")
    assert cheap.status_code == 200
    # Bad filter values come back next to their fields.
    bad = await user.get("/models?tab=all&max_prompt_price=lots&min_context=x")
    assert 'id="e-max_prompt_price"' in bad.text or 'id="e-min_context"' in bad.text
    assert 'id="e-provider"' in (await user.get("/models?tab=all&provider=nobody")).text
    # Pagination.
    if total > 20:
        page2 = await user.get("/models?tab=all&page=2")
        assert "Page 2 of" in page2.text
    # The detail panel: price per 1M tokens, context, badges and a link into the editor.
    detail = await user.get("/models?tab=all&show=openai/gpt-4o-mini")
    panel = detail.text.split('data-testid="model-detail"')[1]
    assert "per 1M tokens" in panel and "Context" in panel and "Expires" in panel
    assert "/resources/new?model_id=openai/gpt-4o-mini" in panel
    picked = await user.get("/resources/new?model_id=openai/gpt-4o-mini")
    assert 'value="openai/gpt-4o-mini"' in picked.text


async def test_editor_shows_field_errors_and_saves_a_draft(app, web_app, emulator, catalog):
    user, _ = await creator_with_key(web_app, emulator)
    # Unconvertible values, an undeclared placeholder and a price with 7 decimals: each next to its field.
    form = resource_form(
        price="0.0000001",
        prompt_template="About {{topic}} and {{unknown}}",
        params=[{"name": "topic", "type": "string", "required": "1"}, {"name": "n", "type": "integer", "default": "x"}],
    )
    r = await user.post("/resources/new", form, page="/resources/new")
    assert r.status_code == 422
    assert 'id="e-price"' in r.text and "6 digits" in r.text
    assert 'id="e-parameters-1-default"' in r.text
    # The form keeps what was typed.
    assert "About {{topic}} and {{unknown}}" in r.text
    r = await user.post("/resources/new", resource_form(prompt_template="About {{topic}} {{unknown}}"), page="/")
    assert r.status_code == 422 and "unknown" in r.text and 'id="e-prompt_template"' in r.text
    r = await user.post("/resources/new", resource_form(model_id="nobody/nothing"), page="/")
    assert r.status_code == 422 and 'id="e-model_id"' in r.text
    r = await user.post("/resources/new", resource_form(price="0.0001"), page="/")
    assert r.status_code == 422 and 'id="e-price"' in r.text
    # A good one is saved as a draft and opens in the editor with its cost estimate.
    rid = await create_resource(user)
    edit = await user.get(f"/resources/{rid}/edit?saved=1")
    assert edit.status_code == 200 and "Saved." in edit.text and "Upstream cost" in edit.text
    assert 'value="topic"' in edit.text and "calm, stormy" in edit.text
    # Editing keeps the slug and changes the price.
    r = await user.post(f"/resources/{rid}/edit", resource_form(price="0.02", slug="haiku-writer"), page="/")
    assert r.status_code == 303
    assert "$0.02" in (await user.get(f"/resources/{rid}")).text
    # A slug that is taken is reported on the slug field.
    other = await create_resource(user, name="Other", slug="other")
    r = await user.post(f"/resources/{other}/edit", resource_form(slug="haiku-writer"), page="/")
    assert r.status_code == 409 and 'id="e-slug"' in r.text


async def test_json_and_image_outputs_and_schema_errors(app, web_app, emulator, catalog):
    user, _ = await creator_with_key(web_app, emulator)
    r = await user.post(
        "/resources/new", resource_form(output_kind="json", output_schema="{not json"), page="/resources/new"
    )
    assert r.status_code == 422 and 'id="e-output_schema"' in r.text
    schema = '{"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}'
    rid = await create_resource(user, output_kind="json", output_schema=schema, name="Titles")
    assert "&#34;required&#34;: [" in (await user.get(f"/resources/{rid}/edit")).text
    # A text model cannot make images: the error sits on the output field.
    r = await user.post("/resources/new", resource_form(output_kind="image", name="Pics"), page="/")
    assert r.status_code == 422 and 'id="e-output_kind"' in r.text


async def test_publish_preview_public_page_and_explore(app, web_app, emulator, catalog):
    user = await sign_up(web_app, payout=None)
    rid = await create_resource(user)
    # Publishing without a payout address or a key says what is missing.
    r = await user.post(f"/resources/{rid}/publish", {}, page=f"/resources/{rid}")
    assert r.status_code == 422 and 'data-testid="action-errors"' in r.text
    assert "payout address" in r.text and "OpenRouter key" in r.text
    await user.post("/settings/payout", {"payout_address": PAYOUT}, page="/settings")
    await user.post("/settings/key", {"key": new_key(emulator)}, page="/settings")
    # The preview is the buyer's page, without the system prompt or the template.
    preview = await user.get(f"/resources/{rid}/preview")
    assert preview.status_code == 200 and 'data-testid="preview-banner"' in preview.text
    assert "You are a poet." not in preview.text and "{{topic}}" not in preview.text
    public_url = f"/r/{user.username}/haiku-writer"
    assert (await WebUser(web_app).get(public_url)).status_code == 404  # a draft is not public
    r = await user.post(f"/resources/{rid}/publish", {}, page=f"/resources/{rid}")
    assert r.status_code == 303
    page = await WebUser(web_app).get(public_url)
    assert page.status_code == 200
    body = page.text
    assert "$0.01" in body and "http://testserver/" + user.username + "/haiku-writer" in body
    assert "x402HttpxClient" in body and "instant402 call " + user.username + "/haiku-writer" in body
    assert "--param" in body and "topic" in body and "calm" in body
    assert "You are a poet." not in body and "Write a {{mood}}" not in body
    assert "Try it with the sandbox wallet" not in body  # test mode, not the sandbox
    # A text resource tells buyers how to stream it and what a stream cut short costs them.
    assert 'data-testid="stream-policy"' in body and "text/event-stream" in body and "not charged" in body
    # Explore lists it and searches.
    explore = await WebUser(web_app).get("/explore?q=haiku")
    assert public_url in explore.text
    assert public_url not in (await WebUser(web_app).get("/explore?q=zzzz-nothing")).text
    assert public_url in (await WebUser(web_app).get("/explore?kind=text&sort=price")).text
    assert public_url not in (await WebUser(web_app).get("/explore?kind=image")).text
    # Pause, resume, and the status on the dashboard.
    assert (await user.post(f"/resources/{rid}/pause", {}, page=f"/resources/{rid}")).status_code == 303
    assert "paused for now" in (await WebUser(web_app).get(public_url)).text
    assert "Paused by its creator" in (await user.get("/")).text
    assert (await user.post(f"/resources/{rid}/resume", {}, page=f"/resources/{rid}")).status_code == 303
    # The sandbox try form is not there outside the sandbox.
    anon = WebUser(web_app)
    assert (await anon.post(f"/r/{user.username}/haiku-writer/try", {"topic": "x"}, page="/signup")).status_code == 404


async def test_owner_page_usage_log_charts_and_dashboard_numbers(app, web_app, emulator, catalog, database):
    user, _ = await creator_with_key(web_app, emulator)
    rid = await create_resource(user)
    await user.post(f"/resources/{rid}/publish", {}, page=f"/resources/{rid}")
    async with database.session() as db:
        owner_id = (await db.get(Resource, rid)).owner_id
        now = utcnow()
        for i in range(25):
            db.add(
                UsageRecord(
                    resource_id=rid,
                    owner_id=owner_id,
                    kind="paid",
                    status="succeeded" if i % 5 else "failed",
                    amount_atomic=10_000 if i % 5 else 0,
                    payer="0x" + "12" * 20,
                    network="eip155:84532",
                    transaction_hash=("0x" + f"{i:064x}") if i % 5 else None,
                    model_requested="openai/gpt-4o-mini",
                    model_used="openai/gpt-4o-mini",
                    prompt_tokens=20,
                    completion_tokens=30,
                    upstream_cost=Decimal("0.0001"),
                    error_code=None if i % 5 else "upstream_error",
                    created_at=now - timedelta(days=i % 3, minutes=i),
                )
            )
        db.add(UsageRecord(resource_id=rid, owner_id=owner_id, kind="test", status="succeeded", created_at=now))
        await db.commit()
    page = await user.get(f"/resources/{rid}")
    assert page.status_code == 200
    assert "26 attempts" in page.text and "Page 1 of 2" in page.text
    assert page.text.count("<svg") >= 2 and "Paid calls per day" in page.text
    assert "http://" not in re.sub(r'xmlns(:\w+)?="[^"]+"', "", page.text.split("<svg", 1)[1].split("</svg>")[0])
    failed = await user.get(f"/resources/{rid}?status=failed")
    assert "5 attempts" in failed.text
    tests = await user.get(f"/resources/{rid}?kind=test")
    assert "1 attempt" in tests.text
    assert "Page 2 of 2" in (await user.get(f"/resources/{rid}?page=2")).text
    # Dashboard: today's and 30 days' calls and earnings; cost and margin.
    home = await user.get("/")
    # Counted by UTC day, as the dashboard counts: shortly after midnight some of the rows above are yesterday's.
    today = [i for i in range(25) if (now - timedelta(days=i % 3, minutes=i)).date() == now.date()]
    assert f'data-testid="today-settled">{sum(1 for i in today if i % 5)}<' in home.text
    assert 'data-testid="window-settled">20<' in home.text and 'data-testid="window-failed">5<' in home.text
    assert 'data-testid="window-tests">1<' in home.text
    assert 'data-testid="earnings-window">$0.20<' in home.text  # 20 succeeded at $0.01
    assert 'data-testid="cost-window">$0.0025<' in home.text  # 25 attempts at $0.0001
    assert 'data-testid="margin-window">$0.20<' in home.text  # $0.1975 to the cent


async def test_dashboard_alerts_for_expiring_models_and_keys_without_credit(app, web_app, emulator, catalog, database):
    user, key = await creator_with_key(web_app, emulator)
    rid = await create_resource(user)
    async with database.session() as db:
        soon = (utcnow() + timedelta(days=5)).date()
        model = update(CatalogModel).where(CatalogModel.id == "openai/gpt-4o-mini")
        await db.execute(model.values(expiration_date=soon))
        await db.commit()
    home = await user.get("/")
    assert "expires on" in home.text and f"/resources/{rid}/edit" in home.text
    emulator.top_up(key, "0")
    r = await user.post("/settings/key/verify", {}, page="/settings")
    assert r.status_code == 200 and "out of credit" in r.text
    assert "out of credit" in (await user.get("/")).text


async def test_forms_need_their_csrf_token(app, web_app):
    user = await sign_up(web_app)
    for path in ("/settings/payout", "/settings/tokens", "/resources/new", "/settings/key"):
        r = await user.http.post(path, data={"token_name": "x", "payout_address": PAYOUT})
        assert r.status_code == 403, path


async def test_sandbox_settings_offer_the_sandbox_key(app, settings, emulator, tmp_path):
    from instant402.config import Mode
    from instant402.sandbox.demo import sandbox_openrouter_key

    key = sandbox_openrouter_key(tmp_path)
    emulator.add_key(key, limit="25")
    sandbox = create_app(
        settings.model_copy(
            update={"mode": Mode.sandbox, "data_dir": tmp_path, "openrouter_base_url": emulator.base_url}
        )
    )
    user = await sign_up(sandbox)
    page = await user.get("/settings")
    assert "Use the sandbox key" in page.text and key not in page.text
    r = await user.post("/settings/key/sandbox", {}, page="/settings")
    assert r.status_code == 200 and "verified" in r.text and key not in r.text and key[-4:] in r.text
    await sandbox.state.db.dispose()


async def test_sandbox_key_button_is_sandbox_only(app, web_app):
    user = await sign_up(web_app)
    page = await user.get("/settings")
    assert page.status_code == 200 and "Use the sandbox key" not in page.text
    r = await user.post("/settings/key/sandbox", {}, page="/settings")
    assert r.status_code == 404


async def test_editor_saves_metered_pricing_and_shows_the_range_per_call(app, web_app, emulator, catalog, database):
    user, _ = await creator_with_key(web_app, emulator)
    metered = {"pricing_mode": "metered", "markup": "1.5", "fee": "0.0005", "max_price": "0.02"}
    r = await user.post("/resources/new", resource_form(**{**metered, "max_price": "0.0001"}), page="/")
    assert r.status_code == 422 and 'id="e-max_price"' in r.text
    rid = await create_resource(user, **metered)
    async with database.session() as db:
        row = await db.get(Resource, rid)
    assert (row.pricing_mode, row.markup, row.fee_atomic, row.max_price_atomic, row.price_atomic) == (
        "metered", Decimal("1.5"), 500, 20_000, 20_000
    )  # fmt: skip
    edit = await user.get(f"/resources/{rid}/edit")
    assert 'data-testid="metered-range"' in edit.text and "at most $0.02" in edit.text
    assert '<option value="metered" selected>' in edit.text
    # Published, its public page says what a metered stream cut short costs: the part generated.
    assert (await user.post(f"/resources/{rid}/publish", {}, page=f"/resources/{rid}")).status_code == 303
    public = (await WebUser(web_app).get(f"/r/{user.username}/{row.slug}")).text
    policy = public[public.index('data-testid="stream-policy"') :]
    assert "you pay for the part generated" in policy and "not charged" not in policy[: policy.index("</p>")]
    # Back to flat: the metered fields are dropped.
    r = await user.post(f"/resources/{rid}/edit", resource_form(pricing_mode="flat", price="0.03"), page="/")
    assert r.status_code == 303, r.text
    async with database.session() as db:
        row = await db.get(Resource, rid)
    assert (row.pricing_mode, row.markup, row.max_price_atomic, row.price_atomic) == ("flat", None, None, 30_000)
