"""The write-ahead journal: durable, restorable, and refusing what it cannot be."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.core.model import Action, ActionKind, Limit, Plan
from controller.core.signals import (
    Curtailment,
    Grant,
    Held,
    Obligation,
    ObligationStatus,
    SignalBook,
)
from controller.record.journal import SCHEMA_VERSION, CommandRecord, Journal, JournalError

T0 = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)


def test_journal_is_wal_and_fully_synchronous(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    assert journal.rows("PRAGMA journal_mode")[0][0] == "wal"
    assert journal.rows("PRAGMA synchronous")[0][0] == 2  # FULL
    journal.close()


def test_journal_restores_the_book_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = Journal(path)
    curtail = Curtailment(
        "evt-1", 2, T0, 800_000, 10.0, None, T0 + timedelta(hours=1), emergency=True
    )
    grant = Grant("korem-h10", 1, T0, 5_000_000, T0, T0 + timedelta(hours=1))
    for signal in (curtail, grant):
        journal.record_signal(
            at=T0,
            transport="mqtt",
            source="kegoc",
            signal_id=signal.id,
            revision=signal.revision,
            kind=signal.kind,
            verdict="received",
            detail="new",
            body=b"{}",
            book_change=(signal.kind, Held(signal, "kegoc", T0)),
        )
    journal.record_signal(
        at=T0,
        transport="mqtt",
        source="kegoc",
        signal_id="evt-0",
        revision=3,
        kind="cancel",
        verdict="received",
        detail="cancel",
        body=b"{}",
        book_change=("curtailment", None),
    )
    journal.close()
    book = Journal(path).restore_book()
    assert book.held["evt-1"] == Held(curtail, "kegoc", T0)
    assert book.held["korem-h10"].signal == grant
    assert "evt-0" not in book.held
    assert book.revisions == {
        "evt-1": (2, "curtailment"),
        "korem-h10": (1, "grant"),
        "evt-0": (3, "curtailment"),
    }
    assert book.admit(curtail, "kegoc", T0).verdict.value == "duplicate"
    assert SignalBook().admit(curtail, "kegoc", T0).verdict.value == "received"


def test_journal_records_decisions_commands_and_obligations(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    plan = Plan((Action("m1", ActionKind.SLEEP, "shed"),), 900, 850, feasible=True, notes=("note",))
    seq = journal.record_decision(
        at=T0, cause="signal", limit=Limit(1000, ("cap: 1 kW",)), plan=plan
    )
    journal.record_commands([CommandRecord(seq, "m1", "sleep", T0, T0, "ok")])
    ob = Obligation("evt-1#r1", "evt-1", 1, "curtailment", 1000, T0, T0 + timedelta(seconds=10))
    journal.record_obligations([ob], "firmware")
    reached = Obligation(
        ob.key,
        ob.signal_id,
        1,
        ob.kind,
        1000,
        ob.starts_at,
        ob.due_at,
        ObligationStatus.REACHED,
        T0 + timedelta(seconds=4),
        950,
    )
    journal.record_obligations([reached], "firmware")
    assert journal.decision_actions(seq) == [("m1", "sleep", "shed")]
    assert journal.rows("SELECT action_count FROM decisions") == [(1,)]
    assert journal.rows("SELECT decision_seq, outcome FROM commands") == [(seq, "ok")]
    assert journal.obligations() == [reached]
    assert journal.obligations(pending_only=True) == []


def test_journal_refuses_an_unusable_file(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match="cannot open the journal"):
        Journal(bad)


def test_journal_refuses_another_schema(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    with pytest.raises(JournalError, match="schema 99"):
        Journal(path)


def test_journal_full_disk_is_a_journal_error_and_recovers(tmp_path: Path) -> None:
    """SQLITE_FULL, what a full file system gives: a JournalError, the reason kept for the
    status, and cleared by the next write that succeeds."""
    journal = Journal(tmp_path / "j.db")
    [(pages,)] = journal.rows("PRAGMA page_count")
    journal.rows(f"PRAGMA max_page_count={int(pages)}")

    def fill() -> None:
        for _ in range(10_000):
            journal.record_event(T0, "fill", None, "x" * 1000)

    with pytest.raises(JournalError, match="database or disk is full"):
        fill()
    assert "full" in str(journal.error)
    journal.rows("PRAGMA max_page_count=1073741823")  # room again
    journal.record_event(T0, "after", None)
    assert journal.error is None
    journal.close()


def test_journal_ladder_and_unsettled_commands_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = Journal(path)
    plan = Plan(
        (
            Action("m1", ActionKind.SLEEP, "shed"),
            Action("m2", ActionKind.LOWER, "lower"),
            Action("m3", ActionKind.SLEEP, "shed"),
        ),
        1000,
        900,
        feasible=True,
    )
    seq = journal.record_decision(at=T0, cause="signal", limit=Limit(1000, ("x",)), plan=plan)
    journal.record_commands(
        [
            CommandRecord(seq, "m1", "sleep", T0, T0, "ok"),
            CommandRecord(seq, "m3", "sleep", T0, T0, "cancelled"),
        ],
        ladder={"m2": {"lowered_at": T0.isoformat()}, "m4": None},
        site={"offset": {"w": 1200, "at": T0.isoformat()}},
    )
    journal.close()
    again = Journal(path)
    assert again.ladder_state() == {"m2": {"lowered_at": T0.isoformat()}}
    assert again.site_state() == {"offset": {"w": 1200, "at": T0.isoformat()}}
    # m1's result is journaled; m2 had none; m3's was cancelled mid-way: both on the wire.
    assert sorted((m, k) for _, _, m, k, _ in again.unsettled(T0)) == [
        ("m2", "lower"),
        ("m3", "sleep"),
    ]
    assert again.unsettled(T0 + timedelta(seconds=1)) == []
    again.close()


def test_journal_opens_a_schema_1_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='1' WHERE key='schema'")
    db.execute("DROP TABLE ladder")
    db.commit()
    db.close()
    journal = Journal(path)
    assert journal.ladder_state() == {}
    assert journal.rows("SELECT value FROM meta WHERE key='schema'") == [(str(SCHEMA_VERSION),)]
    journal.close()
