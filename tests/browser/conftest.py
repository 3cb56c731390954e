"""Browser tests: Debian's Chromium driven by Playwright for Python, against a live sandbox-mode server."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("INSTANT402_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if Path(CHROMIUM).exists() or shutil.which(CHROMIUM):
        return CHROMIUM
    if os.environ.get("INSTANT402_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"Chromium is required at {CHROMIUM} (apt-get install chromium)")
    pytest.skip(f"Chromium not installed at {CHROMIUM}")


def run_with_browser(chromium_path: str, journey) -> None:
    """Run ``journey(browser)`` in its own thread: Playwright's sync API keeps an event loop running in the thread
    it uses, which must not be the one pytest-asyncio runs the fixtures in."""
    from playwright.sync_api import sync_playwright

    failure: list[BaseException] = []

    def main() -> None:
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
                try:
                    journey(browser)
                finally:
                    browser.close()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=main, name="playwright")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
