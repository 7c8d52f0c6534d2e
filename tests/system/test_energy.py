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
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import cli
from controller.clock import FakeClock
from controller.core import energy
from controller.core.signals import GridMode, GridPolicy, Obligation, ObligationStatus, SignalBook
from controller.intake.inbox import Inbox
from controller.loop import energy as loop_energy
from controller.loop.deadlines import Deadlines
from controller.loop.energy import EnergyAccount
from controller.loop.measure import MeterSample
from controller.record import journal as journal_module
from controller.record.energy_report import HOURLY_FIELDS
from controller.record.journal import Journal
from controller.record.publish import Recorder
from demo.farm import farm_from_config
from drivers.types import MeterReading
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


# -- the loop's account on a real journal file, on a fake clock ----------------------------

BASE_W = 1_000_000  # surplus-only, no grant held: the grid allows the base


def loop_account(
    journal: Journal, clock: FakeClock, pending: Sequence[Obligation] = ()
) -> EnergyAccount:
    policy = GridPolicy(GridMode.SURPLUS_ONLY, cap_w=10_000_000, base_allowance_w=BASE_W)
    recorder = Recorder()
    inbox = Inbox(
        journal=journal,
        clock=clock,
        keys={"kegoc": b"k"},
        replay_window_s=30,
        book=SignalBook(),
        publisher=recorder,
    )
    deadlines = Deadlines(
        inbox=inbox,
        journal=journal,
        publisher=recorder,
        policy=policy,
        pending=pending,
        known_keys=set(),
    )
    return EnergyAccount(
        journal=journal,
        clock=clock,
        policy=policy,
        inbox=inbox,
        deadlines=deadlines,
        meter_stale_after_s=5.0,
        generation_exempt=False,
        stale_after=timedelta(seconds=30),
    )


def draw_for(account: EnergyAccount, clock: FakeClock, seconds: int, draw_w: float) -> None:
    """`seconds` of 1 s meter polls and cycles at `draw_w`."""
    for _ in range(seconds):
        account.on_meter(MeterSample(MeterReading(draw_w, 0.0, 50.0, None), clock.now()))
        account.cycle(clock.now(), ())
        clock.advance(1)


def journaled(journal: Journal) -> list[tuple[datetime, datetime, float, float, str]]:
    return [
        (datetime.fromisoformat(a), datetime.fromisoformat(b), grid, excess, how)
        for a, b, grid, excess, how in journal.rows(
            "SELECT start, end, grid_kwh, excess_kwh, measured_by FROM energy_intervals"
            " ORDER BY seq"
        )
    ]


def test_a_clock_behind_the_journal_is_said_and_the_account_counts_from_now(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    now = clock.now()
    journal = Journal(tmp_path / "journal.db")
    ahead = now + timedelta(days=1)  # the last run's clock was a day ahead
    journal.record_energy(energy.gap_intervals(ahead - timedelta(minutes=5), ahead))
    before = len(journaled(journal))

    account = loop_account(journal, clock)
    draw_for(account, clock, 10 * 60, 2 * BASE_W)
    account.close(clock.now())

    events = journal.rows("SELECT subject, detail FROM events WHERE kind = 'energy'")
    [(subject, detail)] = [(subject, json.loads(text)) for subject, text in events]
    assert subject == "clock-behind-journal"
    assert detail["overlap_s"] == 24 * 3600
    rows = journaled(journal)[before:]
    assert [r[0] for r in rows] == [now + timedelta(minutes=i) for i in range(10)]
    assert {r[4] for r in rows} == {"meter"}
    # The minutes drawn are all there: 2 MW for 10 minutes, 1 MW of it above the base.
    assert math.isclose(sum(r[2] for r in rows), 2 * BASE_W * 600 / 3_600_000, rel_tol=1e-9)
    assert math.isclose(sum(r[3] for r in rows), BASE_W * 600 / 3_600_000, rel_tol=1e-9)


def test_minutes_dropped_behind_an_unwritable_journal_are_journaled_as_a_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop_energy, "KEEP_UNJOURNALED", 3)
    monkeypatch.setattr(journal_module, "BUSY_TIMEOUT_S", 0.01)  # a locked write fails at once
    clock = FakeClock()
    start = clock.now()
    journal = Journal(tmp_path / "journal.db")
    account = loop_account(journal, clock)
    draw_for(account, clock, 2 * 60, BASE_W)
    other = sqlite3.connect(tmp_path / "journal.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the journal: writes fail
    draw_for(account, clock, 10 * 60, BASE_W)
    assert journal.error is not None
    other.execute("ROLLBACK")
    other.close()
    journal.probe(clock.now())  # the loop's probe: writable again
    draw_for(account, clock, 2, BASE_W)

    rows = journaled(journal)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))  # no minute vanished
    assert rows[0][0] == start
    assert rows[-1][1] == start + timedelta(minutes=12)
    # 10:00 was written; 10:01 closed behind the lock, and of the eleven minutes closed
    # before the journal took them (10:01..10:11) the cap kept the last three.
    lost = [(a, b) for a, b, _, _, how in rows if how == "none"]
    assert lost == [(start + timedelta(minutes=1), start + timedelta(minutes=9))]
    kept = [a for a, _, _, _, how in rows if how == "meter"]
    assert kept == [start + timedelta(minutes=m) for m in (0, 9, 10, 11)]


def test_a_restart_inside_a_grace_keeps_the_allowance_from_before_the_fall(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    t0 = clock.now()
    journal = Journal(tmp_path / "journal.db")
    # The first run: a 3 MW grant beside the base, the farm drawing 4 MW, to 10:04.
    first = energy.Account(
        start=t0,
        allowance=energy.Allowance(4 * BASE_W, BASE_W, {"g1": 3 * BASE_W}),
        stale_after_s=5,
    )
    for s in range(4 * 60):
        first.sample(t0 + timedelta(seconds=s), 4 * BASE_W)
    first.advance(t0 + timedelta(minutes=4))
    journal.record_energy(first.take())
    # The grant was cancelled at 10:03:30 (to be met by 10:05:30); restarted at 10:04:10,
    # the farm still draws 4 MW until 10:05:20.
    cancel = Obligation(
        "g1#r2", "g1", 2, "cancel", BASE_W, t0 + timedelta(seconds=210), t0 + timedelta(seconds=330)
    )
    clock.advance(250)
    account = loop_account(journal, clock, pending=[cancel])
    draw_for(account, clock, 70, 4 * BASE_W)
    draw_for(account, clock, 100, BASE_W)
    account.close(clock.now())

    after = [r for r in journaled(journal) if r[0] >= t0 + timedelta(minutes=4)]
    assert after
    assert sum(r[3] for r in after) == 0  # graced until the deadline, obeyed before it
    used = journal.rows(
        "SELECT sum(used_kwh) FROM energy_grants WHERE grant_id = 'g1' AND start >= ?",
        ((t0 + timedelta(minutes=4)).isoformat(timespec="microseconds"),),
    )
    assert math.isclose(used[0][0], 3 * BASE_W * 70 / 3_600_000, rel_tol=1e-9)
