"""A creator's whole journey in a real browser, and a buyer paying with the sandbox wallet on the devnet.

sign up → key refused, then saved → browse and filter models → create a resource with parameters → test run →
publish → public page → pay with the sandbox wallet → calls and earnings on the dashboard. A screenshot of each
page at desktop and phone width goes to test-artifacts/browser/.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import urlparse

import pytest

from instant402.catalog.sync import sync_catalog
from instant402.config import Mode
from tests.browser.conftest import run_with_browser
from tests.support.market import live_market

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def sandbox(app, settings_overrides, emulator_server, devnet, devnet_facilitator, migrated):
    """The app in sandbox mode (a funded buyer key) on the emulator and the devnet, served over HTTP."""
    buyer = devnet.buyers[-1]
    with live_market(
        settings_overrides,
        emulator_server,
        devnet,
        devnet_facilitator,
        mode=Mode.sandbox,
        buyer_private_key=buyer.private_key,
        catalog_sync_enabled=False,  # the test syncs the catalog itself, after each table clean-up
    ) as market:
        yield market


@pytest.fixture
async def catalog(sandbox, database, emulator):
    # Tables are emptied after every test; the sandbox catalog is small, so sync it again. The test loop's own
    # engine does it: the served app's engine belongs to the server thread's loop.
    report = await sync_catalog(database, emulator.base_url)
    assert report.ok, report


class Journey:
    def __init__(self, page, base: str, artifacts, outside: list[str]):
        self.page = page
        self.base = base
        self.artifacts = artifacts
        self.outside = outside
        self.step = 0

    def go(self, path: str) -> None:
        response = self.page.goto(self.base + path)
        assert response is not None and response.status < 400, (path, response and response.status)

    def shot(self, name: str, phone: bool = True) -> None:
        """Screenshot the page at desktop width and, for most pages, at phone width too."""
        self.step += 1
        stem = f"{self.step:02d}-{name}"
        self.page.screenshot(path=str(self.artifacts / f"{stem}-desktop.png"), full_page=True)
        if phone:
            self.page.set_viewport_size(PHONE)
            self.page.screenshot(path=str(self.artifacts / f"{stem}-phone.png"), full_page=True)
            # Nothing may be wider than a phone screen (tables scroll inside their own box).
            overflow = self.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{name} is {overflow}px wider than a phone"
            self.page.set_viewport_size(DESKTOP)


def test_creator_journey_to_a_paid_call(sandbox, catalog, chromium_path, artifacts, emulator):
    run_with_browser(chromium_path, lambda browser: journey(browser, sandbox, artifacts, emulator))


def journey(browser, market, artifacts, emulator) -> None:
    outside: list[str] = []
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    base_host = urlparse(market.url).netloc

    def guard(route):
        # Pages must not load anything from another host: record and refuse it.
        if urlparse(route.request.url).netloc != base_host:
            outside.append(route.request.url)
            return route.abort()
        return route.continue_()

    context.route("**/*", guard)
    page.on("dialog", lambda d: d.accept())
    j = Journey(page, market.url, artifacts, outside)

    # Landing and sign-up.
    j.go("/")
    j.shot("landing")
    username = f"j{secrets.token_hex(4)}"
    payout = market.devnet.new_account().address
    j.go("/signup")
    page.fill("#f-username", "X")
    page.fill("#f-email", "nope")
    page.fill("#f-password", "short")
    page.click("button[type=submit]")
    assert page.locator("#e-username").is_visible()
    j.shot("signup-errors")
    page.fill("#f-username", username)
    page.fill("#f-email", f"{username}@example.com")
    page.fill("#f-password", "correct horse battery")
    page.fill("#f-payout_address", payout)
    page.click("button[type=submit]")
    page.wait_for_url(market.url + "/")
    assert "No OpenRouter key" in page.content()
    j.shot("dashboard-new")

    # An invalid key is refused; a valid one is saved and verified.
    j.go("/settings")
    page.fill("#f-key", "sk-or-v1-" + secrets.token_hex(32))
    page.click("#key-card form[action='/settings/key'] button")
    assert "rejected" in page.locator("#e-key").inner_text()
    j.shot("settings-key-refused")
    key = "sk-or-v1-" + secrets.token_hex(32)
    emulator.add_key(key, limit="20")
    page.fill("#f-key", key)
    page.click("#key-card form[action='/settings/key'] button")
    assert page.locator("[data-testid=key-status]").inner_text() == "verified"
    assert key not in page.content()
    j.shot("settings-key-verified")

    # Browse and filter models, open one, use it.
    j.go("/models")
    j.shot("models-curated")
    page.click("text=All models")
    page.check("input[name=structured_output]")
    page.fill("#f-max_prompt_price", "1")
    page.select_option("#f-sort", "prompt_price")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r".*structured_output=1.*"))
    assert page.locator("[data-model-id='openai/gpt-4o-mini']").count() == 1
    page.click("[data-model-id='openai/gpt-4o-mini']")
    detail = page.locator("[data-testid=model-detail]")
    assert "per 1M tokens" in detail.inner_text()
    j.shot("models-filtered-detail")
    page.click("text=Use this model")
    page.wait_for_url(re.compile(r".*/resources/new\?model_id=.*"))
    assert page.input_value("#f-model_id") == "openai/gpt-4o-mini"

    # The editor proposes a parameter row for each placeholder; the live estimate shows the margin.
    page.fill("#f-name", "Haiku writer")
    page.fill("#f-description", "Writes a short haiku about any topic, in the mood you choose.")
    page.fill("#f-system_prompt", "You are a careful poet.")
    page.fill("#f-prompt_template", "Write a {{mood}} haiku about {{topic}}.")
    page.click("[data-propose=mood]")
    page.click("[data-propose=topic]")
    assert page.locator("[data-detected]").is_hidden()
    page.select_option("#p-0-type", "enum")
    page.fill("#p-0-enum", "calm, stormy")
    page.fill("#p-0-default", "calm")
    page.uncheck("#p-0-required")
    page.fill("#p-0-description", "The mood of the poem")
    page.fill("#p-1-description", "What the haiku is about")
    page.fill("#p-1-max_length", "200")
    page.fill("#f-price", "0.01")
    page.fill("#f-max_tokens", "200")
    page.locator("[data-testid=live-margin]").wait_for()
    assert "Margin" in page.locator("[data-testid=live-margin]").inner_text()
    j.shot("editor-new")
    page.click("[data-testid=save]")
    page.wait_for_url(re.compile(r".*/resources/\d+/edit\?saved=1"))
    rid = int(re.search(r"/resources/(\d+)/", page.url).group(1))
    j.shot("editor-saved")

    # Preview as a buyer: no hidden prompt.
    page.click("[data-testid=preview-link]")
    assert page.locator("[data-testid=preview-banner]").is_visible()
    assert "careful poet" not in page.content()
    j.shot("public-preview")

    # Owner's page: a test run shows the output and the cost breakdown.
    j.go(f"/resources/{rid}")
    page.fill("#x-topic", "the sea at dawn")
    page.click("#test-form button[type=submit]")
    result = page.locator("#test-result")
    result.locator("[data-testid=output], .error").first.wait_for(timeout=60_000)
    test_run_text = result.inner_text()
    assert "Test runs are not available" not in test_run_text, "the owner test-run endpoint is missing"
    assert result.locator("[data-testid=output]").count() == 1, test_run_text
    assert "Upstream cost" in result.locator("[data-testid=breakdown]").inner_text()
    j.shot("owner-test-run")

    # Publish, then the public page as an anonymous buyer.
    page.click("form[action$='/publish'] button")
    assert page.locator("[data-testid=status]").inner_text() == "published"
    buyer = browser.new_context(viewport=DESKTOP)
    buyer.route("**/*", guard)
    bpage = buyer.new_page()
    bj = Journey(bpage, market.url, artifacts, outside)
    bj.step = j.step
    bj.go(f"/r/{username}/haiku-writer")
    text = bpage.content()
    assert "$0.01" in text and "x402HttpxClient" in text and f"instant402 call {username}/haiku-writer" in text
    assert "careful poet" not in text and "{{topic}}" not in text
    bj.shot("public-page")

    # Pay with the sandbox wallet: the answer and a receipt; the chain moved exactly the price.
    before = market.devnet.balance_of(payout)
    bpage.fill("#t-topic", "autumn leaves")
    bpage.click("#try button[type=submit]")
    receipt = bpage.locator("[data-testid=receipt]")
    receipt.wait_for(timeout=60_000)
    assert "0x" in receipt.inner_text()
    assert bpage.locator("[data-testid=try-result] [data-testid=output]").inner_text().strip()
    bj.shot("public-paid")
    assert market.devnet.balance_of(payout) == before + 10_000

    # The dashboard shows the call and the earnings.
    j.step = bj.step
    j.go("/")
    assert page.locator("[data-testid=calls-today]").inner_text() == "1"
    assert page.locator("[data-testid=earnings-today]").inner_text() == "$0.01"
    assert page.locator("[data-testid=calls-30d]").inner_text() == "1"
    j.shot("dashboard-earning")
    j.go(f"/resources/{rid}")
    assert "succeeded" in page.locator("[data-testid=usage-table]").inner_text()
    j.shot("owner-usage")
    j.go("/explore")
    j.shot("explore")

    assert outside == [], f"pages asked outside hosts for: {outside}"
    buyer.close()
    context.close()
