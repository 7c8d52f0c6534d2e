"""The compliance view's figures from the daemon's own evidence (JournalCompliance): the
energy account's journaled minutes, the pools check and the chain check, through the real
operator API; and the excess events and month sums from a real journal file."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from controller.core.energy import CurtailmentExcess, GrantUse, Interval
from controller.record.chain import ChainStatus
from controller.record.compliance_source import JournalCompliance
from controller.record.journal import Journal
from sim.pools import SimPool
from tests.conftest import api_section, load_site
from tests.system.harness import rig
from tests.system.test_energy import Trace, site
from tests.system.test_operator_api import Api

pytestmark = pytest.mark.system

APPROVED = "stratum+tcp://pool.example:3333"
ROGUE = "stratum+tcp://unlisted.example:3333"


async def test_system_compliance_shows_the_journaled_account_pools_and_chain(
    tmp_path: Path,
) -> None:
    data = site(tmp_path)
    data["api"] = api_section()
    data["pools"] = {"approved": [{"url": APPROVED}], "check_interval_s": 30}
    async with (
        rig(load_site(data)) as r,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
    ):
        assert r.daemon.api is not None
        assert r.daemon.api.port is not None
        api = Api(session, r.daemon.api.port)
        r.farm.set_pools("m003", [SimPool(ROGUE, "farm.3")])
        trace = Trace(r)
        minute = r.clock.now().replace(second=0, microsecond=0)
        await r.post(*r.signed(r.grant(30, end_in_s=600)))
        await trace.to(minute + timedelta(minutes=3, seconds=5))
        status, out, _ = await api.call("GET", "/api/v1/compliance")
        assert status == 200, out
        rows = r.daemon.journal.rows(
            "SELECT sum(grid_kwh), sum(within_grants_kwh), sum(base_allowance_kwh),"
            " sum(excess_kwh), count(*) FROM energy_intervals"
        )
        now = r.clock.now()

    grid, within, base, excess, minutes = rows[0]
    assert minutes >= 3
    today = out["today"]
    # The same minutes as the journal holds (today since midnight covers them all unless
    # the test ran across midnight UTC, when "today" holds fewer).
    if now.date() == minute.date():
        assert math.isclose(today["grid_kwh"], grid, abs_tol=1e-5)
        assert math.isclose(today["within_grants_kwh"], within, abs_tol=1e-5)
        assert math.isclose(today["base_allowance_kwh"], base, abs_tol=1e-5)
        assert today["excess_kwh"] == excess == 0
    assert out["month"]["grid_kwh"] >= today["grid_kwh"] - 1e-9
    [grant] = out["grants"]
    assert (grant["id"], grant["source"]) == ("korem-h10", "kegoc")
    assert 0 < grant["utilisation"] <= 1
    assert out["excess_events"] == []
    [pool] = out["unapproved_pools"]
    assert (pool["miner_id"], pool["unapproved"], pool["action"]) == ("m003", [ROGUE], "alarm")
    # The chain check at start ran off the loop and verified what had been written.
    assert out["chain"]["verified"] is True, out["chain"]
    assert out["chain"]["rows"] > 0


def test_excess_events_and_month_sums_from_a_real_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal(path)
    first = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    day = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    minute = timedelta(minutes=1)

    def interval(start: datetime, grid: float, excess: float, *, curtailed: bool) -> Interval:
        cut = (CurtailmentExcess("evt-9", 2, 30_000, excess),) if curtailed else ()
        return Interval(
            start, start + minute, grid, 0.0, grid - excess, excess, 0.0, 0.5, 0.0, 0.0, 0.0,
            "meter", {"g": GrantUse(0.0, 0.0, 0.0)} if curtailed else {}, cut,
        )  # fmt: skip

    journal.record_energy(
        [
            interval(first - minute, 9.0, 9.0, curtailed=False),  # last month: not counted
            interval(first + minute, 0.6, 0.1, curtailed=False),
            interval(day, 0.7, 0.2, curtailed=True),
            interval(day + minute, 0.4, 0.0, curtailed=True),
        ]
    )
    journal.close()
    source = JournalCompliance(
        path, site_id="kz-1", chain=lambda: ChainStatus(None), pools=lambda: None
    )
    out = source.compliance(day + timedelta(minutes=5))
    assert math.isclose(out["month"]["grid_kwh"], 1.7)
    assert math.isclose(out["month"]["excess_kwh"], 0.3)
    assert math.isclose(out["today"]["grid_kwh"], 1.1)
    assert [(e["at"], e["kwh"], e["limit_kw"], e["reason"]) for e in out["excess_events"]] == [
        (day.isoformat(timespec="microseconds"), 0.2, 30.0,
         "above curtailment evt-9 r2 after its deadline"),
        ((first + minute).isoformat(timespec="microseconds"), 0.1, 30.0,
         "above what the grid allowed"),
    ]  # fmt: skip
    assert out["unapproved_pools"] == []
    assert out["chain"] == {
        "verified": None, "rows": 0, "head": None, "checked_at": None, "problem": None,
    }  # fmt: skip
