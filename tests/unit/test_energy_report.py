"""controller/record/energy_report.py on a real journal file: a grant cut short by a
cancel is granted only while it was in force, hours and days roll up the minutes, a
restart's gap row becomes a minute of no draw per minute on the chart, and a miner's time
on an unapproved pool is one period from its verdicts."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
