"""The energy account in the real daemon: a simulated meter over real Modbus TCP, a grant
that wakes the farm and a curtailment met on time, on a fake clock. The journaled minutes
add up, charge the grant, show no excess after the curtailment's deadline, and sum to the
meter's own energy; `curtaild report energy` reads them back from the journal file."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import cli
from controller.clock import FakeClock
from controller.core.signals import ObligationStatus
from controller.record.energy_report import HOURLY_FIELDS
from demo.farm import farm_from_config
from tests.conftest import load_site, site_dict
from tests.system.harness import Rig, daemon_on, rig

pytestmark = pytest.mark.system

BASE_LOAD_W = 2000.0  # the simulated meter's load beside the miners
METER_REFRESH_S = 0.5
STEP_S = 0.5


def site(tmp_path: Path) -> dict[str, Any]:
    data = site_dict(
        tmp_path,
        miners=8,
        mode="surplus-only",
        base_allowance_kw=4.0,
        start_mode="sleeping",
        margin_kw=1.0,
    )
    net = data["miners"][0]["host"].rsplit(".", 2)[0]
    data["meter"] = {
        "id": "site-meter",
        "host": f"{net}.250.2",
        "port": 1502,
        "map": "meter-float32",
        "interval_s": 0.25,
        "stale_after_s": 2,
        "update_lag_s": 0.5,
    }
    data["simulation"]["meter"] = {
        "base_load_kw": BASE_LOAD_W / 1000,
        "noise_kw": 0.0,
        "update_interval_s": METER_REFRESH_S,
    }
    return data


class Trace:
    """The farm's true draw as the simulated meter computes it (miners plus its base
    load), taken after every step of logical time: the meter's own energy."""

    def __init__(self, r: Rig) -> None:
        self.r = r
        self.points: list[tuple[datetime, float]] = []

    async def walk(self, until: Callable[[], bool], within_s: float) -> None:
        start = self.r.clock.now()
        while not until():
            assert (self.r.clock.now() - start).total_seconds() <= within_s, "too slow"
            self.r.clock.advance(STEP_S)
            await self.r.settle()
            self.points.append((self.r.clock.now(), self.r.farm.total_power_w() + BASE_LOAD_W))

    async def to(self, t: datetime) -> None:
        await self.walk(lambda: self.r.clock.now() >= t, within_s=600)

    def kwh(self, a: datetime, b: datetime) -> tuple[float, float]:
        """(energy in [a, b), its tolerance). The daemon reads a meter value that may be
        up to one refresh old, and completes that read up to a step later than the
        trace's point; so its draw lags the truth by at most METER_REFRESH_S + 2 steps,
        and the two integrals differ by at most that lag times each change of power."""
        joules, variation = 0.0, 0.0
        for (t0, p0), (t1, _) in zip(self.points, self.points[1:], strict=False):
            lo, hi = max(t0, a), min(t1, b)
            if hi > lo:
                joules += p0 * (hi - lo).total_seconds()
        inside = [p for t, p in self.points if a - timedelta(seconds=5) <= t <= b]
        variation = sum(abs(q - p) for p, q in itertools.pairwise(inside))
        lag_s = METER_REFRESH_S + 2 * STEP_S
        return joules / 3_600_000, variation * lag_s / 3_600_000 + 1e-6


async def test_the_journaled_account_adds_up_to_the_meter_and_charges_the_grant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = site(tmp_path)
    async with rig(load_site(data)) as r:
        trace = Trace(r)
        minute = r.clock.now().replace(second=0, microsecond=0)
        await trace.to(minute + timedelta(seconds=20))
        await r.post(*r.signed(r.grant(30, end_in_s=300)))
        await trace.walk(lambda: not r.asleep(), within_s=20)
        await trace.to(minute + timedelta(seconds=80))
        limit_kw = 15.0
        await r.post(*r.signed(r.curtailment(limit_kw, deadline_s=10)))
        await trace.walk(
            lambda: (
                (ob := r.obligation("evt-0017#r1")) is not None
                and ob.status is not ObligationStatus.PENDING
            ),
            within_s=20,
        )
        met = r.obligation("evt-0017#r1")
        assert met is not None
        assert met.status is ObligationStatus.REACHED, met
        await trace.to(minute + timedelta(minutes=4, seconds=5))
        rows = r.daemon.journal.rows(
            "SELECT start, end, grid_kwh, within_grants_kwh, base_allowance_kwh, excess_kwh,"
            " measured_by FROM energy_intervals ORDER BY start"
        )
        grants = r.daemon.journal.rows(
            "SELECT start, grant_id, used_kwh FROM energy_grants ORDER BY start"
        )
        curtailed = r.daemon.journal.rows(
            "SELECT signal_id, revision, excess_kwh FROM energy_curtailments"
        )

    assert [datetime.fromisoformat(s) for s, *_ in rows] == [
        minute + timedelta(minutes=i) for i in range(4)
    ]  # journaled as each minute closed, one row each
    for start, _, grid, within, base, excess, _ in rows:
        assert math.isclose(grid, within + base + excess, rel_tol=1e-9, abs_tol=1e-9), start
        used = sum(u for s, g, u in grants if s == start and g == "korem-h10")
        assert math.isclose(used, within, rel_tol=1e-9, abs_tol=1e-9), start
    assert sum(r[3] for r in rows) > 0.1  # the grant carried the woken farm
    assert curtailed
    assert all(c[:2] == ("evt-0017", 1) for c in curtailed)
    assert sum(c[2] for c in curtailed) == 0  # met on time: nothing above it after the deadline

    # Minutes 1..3 were metered throughout: their sum is the meter's own energy.
    full = rows[1:]
    assert {r[6] for r in full} == {"meter"}
    a, b = datetime.fromisoformat(full[0][0]), datetime.fromisoformat(full[-1][1])
    truth, tolerance = trace.kwh(a, b)
    journaled = sum(r[2] for r in full)
    assert abs(journaled - truth) <= tolerance, (journaled, truth, tolerance)
    assert tolerance < 0.05 * truth  # the bound is tight enough to mean something

    # The same account through the CLI, from the journal file the daemon left.
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    reported(config, capsys, (a, b), journaled, limit_kw)


def reported(
    config: Path,
    capsys: pytest.CaptureFixture[str],
    window_at: tuple[datetime, datetime],
    journaled: float,
    limit_kw: float,
) -> None:
    """`curtaild report energy` over the window says what the journal holds."""
    window = ["--from", window_at[0].isoformat(), "--to", window_at[1].isoformat()]
    assert cli.main(["report", "energy", "-c", str(config), *window]) == 0
    report = json.loads(capsys.readouterr().out)
    totals = report["totals"]
    assert math.isclose(totals["grid_kwh"], journaled, abs_tol=1e-5)
    parts = totals["within_grants_kwh"] + totals["base_allowance_kwh"] + totals["excess_kwh"]
    assert math.isclose(totals["grid_kwh"], parts, abs_tol=1e-5)
    assert report["measured_by"] == "meter"
    assert [len(d["series"]) for d in report["days"]] == [3]
    [grant] = report["grants"]
    assert grant["id"] == "korem-h10"
    assert grant["source"] == "kegoc"
    assert math.isclose(grant["granted_kwh"], 30 * 3 / 60, rel_tol=1e-6)  # 30 kW, 3 minutes
    assert math.isclose(grant["used_kwh"], totals["within_grants_kwh"], abs_tol=1e-5)
    assert 0 < grant["utilisation"] <= 1
    [curtailment] = report["curtailments"]
    assert curtailment["limit_kw"] == limit_kw
    assert curtailment["excess_kwh_after_deadline"] == 0
    assert cli.main(["report", "energy", "-c", str(config), *window, "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert tuple(table[0]) == HOURLY_FIELDS
    assert math.isclose(sum(float(t["grid_kwh"]) for t in table), journaled, abs_tol=1e-5)
    # The signal report is still the default.
    assert cli.main(["report", "-c", str(config)]) == 0
    assert "signals" in json.loads(capsys.readouterr().out)
    assert cli.main(["report", "energy", "-c", str(config), "--from", "soon"]) == 2
    assert "--from: 'soon' is not an ISO 8601 instant" in capsys.readouterr().err


async def test_a_restart_journals_the_outage_as_a_gap_and_loses_only_the_minute_in_progress(
    tmp_path: Path,
) -> None:
    loaded = load_site(site(tmp_path))
    clock = FakeClock()
    minute = clock.now().replace(second=0, microsecond=0)
    farm = farm_from_config(loaded, clock.time)
    async with farm:
        async with daemon_on(loaded, clock, farm) as r:
            await Trace(r).to(minute + timedelta(minutes=2, seconds=30))
        # Stopped without a flush (as a kill): 10:02 was in memory. Down five minutes.
        clock.advance(5 * 60 + 10)
        async with daemon_on(loaded, clock, farm) as r:
            await Trace(r).to(minute + timedelta(minutes=9, seconds=2))
            rows = r.daemon.journal.rows(
                "SELECT start, end, measured_by, gap_s FROM energy_intervals ORDER BY start"
            )
    spans = [
        (datetime.fromisoformat(a), datetime.fromisoformat(b), how, gap) for a, b, how, gap in rows
    ]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # contiguous
    assert spans[0][0] == minute
    assert spans[-1][1] == minute + timedelta(minutes=9)
    outage = [s for s in spans if s[2] == "none"]
    assert [(s[0], s[1]) for s in outage] == [
        (minute + timedelta(minutes=2), minute + timedelta(minutes=7))
    ]
    assert outage[0][3] == 300
    restarted = spans[len(spans) - 2]  # the minute the second daemon started in
    assert restarted[0] == minute + timedelta(minutes=7)
    assert restarted[2] == "meter"
    assert restarted[3] >= 40
    assert {s[2] for s in spans} == {"meter", "none"}
