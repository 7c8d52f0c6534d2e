"""The HTML energy report opened in a real headless Chromium, from a file as a recipient
would open it: one chart per day with the excess drawn red where it happened and the meter
gap left as a gap, the tables' figures, no request beyond the file itself (even with markup
in the report's values), no console or page error, and each day fits an A4 page in print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Request, expect

from controller.record import energy_chart as chart
from controller.record.energy_html import render_energy_html
from tests.energy_samples import sample_report
from tests.system.conftest import watch

pytestmark = pytest.mark.system

A4_PX = (794, 1123)  # 210 x 297 mm at CSS's 96 px per inch
MARGIN_PX = 2 * 12 / 25.4 * 96  # the report's @page margins, top and bottom
# Would fetch from a listener if it were markup: the test fails on any request it makes.
HOSTILE_SITE = '<img src="http://127.0.0.1:9/x.png"><script>document.title="owned"</script>'
RED = "rgb(208, 0, 0)"


async def opened(browser: Browser, tmp_path: Path, report: dict[str, Any]) -> tuple[Page, Path]:
    path = tmp_path / "energy.html"
    path.write_text(render_energy_html(report), encoding="utf-8")
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    return page, path


def minute_x(minute: int) -> float:
    """Where a minute of the day starts on the chart, in the SVG's own units."""
    return chart.LEFT + minute * 60 / chart.DAY_S * (chart.WIDTH - chart.LEFT - chart.RIGHT)


async def test_system_energy_report_in_chromium(tmp_path: Path, browser: Browser) -> None:
    report = sample_report()
    report["site"] = HOSTILE_SITE
    page, path = await opened(browser, tmp_path, report)
    errors = watch(page)
    requests: list[str] = []

    def requested(request: Request) -> None:
        requests.append(request.url)

    page.on("request", requested)
    try:
        await page.goto(path.as_uri())
        await page.screenshot(path=tmp_path / "energy.png", full_page=True)

        # The hostile site name is shown as text; no element of it exists.
        await expect(page.get_by_test_id("site")).to_have_text(HOSTILE_SITE)
        assert await page.locator("img, script").count() == 0
        assert (await page.title()).startswith(f"Energy report: {HOSTILE_SITE}, ")

        await charts(page, report)
        await tables(page, report)
        await printed(page, report)

        assert requests == [path.as_uri()]
        assert errors == []
    finally:
        await page.close()


async def charts(page: Page, report: dict[str, Any]) -> None:
    """One chart per day, both axes labelled; the excess red where it happened, the gap a
    gap, the grants shaded."""
    days = page.get_by_test_id("day")
    await expect(days).to_have_count(len(report["days"]))
    for i, day in enumerate(report["days"]):
        section = days.nth(i)
        await expect(section.locator("svg.chart")).to_have_count(1)
        await expect(section.locator("h3")).to_have_text(day["date"])
        labels = await section.locator("svg.chart text").all_text_contents()
        assert "kW" in labels
        assert f"hour of {day['date']} (UTC)" in labels
        assert {"00", "12", "24"} <= set(labels)

    # The second day's excess (13:00 to 13:30) is red, there and only there.
    excess = page.get_by_test_id("chart-excess")
    await expect(excess).to_have_count(1)
    await expect(days.nth(1).get_by_test_id("chart-excess")).to_have_count(1)
    fill = await excess.evaluate("e => getComputedStyle(e).fill")
    assert fill == RED
    box = await excess.evaluate("e => { const b = e.getBBox(); return [b.x, b.width]; }")
    assert box[0] == pytest.approx(minute_x(13 * 60), abs=0.2)
    assert box[0] + box[1] == pytest.approx(minute_x(13 * 60 + 30), abs=0.2)

    # The third day's meter gap (02:00 to 02:45) is a grey band and a break in the line.
    gap = days.nth(2).get_by_test_id("chart-gap")
    await expect(gap).to_have_count(1)
    box = await gap.evaluate("e => { const b = e.getBBox(); return [b.x, b.width]; }")
    assert box[0] == pytest.approx(minute_x(120), abs=0.2)
    assert box[0] + box[1] == pytest.approx(minute_x(165), abs=0.2)
    draw = [await days.nth(i).get_by_test_id("chart-draw").get_attribute("d") for i in range(3)]
    assert [(d or "").count("M") for d in draw] == [1, 1, 2]
    # Grants shaded on the days that had one.
    granted = [await days.nth(i).get_by_test_id("chart-granted").count() for i in range(3)]
    assert granted == [1, 1, 0]


async def tables(page: Page, report: dict[str, Any]) -> None:
    """The summary's figures and what it says about gaps and estimates; every table."""
    totals = report["totals"]
    for name in ("grid_kwh", "within_grants_kwh", "base_allowance_kwh", "excess_kwh"):
        await expect(page.get_by_test_id(f"total-{name}")).to_contain_text(
            f"{totals[name]:,.3f} kWh"
        )
    await expect(page.get_by_test_id("gaps")).to_contain_text(
        f"no reading for {round(totals['gap_s'] / 60)} min"
    )
    await expect(page.get_by_test_id("measured-by")).to_contain_text(
        f"except for {round(totals['estimated_s'] / 3600)} h 00 min estimated"
    )
    await expect(page.get_by_test_id("adds-up")).to_have_text(
        "The parts add up: grid draw = inside grants + inside the base allowance + excess."
    )

    # The hourly table: one row per hour, the excess hour marked.
    rows = page.get_by_test_id("hours").locator("tbody tr")
    await expect(rows).to_have_count(len(report["hours"]))
    over = [i for i, h in enumerate(report["hours"]) if h["excess_kwh"] > 0]
    await expect(page.locator("[data-testid=hours] tbody tr.excess")).to_have_count(len(over))
    cells = await rows.nth(over[0]).locator("td").all_text_contents()
    assert cells[1] == f"{report['hours'][over[0]]['grid_kwh']:,.3f}"
    assert cells[4] == f"{report['hours'][over[0]]['excess_kwh']:,.3f}"

    # Grants, curtailments, pools and the chain head.
    for i, g in enumerate(report["grants"]):
        row = page.locator("[data-testid=grants] tbody tr").nth(i)
        texts = await row.locator("td").all_text_contents()
        assert texts[0] == g["id"]
        assert texts[4:7] == [
            f"{g['granted_kwh']:,.3f}",
            f"{g['used_kwh']:,.3f}",
            f"{g['utilisation'] * 100:.1f} %",
        ]
    curtailed = page.locator("[data-testid=curtailments] tbody tr td:last-child")
    figures = [f"{c['excess_kwh_after_deadline']:,.3f}" for c in report["curtailments"]]
    await expect(curtailed).to_have_text(figures)
    assert [await c.get_attribute("class") for c in await curtailed.all()] == [
        "num bad",
        "num ok",
    ]
    pools = page.get_by_test_id("pools")
    for p in report["pools"]:
        for url in p["unapproved"]:
            await expect(pools).to_contain_text(url)
    await expect(pools.locator("tbody tr").first).to_contain_text("still")
    chain_head = report["chain"]["head"]
    await expect(page.get_by_test_id("chain")).to_contain_text(chain_head)
    await expect(page.get_by_test_id("chain")).to_contain_text(f"{report['chain']['rows']:,}")


async def printed(page: Page, report: dict[str, Any]) -> None:
    """Printed on A4, each day (heading, chart, legend) fits one page."""
    days = page.get_by_test_id("day")
    await page.emulate_media(media="print")
    await page.set_viewport_size({"width": A4_PX[0], "height": A4_PX[1]})
    for i in range(len(report["days"])):
        height = await days.nth(i).evaluate("e => e.getBoundingClientRect().height")
        assert 0 < height < A4_PX[1] - MARGIN_PX
    assert len(await page.pdf(format="A4")) > 0
