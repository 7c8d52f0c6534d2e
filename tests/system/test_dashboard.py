"""The operator dashboard in a real headless Chromium against the daemon's own API: a signed
curtailment sent to the grid endpoint shows on the page (signal, limit, reasons, chart); the
compliance view shows the energy account's figures and the journal's chain state; the miners'
pools column; the site's hashrate and each miner's setting as the API says them; and a
refused token shows a message and no data. Any console error or page error fails."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from controller.core.signals import ObligationStatus
from sim.pools import SimPool
from tests.conftest import API_TOKENS, api_section, load_site, site_dict
from tests.energy_samples import FixedCompliance
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


def kw(value: float | None) -> str:
    """As the page writes kW (and TH/s, J/TH): one decimal, thousands grouped; a dash for
    none."""
    return "—" if value is None else f"{value:,.1f}"


def setting(miner: dict[str, Any]) -> str:
    """As the page writes a miner's setting: a power target's watts and why it has it."""
    if miner["setting"] in ("tuned", "lowered") and miner["target_w"] is not None:
        return f"{miner['target_w']:,} W {miner['setting']}"
    return str(miner["setting"])


async def api_get(page: Page, r: Rig, path: str) -> Any:
    """What the operator API answers a viewer, beside the page."""
    assert r.daemon.api is not None
    reply = await page.request.get(
        f"http://127.0.0.1:{r.daemon.api.port}/api/v1/{path}",
        headers={"Authorization": f"Bearer {API_TOKENS['viewer']}"},
    )
    assert reply.ok, await reply.text()
    return await reply.json()


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


async def test_system_dashboard_shows_compliance(tmp_path: Path, browser: Browser) -> None:
    """The compliance view from a fixed source injected into the daemon (it stands in for the
    energy account at the API boundary): its figures and the chain's state, verified and
    then broken."""
    loaded = load_site(site_dict(tmp_path, miners=4, api=api_section()))
    source = FixedCompliance(verified=True)
    async with rig(loaded) as r, dashboard(browser, r) as (page, errors):
        assert r.daemon.api is not None
        r.daemon.api.compliance = source
        await sign_in(page, API_TOKENS["viewer"])
        energy = page.get_by_test_id("energy")
        await expect(energy).not_to_contain_text("No figures", timeout=WAIT_MS)
        await expect(page.get_by_test_id("compliance-note")).to_have_text(
            re.compile(r"^as of \d\d:\d\d:\d\d$")
        )
        assert source.asked == [r.clock.now()]  # the daemon's time, not the laptop's

        today, month = source.answer["today"], source.answer["month"]
        labels = {
            "within_grants_kwh": "Inside grants, kWh",
            "base_allowance_kwh": "In the base allowance, kWh",
            "excess_kwh": "In excess, kWh",
            "grid_kwh": "Grid draw, kWh",
        }
        for name, label in labels.items():
            row = energy.locator(f"tr[data-key={name}] td")
            await expect(row).to_have_text([label, kw(today[name]), kw(month[name])])
        excess = energy.locator("tr[data-key=excess_kwh] td")
        for cell in (excess.nth(1), excess.nth(2)):
            await expect(cell).to_have_class("num alarm")
        await expect(energy.locator("tr[data-key=gap_s] td")).to_have_text(
            ["Meter gaps", f"{today['gap_s'] / 60:.0f} min", f"{month['gap_s'] / 60:.0f} min"]
        )

        grants = page.locator("#grant-use tbody tr")
        await expect(grants).to_have_count(len(source.answer["grants"]))
        for i, g in enumerate(source.answer["grants"]):
            share = "—" if g["utilisation"] is None else f"{g['utilisation'] * 100:.1f} %"
            await expect(grants.nth(i).locator("td")).to_have_text(
                [g["id"], g["source"], kw(g["granted_kwh"]), kw(g["used_kwh"]), share]
            )
        event = source.answer["excess_events"][0]
        events = page.get_by_test_id("excess-events")
        await expect(events).to_contain_text(event["reason"])
        await expect(events.locator("tbody td.alarm")).to_have_text(kw(event["kwh"]))
        pool = source.answer["unapproved_pools"][0]
        pools = page.locator("#unapproved-pools tbody td")
        await expect(pools.nth(0)).to_have_text(pool["miner_id"])
        await expect(pools.nth(1)).to_have_text(", ".join(pool["unapproved"]))
        await expect(pools.nth(2)).to_have_text(pool["action"])

        chain = page.get_by_test_id("chain")
        rows = source.answer["chain"]["rows"]
        await expect(chain).to_have_attribute("data-state", "verified")
        await expect(chain).to_contain_text(f"Chain verified: {rows:,} rows")
        await page.screenshot(path=tmp_path / "dashboard-compliance.png", full_page=True)

        # The journal found changed: shown as such on the next load.
        source.answer["chain"] = {**source.answer["chain"], "verified": False,
                                  "problem": "row 17 (signals) was changed"}  # fmt: skip
        await page.reload()
        await expect(chain).to_have_attribute("data-state", "broken", timeout=WAIT_MS)
        await expect(chain).to_contain_text("CHAIN NOT VERIFIED: row 17 (signals) was changed")
        assert errors == []


async def test_system_dashboard_miners_pools_column(tmp_path: Path, browser: Browser) -> None:
    """The pools column from the daemon's own pools check (/api/v1/miners' pools_ok and
    pools.unapproved): one miner pointed at a pool the site has not approved shows its
    URLs in alarm style, the others "ok"."""
    approved, rogue = "stratum+tcp://pool.example:3333", "stratum+ssl://rogue.example:443"
    pools = {"approved": [{"url": approved}], "check_interval_s": 10}
    loaded = load_site(site_dict(tmp_path, miners=3, api=api_section(), pools=pools))
    async with rig(loaded) as r, dashboard(browser, r) as (page, errors):
        r.farm.set_pools("m001", [SimPool(approved, "farm.1"), SimPool(rogue, "farm.1")])
        checker = r.daemon.pools
        assert checker is not None
        sweeps = checker.sweeps
        await r.run_until(lambda: checker.sweeps > sweeps, within_s=12)
        await r.step(1.5)  # the read model built after the check
        await sign_in(page, API_TOKENS["viewer"])
        await expect(page.locator("#connection")).to_have_text("Live", timeout=WAIT_MS)
        await page.click("#miners-load")
        cells = page.locator("#miners tbody td:nth-child(11)")
        await expect(cells).to_have_text(["ok", f"unapproved: {rogue}", "ok"], timeout=WAIT_MS)
        await expect(cells.nth(1)).to_have_class("alarm wrap")
        await expect(cells.nth(0)).to_have_class("ok")
        assert errors == []


async def test_system_dashboard_shows_the_hashrate_and_each_miners_setting(
    tmp_path: Path, browser: Browser
) -> None:
    """The site's hashrate, the plan's expected hashrate, J/TH and the miners' draw as the
    status says them; per miner its hashrate and setting as /api/v1/miners says them, with
    a target the allocation set among them."""
    loaded = load_site(site_dict(tmp_path, miners=4, api=api_section()))
    async with rig(loaded) as r, dashboard(browser, r) as (page, errors):
        r.daemon.readings.set_ladder("m002", target_w=2345)
        await r.step(1.5)  # a report with it
        await sign_in(page, API_TOKENS["viewer"])
        await expect(page.locator("#connection")).to_have_text("Live", timeout=WAIT_MS)
        state = await api_get(page, r, "status")
        assert state["hashrate_ths"] > 0
        assert state["miners"]["tuned"] == 1
        shown = {
            "hashrate-ths": kw(state["hashrate_ths"]),
            "expected-ths": kw(state["expected_hashrate_ths"]),
            "efficiency-j-th": kw(state["efficiency_j_th"]),
            "fresh-draw-kw": kw(state["fresh_draw_kw"]),
        }
        for testid, figure in shown.items():
            await expect(page.get_by_test_id(testid)).to_have_text(figure, timeout=WAIT_MS)
        await expect(page.locator("#mode-tuned")).to_have_text("1", timeout=WAIT_MS)

        await page.click("#miners-load")
        await expect(page.locator("#miners-note")).to_contain_text("4 shown of 4", timeout=WAIT_MS)
        miners = (await api_get(page, r, "miners"))["miners"]
        assert [m["setting"] for m in miners].count("tuned") == 1
        ths = page.locator("#miners tbody td:nth-child(7)")
        await expect(ths).to_have_text([kw(m["hashrate_ths"]) for m in miners])
        settings = page.locator("#miners tbody td:nth-child(8)")
        await expect(settings).to_have_text([setting(m) for m in miners])
        await expect(page.locator("#miners tr[data-key=m002] td:nth-child(8)")).to_have_text(
            "2,345 W tuned"
        )
        await page.screenshot(path=tmp_path / "dashboard-hashrate.png", full_page=True)
        assert errors == []
