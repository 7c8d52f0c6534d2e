"""The operator dashboard in a real headless Chromium against the daemon's own API: a signed
curtailment sent to the grid endpoint shows on the page (signal, limit, reasons, chart), and
a refused token shows a message and no data. Any console error or page error fails."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from controller.core.signals import ObligationStatus
from tests.conftest import API_TOKENS, api_section, load_site, site_dict
from tests.system.conftest import watch
from tests.system.harness import Rig, rig

pytestmark = pytest.mark.system

WAIT_MS = 30_000  # generous: the machine is shared; every wait is on content, not on time
# Chromium logs a failed resource load as a console error; a refused token is one, on purpose.
REFUSED_LOAD = re.compile(r"console: Failed to load resource: .* status of 401 \(Unauthorized\)")


@asynccontextmanager
async def dashboard(browser: Browser, r: Rig) -> AsyncIterator[tuple[Page, list[str]]]:
    """The page at 1280x800 with its console and page errors collected; closed before the
    daemon stops, so its reconnect attempts are not counted."""
    api = r.daemon.api
    assert api is not None
    assert api.port is not None
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    errors = watch(page)
    try:
        await page.goto(f"http://127.0.0.1:{api.port}/")
        yield page, errors
    finally:
        await page.close()


async def sign_in(page: Page, token: str) -> None:
    await page.fill("#token", token)
    await page.click("#connect")


def kw(value: float) -> str:
    """As the page writes kW: one decimal, thousands grouped."""
    return f"{value:,.1f}"


async def test_system_dashboard_shows_a_curtailment_as_it_lands(
    tmp_path: Path, browser: Browser
) -> None:
    loaded = load_site(site_dict(tmp_path, miners=12, api=api_section()))
    async with rig(loaded) as r, dashboard(browser, r) as (page, errors):
        await sign_in(page, API_TOKENS["viewer"])
        draw_kw = r.sup.draw.measured_w / 1000
        await expect(page.locator("#connection")).to_have_text("Live", timeout=WAIT_MS)
        await expect(page.locator("#measured-kw")).to_have_text(kw(draw_kw), timeout=WAIT_MS)
        await expect(page.locator("#limit-kw")).to_have_text(
            kw(r.sup.limit.limit_w / 1000), timeout=WAIT_MS
        )
        await expect(page.locator("#limit-reasons")).to_contain_text("site cap")
        await expect(page.locator("#signals")).to_contain_text("No signals held")
        before = await page.screenshot(path=tmp_path / "dashboard-before.png")

        limit_kw = round(draw_kw * 0.4, 1)
        status, reply = await r.post(*r.signed(r.curtailment(limit_kw)))
        assert (status, reply["status"]) == (202, "received")
        ob = await r.settled("evt-0017#r1", within_s=15)
        assert ob.status is ObligationStatus.REACHED

        signals = page.locator("#signals")
        await expect(signals).to_contain_text("evt-0017", timeout=WAIT_MS)
        await expect(signals).to_contain_text(f"≤ {kw(limit_kw)}", timeout=WAIT_MS)
        await expect(page.locator("#limit-kw")).to_have_text(kw(limit_kw), timeout=WAIT_MS)
        await expect(page.locator("#limit-reasons")).to_contain_text(
            "curtailment evt-0017 r1", timeout=WAIT_MS
        )
        await expect(page.locator("#deadlines")).to_contain_text("reached", timeout=WAIT_MS)
        await expect(page.locator("#mode-sleeping")).not_to_have_text("0", timeout=WAIT_MS)
        # The chart was seeded from the history and grew with the stream: a measured line
        # and a limit step line, over more than one point.
        chart = page.locator("#chart")
        await expect(chart).to_have_attribute("data-points", re.compile(r"^([2-9]|\d{2,})$"))
        await expect(chart.get_by_test_id("chart-measured")).to_have_count(1)
        await expect(chart.get_by_test_id("chart-limit")).to_have_count(1)
        # The miners list asks /api/v1/miners with the chosen filter.
        await page.select_option("#filter-mode", "sleeping")
        await page.click("#miners-load")
        await expect(page.locator("#miners-note")).to_contain_text(
            re.compile(r"^[1-9]\d* shown of [1-9]"), timeout=WAIT_MS
        )
        modes = page.locator("#miners tbody td:nth-child(4)")
        assert set(await modes.all_text_contents()) == {"sleeping"}
        after = await page.screenshot(path=tmp_path / "dashboard-after.png")

        assert before != after, f"the page looks the same: {tmp_path}/dashboard-*.png"
        assert errors == []


async def test_system_dashboard_refuses_a_wrong_token(tmp_path: Path, browser: Browser) -> None:
    loaded = load_site(site_dict(tmp_path, miners=2, api=api_section()))
    async with rig(loaded) as r, dashboard(browser, r) as (page, errors):
        await sign_in(page, "not-" + API_TOKENS["viewer"])
        refused = page.locator("#auth-error")
        await expect(refused).to_contain_text("Token refused (401)", timeout=WAIT_MS)
        await expect(refused).to_be_visible()
        await expect(page.locator("#dashboard")).to_be_hidden()
        await expect(page.locator("#measured-kw")).to_have_text("—")
        await expect(page.locator("#signals tbody tr")).to_have_count(0)
        assert await page.evaluate("sessionStorage.length") == 0
        await page.screenshot(path=tmp_path / "dashboard-refused.png")
        assert [e for e in errors if not REFUSED_LOAD.match(e)] == []
