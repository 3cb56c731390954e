"""A creator's whole journey in a real browser, and a buyer paying with the sandbox wallet on the devnet.

sign up (every field error at once) → key refused, then saved → browse and filter models → create a resource with
parameters → compare models → test run → publish → public page → pay with the sandbox wallet; a failed call, a
refused payment and the key running out of credit → the dashboard's numbers, checked against the database and the
chain → call detail, CSV, settings. A screenshot of each page at desktop and phone width goes to
test-artifacts/browser/, and axe-core (from npm, injected from node_modules) checks each page for serious
accessibility violations.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import threading
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

import pytest
from sqlalchemy import func, select

from instant402.catalog.sync import sync_catalog
from instant402.config import Mode
from instant402.payments.buyer import pay_url
from instant402.usage.models import UsageRecord
from tests.browser.conftest import run_with_browser
from tests.support.market import live_market
from tests.support.x402 import buyer_client

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"

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


@pytest.fixture(scope="session")
def axe_script() -> Path | None:
    """axe-core from npm (``npm install`` in the project, as scripts/test does); None skips the check."""
    if AXE.is_file():
        return AXE
    if os.environ.get("INSTANT402_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"axe-core is required at {AXE}: run npm install in the project")
    return None


class Journey:
    def __init__(self, page, base: str, artifacts, outside: list[str], axe: Path | None = None):
        self.page = page
        self.base = base
        self.artifacts = artifacts
        self.outside = outside
        self.axe = axe
        self.step = 0
        self.checked: list[str] = []

    def accessible(self, name: str) -> None:
        """axe-core's serious and critical violations on this page (none allowed)."""
        if self.axe is None:
            return
        self.page.add_script_tag(path=str(self.axe))
        found = self.page.evaluate(
            """async () => {
              const r = await axe.run(document, { resultTypes: ["violations"] });
              return r.violations.filter((v) => ["serious", "critical"].includes(v.impact))
                .map((v) => v.id + ": " + v.help + " @ "
                  + v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", "));
            }"""
        )
        assert found == [], f"{name}: {found}"
        self.checked.append(name)

    def go(self, path: str) -> None:
        response = self.page.goto(self.base + path)
        assert response is not None and response.status < 400, (path, response and response.status)

    def shot(self, name: str, phone: bool = True) -> None:
        """Screenshot the page at desktop width and, for most pages, at phone width too."""
        self.step += 1
        stem = f"{self.step:02d}-{name}"
        self.accessible(name)
        self.page.screenshot(path=str(self.artifacts / f"{stem}-desktop.png"), full_page=True)
        if phone:
            self.page.set_viewport_size(PHONE)
            self.page.screenshot(path=str(self.artifacts / f"{stem}-phone.png"), full_page=True)
            # Nothing may be wider than a phone screen (tables scroll inside their own box).
            overflow = self.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{name} is {overflow}px wider than a phone"
            self.page.set_viewport_size(DESKTOP)


def in_thread(coro_fn):
    """Run an async call from the Playwright thread (whose own loop is busy) on a loop of its own."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(asyncio.run(coro_fn())))
    thread.start()
    thread.join()
    return out[0]


async def test_creator_journey_to_a_paid_call(
    sandbox, catalog, chromium_path, artifacts, emulator, database, axe_script
):
    seen: dict = {}
    run_with_browser(chromium_path, lambda browser: journey(browser, sandbox, artifacts, emulator, axe_script, seen))
    # The dashboard showed what the database holds: one settled call, its amount earned, and the rest apart.
    async with database.session() as db:
        rows = (
            await db.execute(
                select(UsageRecord.kind, UsageRecord.status, func.count()).group_by(
                    UsageRecord.kind, UsageRecord.status
                )
            )
        ).all()
        earned = await db.scalar(
            select(func.sum(UsageRecord.amount_atomic)).where(
                UsageRecord.kind == "paid", UsageRecord.status == "succeeded"
            )
        )
        tx = await db.scalar(
            select(UsageRecord.transaction_hash).where(UsageRecord.status == "succeeded", UsageRecord.kind == "paid")
        )
    counts = {(kind, status): n for kind, status, n in rows}
    assert seen["settled"] == str(counts[("paid", "succeeded")]) == "1"
    assert seen["failed"] == str(counts.get(("paid", "failed"), 0)) == "2"
    assert seen["refused"] == str(counts.get(("paid", "refused"), 0)) == "1"
    assert seen["tests"] == str(sum(n for (kind, _), n in counts.items() if kind == "test")) == "3"
    # ... and what the chain moved: the payout address got exactly the earnings.
    assert earned == seen["chain_delta"] == 10_000 and seen["earned"] == "$0.01"
    assert Decimal(earned) / 10**6 == Decimal("0.01")
    assert seen["detail_tx"] == tx
    if axe_script is None:
        pytest.skip("axe-core is not installed (npm install): the journey passed without the accessibility check")
    assert len(seen["axe_checked"]) >= 10


def journey(browser, market, artifacts, emulator, axe, seen) -> None:
    outside: list[str] = []
    # The accessibility check injects axe-core into each page, which the pages' CSP (script-src 'self') would block.
    context = browser.new_context(viewport=DESKTOP, bypass_csp=True)
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
    j = Journey(page, market.url, artifacts, outside, axe)

    # Landing and sign-up: every field's error at once.
    j.go("/")
    j.shot("landing")
    username = f"j{secrets.token_hex(4)}"
    payout = market.devnet.new_account().address
    j.go("/signup")
    page.fill("#f-username", "X")
    page.fill("#f-email", "nope")
    page.fill("#f-password", "short")
    page.click("button[type=submit]")
    for name in ("username", "email", "password"):
        assert page.locator(f"#e-{name}").is_visible(), name
    j.shot("signup-errors")
    page.fill("#f-username", username)
    page.fill("#f-email", f"{username}@example.com")
    page.fill("#f-password", "correct horse battery")
    page.fill("#f-payout_address", payout)
    page.click("button[type=submit]")
    page.wait_for_url(market.url + "/")
    assert "No OpenRouter key" in page.content()
    assert page.locator("[data-testid=alert]").count() == 1
    j.shot("dashboard-new")

    # An invalid key is refused; a valid one is saved and verified, with the check's time.
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
    assert "UTC" in page.locator("[data-testid=key-checked-at]").inner_text()
    assert key not in page.content()
    assert page.locator("#key-card details.danger-zone button.danger").is_hidden()  # Remove is not next to Verify
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

    # The editor proposes a parameter row for each placeholder; a default makes one optional; an unused one is
    # flagged; the live estimate shows the margin in the one money format.
    page.fill("#f-name", "Haiku writer")
    page.fill("#f-description", "Writes a short haiku about any topic, in the mood you choose.")
    page.fill("#f-system_prompt", "You are a careful poet.")
    page.fill("#f-prompt_template", "Write a {{mood}} haiku about {{topic}}.")
    page.click("[data-propose=mood]")
    page.click("[data-propose=topic]")
    assert page.locator("[data-detected]").is_hidden()
    page.select_option("#p-0-type", "enum")
    page.fill("#p-0-enum", "calm, stormy")
    page.check("#p-0-required")
    page.fill("#p-0-default", "calm")
    assert not page.is_checked("#p-0-required")  # typing a default made it optional
    page.fill("#p-0-description", "The mood of the poem")
    page.check("#p-1-required")
    page.fill("#p-1-description", "What the haiku is about")
    page.fill("#p-1-max_length", "200")
    page.click("[data-add-param]")
    page.fill("#p-2-name", "unused")
    assert page.locator("#p-2-name").locator("xpath=ancestor::fieldset").locator("[data-unused-note]").is_visible()
    page.click("fieldset[data-index='2'] [data-remove-param]")
    page.fill("#f-price", "0.01")
    page.fill("#f-max_tokens", "200")
    page.locator("[data-testid=live-margin]").wait_for()
    margin = page.locator("[data-testid=live-margin]").inner_text()
    assert re.search(r"Margin: typical \$0\.\d\d\d*, worst", margin), margin
    j.shot("editor-new")
    page.click("[data-testid=save]")
    page.wait_for_url(re.compile(r".*/resources/\d+/edit\?saved=1"))
    rid = int(re.search(r"/resources/(\d+)/", page.url).group(1))
    j.shot("editor-saved")

    # Compare two models side by side, as test runs.
    page.fill("#c-model-1", "anthropic/claude-haiku-4.5")
    page.fill("#c-topic", "a lighthouse")
    page.click("#compare-form button[type=submit]")
    page.locator("[data-testid=compare-card]").nth(1).wait_for(timeout=60_000)
    cards = page.locator("[data-testid=compare-card]")
    assert cards.count() == 2
    for i in range(2):
        text = cards.nth(i).inner_text()
        assert "Latency" in text and "Upstream cost" in text and "Margin at $0.01" in text, text
    j.shot("editor-compare")

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
    buyer = browser.new_context(viewport=DESKTOP, bypass_csp=True)  # axe-core is injected here too
    buyer.route("**/*", guard)
    bpage = buyer.new_page()
    bj = Journey(bpage, market.url, artifacts, outside, axe)
    bj.step = j.step
    bj.go(f"/r/{username}/haiku-writer")
    text = bpage.content()
    assert "$0.01" in text and "x402HttpxClient" in text and f"instant402 call {username}/haiku-writer" in text
    assert "careful poet" not in text and "{{topic}}" not in text
    assert bpage.locator("#t-topic").input_value() == "" and bpage.locator("#t-topic").get_attribute("placeholder")
    assert bpage.locator("dd[title='" + market.devnet.network + "']").inner_text() == "Sandbox devnet"
    bj.shot("public-page")

    # Pay with the sandbox wallet: the answer and a receipt; the chain moved exactly the price.
    before = market.devnet.balance_of(payout)
    bpage.fill("#t-topic", "autumn leaves")
    bpage.click("#try button[type=submit]")
    receipt = bpage.locator("[data-testid=receipt]")
    receipt.wait_for(timeout=60_000)
    assert "0x" in receipt.inner_text() and "10000 atomic units" in receipt.inner_text()
    assert bpage.locator("[data-testid=try-result] [data-testid=output]").inner_text().strip()
    bj.shot("public-paid")
    seen["chain_delta"] = market.devnet.balance_of(payout) - before

    # A call the model fails: the buyer is told outright that nothing was charged.
    emulator.fault(500, key=key, times=20)
    try:
        bpage.fill("#t-topic", "a storm")
        bpage.click("#try button[type=submit]")
        bpage.locator("[data-testid=not-charged]").wait_for(timeout=60_000)
    finally:
        emulator.clear_faults()
    assert "You were not charged." in bpage.locator("[data-testid=not-charged]").inner_text()
    bj.shot("public-failed")
    assert market.devnet.balance_of(payout) - before == seen["chain_delta"]

    # A payment from an empty wallet is refused before anything runs.
    poor = market.devnet.new_account()
    url = f"{market.url}/{username}/haiku-writer"
    refused = in_thread(lambda: pay_url(buyer_client(market.devnet, poor.private_key), url, json={"topic": "x"}))
    assert refused.response.status_code == 402

    # The key runs out of credit during a call: one alert, not three; the key card dates each figure.
    emulator.top_up(key, "0")
    bpage.fill("#t-topic", "the moon")
    bpage.click("#try button[type=submit]")
    bpage.locator("[data-testid=not-charged]").wait_for(timeout=60_000)
    j.step = bj.step
    j.go("/")
    alerts = page.locator("[data-testid=alert]")
    assert sum("out of credit" in alerts.nth(i).inner_text() for i in range(alerts.count())) == 1
    assert alerts.count() == 1, [alerts.nth(i).inner_text() for i in range(alerts.count())]
    seen["settled"] = page.locator("[data-testid=today-settled]").inner_text()
    seen["failed"] = page.locator("[data-testid=today-failed]").inner_text()
    seen["refused"] = page.locator("[data-testid=today-refused]").inner_text()
    seen["tests"] = page.locator("[data-testid=today-tests]").inner_text()
    seen["earned"] = page.locator("[data-testid=earnings-today]").inner_text()
    j.shot("dashboard-out-of-credit")
    j.go("/settings")
    assert "refused a call" in page.locator("[data-testid=key-status-source]").inner_text()
    j.shot("settings-out-of-credit")
    emulator.top_up(key, "20")
    page.click("#key-card form[action='/settings/key/verify'] button")
    assert page.locator("[data-testid=key-status]").inner_text() == "verified"

    # The range switch, the chart with today's bar, and the CSV export.
    j.go("/?days=7")
    assert page.locator("nav.segmented a[aria-current]").inner_text() == "7 days"
    assert "Today" in page.locator(".chart").first.inner_text()
    with page.expect_download() as download:
        page.click("[data-testid=export-csv]")
    csv_text = Path(download.value.path()).read_text()
    assert csv_text.count("\n") == 1 + 7  # header, then 4 paid attempts and 3 test runs
    j.shot("dashboard-7-days")

    # The usage log: each call opens its detail, with the transaction to copy.
    j.go(f"/resources/{rid}?kind=paid&status=succeeded")
    page.click("[data-testid=call-link]")
    seen["detail_tx"] = page.locator("[data-testid=call-tx]").inner_text()
    assert "Sandbox devnet" in page.content()
    j.shot("call-detail")
    j.go(f"/resources/{rid}")
    assert "succeeded" in page.locator("[data-testid=usage-table]").inner_text()
    j.shot("owner-usage")
    j.go("/explore")
    j.shot("explore")

    seen["axe_checked"] = j.checked + bj.checked
    assert outside == [], f"pages asked outside hosts for: {outside}"
    buyer.close()
    context.close()
