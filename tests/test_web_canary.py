"""No page shows a creator's key, and only the owner's editor shows the hidden prompt; others get 404s."""

from __future__ import annotations

import re
import secrets

import pytest

from instant402.app import create_app
from instant402.catalog.sync import sync_catalog
from tests.browser.helpers import WebUser, resource_form, sign_up

CANARY_PROMPT = "CANARY-SYSTEM-PROMPT-7d1f"
CANARY_TEMPLATE = "CANARY-TEMPLATE-93ab"


@pytest.fixture(scope="module")
async def web_app(app, settings, emulator_server):
    application = create_app(settings.model_copy(update={"openrouter_base_url": emulator_server.base_url}))
    yield application
    await application.state.db.dispose()


async def _setup(web_app, emulator):
    report = await sync_catalog(web_app.state.db, emulator.base_url)
    assert report.ok
    owner = await sign_up(web_app)
    key = "sk-or-v1-" + "CANARYKEY" + secrets.token_hex(24)
    emulator.add_key(key)
    assert (await owner.post("/settings/key", {"key": key}, page="/settings")).status_code == 200
    ids = []
    for name in ("Canary one", "Canary two"):
        form = resource_form(
            name=name,
            system_prompt=f"{CANARY_PROMPT} about {{{{topic}}}}",
            prompt_template=f"{CANARY_TEMPLATE} {{{{mood}}}} {{{{topic}}}}",
        )
        r = await owner.post("/resources/new", form, page="/resources/new")
        assert r.status_code == 303, r.text
        ids.append(int(re.search(r"/resources/(\d+)/edit", r.headers["location"]).group(1)))
    published, draft = ids
    assert (await owner.post(f"/resources/{published}/publish", {}, page="/")).status_code == 303
    other = await sign_up(web_app)
    return owner, key, published, draft, other


def secrets_in(text: str, key: str) -> list[str]:
    pairs = (("key", key), ("prompt", CANARY_PROMPT), ("template", CANARY_TEMPLATE))
    return [name for name, value in pairs if value in text]


async def test_no_page_leaks_the_key_or_the_hidden_prompt(app, web_app, emulator):
    owner, key, published, draft, other = await _setup(web_app, emulator)
    slug = "canary-one"
    shared = [
        "/",
        "/?days=90",
        "/usage.csv",
        "/settings",
        "/models",
        "/models?tab=all",
        "/models?tab=all&show=openai/gpt-4o-mini",
        "/resources/new",
        "/explore",
        "/explore?q=canary",
        f"/r/{owner.username}/{slug}",
        "/login",
        "/signup",
    ]
    own = [f"/resources/{rid}{suffix}" for rid in (published, draft) for suffix in ("", "/preview", "/edit")]
    anon = WebUser(web_app)
    seen = 0
    for visitor, paths in ((owner, shared + own), (other, shared), (anon, shared)):
        for path in paths:
            r = await visitor.get(path)
            assert r.status_code in (200, 303), (path, r.status_code)
            leaks = secrets_in(r.text, key)
            if visitor is owner and path.endswith("/edit"):
                leaks = [x for x in leaks if x == "key"]  # the owner's editor shows the owner's own prompt
            assert not leaks, (visitor.username, path, leaks)
            seen += r.status_code == 200
    assert seen >= len(shared) * 2 + len(own)
    # The editor does show the owner their prompt (so the check above can fail).
    assert CANARY_PROMPT in (await owner.get(f"/resources/{published}/edit")).text
    # Forms that fail keep the key out of the page.
    r = await owner.post("/settings/key", {"key": key + "!"}, page="/settings")
    assert r.status_code == 422 and key not in r.text


async def test_another_creators_pages_and_forms_answer_404(app, web_app, emulator):
    owner, key, published, draft, other = await _setup(web_app, emulator)
    for rid in (published, draft):
        for suffix in ("", "/edit", "/preview"):
            r = await other.get(f"/resources/{rid}{suffix}")
            assert r.status_code == 404, suffix
            assert CANARY_PROMPT not in r.text and key not in r.text
        for action in ("edit", "publish", "pause", "resume", "delete"):
            data = resource_form(name="Hijack") if action == "edit" else {}
            r = await other.post(f"/resources/{rid}/{action}", data, page="/")
            assert r.status_code == 404, action
    # Nothing changed: the owner still sees both, unchanged and in their states.
    page = await owner.get(f"/resources/{published}")
    assert 'data-testid="status">published<' in page.text and "Canary one" in page.text
    assert 'data-testid="status">draft<' in (await owner.get(f"/resources/{draft}")).text
    # Drafts have no public page; an unknown resource neither.
    anon = WebUser(web_app)
    assert (await anon.get(f"/r/{owner.username}/canary-two")).status_code == 404
    assert (await anon.get(f"/r/{owner.username}/nothing-here")).status_code == 404
