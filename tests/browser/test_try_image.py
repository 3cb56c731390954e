"""The public "try it" form on a long-running image resource: the page follows the job and shows the image inline."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from instant402.catalog.sync import sync_catalog
from instant402.config import Mode
from tests.browser.conftest import run_with_browser
from tests.browser.test_journey import DESKTOP, Journey
from tests.support.market import live_market

IMAGE_MODEL = "google/gemini-2.5-flash-image"


@pytest.fixture(scope="module")
def image_sandbox(app, settings_overrides, emulator_server, devnet, devnet_facilitator, migrated):
    buyer = devnet.buyers[-1]
    with live_market(
        settings_overrides,
        emulator_server,
        devnet,
        devnet_facilitator,
        mode=Mode.sandbox,
        buyer_private_key=buyer.private_key,
        catalog_sync_enabled=False,
    ) as market:
        yield market


@pytest.fixture
async def image_catalog(image_sandbox, database, emulator):
    report = await sync_catalog(database, emulator.base_url)
    assert report.ok, report


def test_try_it_follows_an_image_job_to_the_picture(image_sandbox, image_catalog, chromium_path, artifacts):
    market = image_sandbox
    seller = market.seller()
    resource = market.publish(
        seller,
        name="Poster",
        model_id=IMAGE_MODEL,
        output_kind="image",
        system_prompt="You draw posters.",
        prompt_template="A poster of {{topic}}.",
        max_tokens=1000,  # long enough to run as a job
        price_atomic=100_000,
    )

    def journey(browser) -> None:
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        host = urlparse(market.url).netloc
        outside: list[str] = []

        def guard(route):
            if urlparse(route.request.url).netloc != host:
                outside.append(route.request.url)
                return route.abort()
            return route.continue_()

        context.route("**/*", guard)
        j = Journey(page, market.url, artifacts, outside)
        j.step = 90
        j.go(resource["path"].replace(f"/{seller.username}/", f"/r/{seller.username}/"))
        page.fill("#t-topic", "a red kite")
        page.click("#try button[type=submit]")
        follow = page.locator("[data-testid=job-follow]")
        follow.wait_for(timeout=60_000)
        follow.locator("img").wait_for(timeout=60_000)  # followed until done: the image, inline
        assert follow.locator("[data-testid=receipt]").inner_text().count("0x") >= 1
        assert "$0.10" in follow.inner_text()
        j.shot("public-image-job")
        assert outside == []
        context.close()

    run_with_browser(chromium_path, journey)
