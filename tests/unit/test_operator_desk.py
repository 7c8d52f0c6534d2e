"""The operator's desk restores what it can from the journal and never fails start-up
over one unreadable row; a change the journal refuses changes nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from controller.core.operator import HoldMode
from controller.intake.desk import Desk, Principal, Role
from controller.record.journal import Journal, JournalError

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
ALICE = Principal("alice", Role.OPERATOR)


def desk(journal: Journal, inbox: Any = None) -> Desk:
    return Desk(
        journal=journal,
        inbox=inbox or SimpleNamespace(overrides=()),  # type: ignore[arg-type]
        miners=["m1", "m2"],
        now=NOW,
    )


def test_unreadable_rows_are_skipped_and_good_ones_restored(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    d = desk(journal)
    d.hold("m1", HoldMode.SLEEP, expires_at=NOW + timedelta(hours=1), reason="fan", by=ALICE,
           now=NOW)  # fmt: skip
    rows = [
        ("override:bad", "{not json"),
        ("hold:m2", json.dumps({"type": "hold", "miner": "m2", "mode": "nap"})),
        ("override:naive", json.dumps({
            "type": "override", "id": "ov-naive", "limit_w": 1000, "reason": "r", "by": "b",
            "created_at": "2026-11-23T09:00:00", "expires_at": "2026-11-23T11:00:00"})),
    ]  # fmt: skip
    for key, text in rows:
        journal._db.execute("INSERT INTO operator (key, state) VALUES (?, ?)", (key, text))
    journal.close()
    restored = desk(Journal(tmp_path / "j.db"))
    assert set(restored.holds) == {"m1"}  # the bad hold mode was skipped
    assert restored.overrides["ov-naive"].expires_at == datetime(2026, 11, 23, 11, tzinfo=UTC)


def test_a_refused_journal_write_changes_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    inbox = SimpleNamespace(overrides=())
    d = desk(journal, inbox)
    journal.close()  # every write now fails
    with pytest.raises(JournalError):
        d.add_override(limit_w=1000, expires_at=NOW + timedelta(hours=1), reason="why",
                       by=ALICE, now=NOW, grid_limit_w=5000)  # fmt: skip
    with pytest.raises(JournalError):
        d.set_automation(paused=True, reason="why", by=ALICE, now=NOW)
    assert d.overrides == {}
    assert inbox.overrides == ()
    assert not d.paused
