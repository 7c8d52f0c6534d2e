"""controller/record/energy_report.py on a real journal file: a grant cut short by a
cancel is granted only while it was in force, hours and days roll up the minutes, a
restart's gap row becomes a minute of no draw per minute on the chart (an outage across
the window's start counts for its part inside), a miner's time on an unapproved pool is
one period from its verdicts, and a write landing mid-report changes none of it."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.core.energy import Account, Allowance, gap_intervals
from controller.record.energy_report import energy_report
from controller.record.journal import Journal

T0 = datetime(2026, 11, 23, 9, 58, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def signal(journal: Journal, when: datetime, body: dict[str, object]) -> None:
    journal.record_signal(
        at=when,
        transport="http",
        source="kegoc",
        signal_id=str(body["id"]),
        revision=int(str(body["revision"])),
        kind=str(body["type"]),
        verdict="received",
        detail="new",
        body=json.dumps(body).encode(),
    )


def test_the_report_rolls_up_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal(path)
    grant = {"type": "grant", "id": "g1", "revision": 1, "granted_kw": 60.0}
    signal(journal, at(1), {**grant, "start": at(2).isoformat(), "end": at(62).isoformat()})
    signal(journal, at(32), {"type": "cancel", "id": "g1", "revision": 2})
    allowance = Allowance(70_000, 10_000, {"g1": 60_000})
    account = Account(start=at(2), allowance=allowance, stale_after_s=5.0)
    for s in range(60 * 4):  # 4 minutes of 1 s samples at 40 kW
        account.sample(at(2) + timedelta(seconds=s), 40_000)
    account.advance(at(6))
    journal.record_energy(account.take())
    journal.record_energy(gap_intervals(at(6), at(9)))  # the daemon was down
    pools = {"approved": False, "pools": [], "unapproved": ["stratum+tcp://x:3333"]}
    journal.record_event(at(3), "pools", "a-001", {**pools, "action": "alarm"})
    journal.record_event(at(5), "pools", "a-001", {"approved": True, "action": "none"})
    journal.record_event(at(4), "pools", "a-002", {**pools, "action": "sleep"})
    journal.close()

    report = energy_report(path, at(2), at(9), site_id="kz-1")

    assert report["measured_by"] == "meter"
    totals = report["totals"]  # rounded to 1e-6 kWh
    assert math.isclose(totals["grid_kwh"], 40 * 4 / 60, abs_tol=1e-6)
    assert math.isclose(totals["base_allowance_kwh"], 10 * 4 / 60, abs_tol=1e-6)
    assert math.isclose(totals["within_grants_kwh"], 30 * 4 / 60, abs_tol=1e-6)
    assert totals["gap_s"] == 3 * 60
    assert [h["start"] for h in report["hours"]] == ["2026-11-23T10:00:00Z"]
    [day] = report["days"]
    assert len(day["series"]) == 7  # 4 metered minutes, then 3 of the outage
    assert [p["grid_kw"] for p in day["series"]] == [40.0] * 4 + [None] * 3
    [g1] = report["grants"]
    assert g1["end"] == "2026-11-23T10:30:00Z"  # the cancel, not the grant's own end
    assert math.isclose(g1["granted_kwh"], 60 * 7 / 60, abs_tol=1e-6)  # within the window
    assert math.isclose(g1["utilisation"], g1["used_kwh"] / g1["granted_kwh"], rel_tol=1e-3)
    assert [(p["miner_id"], p["until"], p["action"]) for p in report["pools"]] == [
        ("a-001", "2026-11-23T10:03:00Z", "alarm"),
        ("a-002", None, "sleep"),
    ]
    # The chain head read in the report's own snapshot: what `curtaild verify` recomputes.
    assert report["chain"] == {"head": journal.head.hex, "rows": journal.head.seq}
    assert journal.head.seq > 0


def test_an_outage_across_from_is_reported_for_its_part_inside(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal(path)
    journal.record_energy(gap_intervals(at(6), at(16)))  # down 10:04..10:14, one row
    journal.close()

    report = energy_report(path, at(10), at(20), site_id="kz-1")

    assert report["totals"]["gap_s"] == 6 * 60  # 10:08..10:14, not the whole outage
    assert report["measured_by"] == "none"
    [hour] = report["hours"]
    assert hour["gap_s"] == 6 * 60
    [day] = report["days"]
    assert [p["start"] for p in day["series"]] == [
        f"2026-11-23T10:{m:02d}:00Z" for m in range(8, 14)
    ]
    assert all(p["grid_kw"] is None for p in day["series"])
    # A window that ends inside the outage holds only its part before the end.
    assert energy_report(path, at(10), at(12), site_id="kz-1")["totals"]["gap_s"] == 2 * 60


class Writes:
    """The report's connection, with the daemon writing a minute after the first query."""

    def __init__(self, db: sqlite3.Connection, write: Callable[[], None]) -> None:
        self.db, self.write, self.queries = db, write, 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        cursor = self.db.execute(sql, params)
        if sql.lstrip().upper().startswith("SELECT"):
            self.queries += 1
            if self.queries == 1:
                self.write()
        return cursor

    def close(self) -> None:
        self.db.close()


def test_the_figures_and_the_chain_head_are_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.db"
    journal = Journal(path)
    minute = Allowance(70_000, 10_000, {})
    first = Account(start=at(2), allowance=minute, stale_after_s=5.0)
    for s in range(2 * 60):
        first.sample(at(2) + timedelta(seconds=s), 40_000)
    first.advance(at(4))
    journal.record_energy(first.take())
    head = journal.head
    late = Account(start=at(4), allowance=minute, stale_after_s=5.0)
    for s in range(60):
        late.sample(at(4) + timedelta(seconds=s), 40_000)
    late.advance(at(5))

    connect = sqlite3.connect

    def connect_writing(*args: Any, **kwargs: Any) -> Writes:
        return Writes(connect(*args, **kwargs), lambda: journal.record_energy(late.take()))

    monkeypatch.setattr(sqlite3, "connect", connect_writing)
    report = energy_report(path, at(2), at(9), site_id="kz-1")
    monkeypatch.undo()

    assert journal.head.seq > head.seq  # the daemon's minute landed mid-report
    assert report["chain"] == {"head": head.hex, "rows": head.seq}
    assert math.isclose(report["totals"]["grid_kwh"], 40 * 2 / 60, abs_tol=1e-6)
    after = energy_report(path, at(2), at(9), site_id="kz-1")  # the next report sees it
    assert after["chain"] == {"head": journal.head.hex, "rows": journal.head.seq}
    assert math.isclose(after["totals"]["grid_kwh"], 40 * 3 / 60, abs_tol=1e-6)
    journal.close()
