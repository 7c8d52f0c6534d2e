"""Browser fixtures for the system tests that open pages (the dashboard, the HTML energy
report): Debian's chromium driven by playwright, with the page's console and page errors
collected so that a test fails on any of them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Error, Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `playwright install` is never run


@pytest.fixture
def chromium() -> Path:
    """Skip without Debian's chromium, unless CI requires the browser (.ci/run does)."""
    if not CHROMIUM.exists():
        why = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CURTAILD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CURTAILD_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium))
        try:
            yield launched
        finally:
            await launched.close()


def watch(page: Page) -> list[str]:
    """The page's console errors and uncaught errors, as they happen."""
    errors: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"console: {message.text} at {message.location}")

    def crashed(error: Error) -> None:
        errors.append(f"page error: {error.message}")

    page.on("console", console)
    page.on("pageerror", crashed)
    return errors
