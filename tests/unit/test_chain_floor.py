"""Below the chain's walk: a row inserted at any sequence (below 1, among the rows older
than the chain, between its start and the archive cut, in the archive) is found by
`verify` and the daemon's check, and the reports do not count it; a cut no chained row
states is found; verify reads an archive only up to the journal's cut while retention runs;
text that cannot be stored as UTF-8 does not escape the journal as a UnicodeEncodeError."""

from __future__ import annotations

import sqlite3
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.core.energy import Interval
from controller.record import chain, floor
from controller.record.chain import REGISTRY, ChainWatch, Head, verify
from controller.record.energy_report import energy_report
from controller.record.journal import Journal, JournalError
from controller.record.report import signal_history
from controller.record.retention import archive_batch
from tests.unit.test_chain import SCHEMA_2, T0, build, write

T = datetime(2026, 1, 1, tzinfo=UTC)


def minutes(journal: Journal, n: int) -> None:
    journal.record_energy(
        [
            Interval(T + timedelta(minutes=i), T + timedelta(minutes=i + 1), 1.0, 0.0, 1.0,
                     0.0, 0.0, 2.0, 0.0, 0.0, 0.0, "meter")
            for i in range(n)
        ]
    )  # fmt: skip


def insert_bare(db: sqlite3.Connection, table: str, seq: int, like: int) -> None:
    """A copy of row `like` at `seq`, with no place in the chain."""
    names = ", ".join(REGISTRY[table].columns[1:])
    db.execute(
        f"INSERT INTO {table} (seq, {names}) SELECT ?, {names} FROM {table} WHERE seq=?",
        (seq, like),
    )


def test_a_row_below_every_sequence_is_found_and_not_reported(tmp_path: Path) -> None:
    """The review's t3: an interval of 100 kWh excess at seq -1 and an event at seq 0."""
    path = tmp_path / "j.db"
    journal = Journal(path)
    minutes(journal, 5)
    journal.record_event(T, "x", "y", "z")
    journal.close()
    watch = ChainWatch(path)
    assert watch.check(T).verified is True
    before = energy_report(path, T, T + timedelta(hours=1), site_id="s")["totals"]
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO energy_intervals (seq, start, end, grid_kwh, within_grants_kwh,"
            " base_allowance_kwh, excess_kwh, exempt_generation_kwh, allowed_kwh, granted_kwh,"
            " gap_s, estimated_s, measured_by) VALUES (-1,?,?,100,0,0,100,0,0,0,0,0,'meter')",
            ((T + timedelta(minutes=2)).isoformat(), (T + timedelta(minutes=3)).isoformat()),
        )
    problem = verify(path).problem
    assert problem is not None
    assert (problem.kind, problem.table, problem.rowid) == ("inserted", "energy_intervals", -1)
    status = watch.check(T)  # the next incremental check, not only a full one
    assert status.verified is False
    assert "energy_intervals row -1" in (status.problem or "")
    watch.close()
    after = energy_report(path, T, T + timedelta(hours=1), site_id="s")["totals"]
    assert after["grid_kwh"] == before["grid_kwh"] == 5.0
    assert after["excess_kwh"] == before["excess_kwh"] == 0.0


def test_a_signal_beside_the_chain_is_not_in_the_signal_history(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    build(path, [0]).close()
    with sqlite3.connect(path) as db:
        insert_bare(db, "signals", 0, 1)
    assert len(signal_history(path)) == 1
    assert verify(path).problem is not None


def legacy_journal(path: Path) -> None:
    """A schema-2 journal (an older curtaild) with events at seq 1, 5 and 9: room between."""
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_2)
    db.execute("INSERT INTO meta VALUES ('schema', '2')")
    for seq in (1, 5, 9):
        db.execute(
            "INSERT INTO events (seq, at, kind, subject, detail) VALUES (?,?,?,?,?)",
            (seq, T0.isoformat(), "old", f"e{seq}", None),
        )
    db.commit()
    db.close()


def test_older_rows_are_counted_and_digested_at_the_chains_start(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    legacy_journal(path)
    journal = Journal(path)
    write(journal, 3, 1)
    journal.close()
    verdict = verify(path)
    assert verdict.ok, verdict.problem
    assert verdict.legacy == 3
    cases = [
        ("INSERT INTO events (seq, at, kind) VALUES (3, 'x', 'forged')", "inserted"),
        ("UPDATE events SET subject='edited' WHERE seq=5", "changed"),
        ("DELETE FROM events WHERE seq=9", "removed"),
    ]
    for sql, kind in cases:
        copy = tmp_path / f"{kind}.db"
        with sqlite3.connect(path) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        with sqlite3.connect(copy) as db:
            db.execute(sql)
        problem = verify(copy).problem
        assert problem is not None, sql
        assert (problem.kind, problem.table) == (kind, "events"), problem.text
        if kind != "changed":  # a count the daemon's check sees too
            watch = ChainWatch(copy)
            assert watch.check(T).verified is False
            watch.close()
    # The count in meta edited to match an insertion: the chain's first row says otherwise.
    copy = tmp_path / "recounted.db"
    with sqlite3.connect(path) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    with sqlite3.connect(copy) as db:
        db.execute("INSERT INTO events (seq, at, kind) VALUES (3, 'x', 'forged')")
        start = db.execute("SELECT value FROM meta WHERE key='chain_from'").fetchone()[0]
        older = list(db.execute("SELECT * FROM events WHERE seq <= 9 ORDER BY seq"))
        older = [tuple(r[:5]) for r in older]  # seq, at, kind, subject, detail
        recorded = floor.summary(db)
        assert recorded is not None
        forged = start.replace('"rows": 3', '"rows": 4').replace(
            recorded["events"]["digest"], floor.digest("events", older)
        )
        db.execute("UPDATE meta SET value=? WHERE key='chain_from'", (forged,))
    problem = verify(copy).problem
    assert problem is not None
    assert (problem.kind, problem.chain_seq) == ("changed", 1), problem.text


def test_a_cut_no_chained_row_states_is_found(tmp_path: Path) -> None:
    """The review's t4: the oldest rows deleted and the cut written by hand."""
    path = tmp_path / "j.db"
    journal = Journal(path)
    minutes(journal, 5)
    journal.close()
    with sqlite3.connect(path) as db:
        seq, h = db.execute(
            "SELECT chain_seq, chain_hash FROM energy_intervals WHERE seq=2"
        ).fetchone()
        db.execute("DELETE FROM energy_intervals WHERE seq<=2")
        cut = Head(seq, bytes.fromhex(h), {"energy_intervals": 2})
        db.execute("INSERT OR REPLACE INTO meta VALUES ('chain_cut', ?)", (cut.as_json(),))
    problem = verify(path).problem
    assert problem is not None
    assert problem.kind == "removed"
    assert "no chained event states" in problem.text
    watch = ChainWatch(path)
    assert watch.check(T).verified is False
    watch.close()


def test_verify_reads_an_archive_only_up_to_the_journals_cut(tmp_path: Path) -> None:
    """The review's t9: a batch runs between verify's read of the journal and the archive."""
    path, archive = tmp_path / "j.db", tmp_path / "j.archive.db"
    journal = Journal(path)
    old = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(30):
        journal.record_event(old + timedelta(minutes=i), "x", f"s{i}", "d")
    journal.close()
    assert archive_batch(path, archive, old + timedelta(minutes=10))
    main = chain.connect_ro(path)
    main.execute("BEGIN")
    chain.heads(main, path)  # the journal's snapshot
    assert archive_batch(path, archive, old + timedelta(minutes=20)) == 10
    part = chain.connect_ro(archive)
    part.execute("BEGIN")
    verdict = chain._verify(path, main, [(archive, part)])
    assert verdict.ok, verdict.problem
    # An archive row past the cut that is not the journal's own is still found.
    part.execute("ROLLBACK")
    with sqlite3.connect(archive) as db:
        db.execute("UPDATE events SET subject='edited' WHERE seq=15")
    part.execute("BEGIN")
    problem = chain._verify(path, main, [(archive, part)]).problem
    assert problem is not None
    assert (problem.kind, problem.table, problem.rowid) == ("inserted", "events", 15)
    main.close()
    part.close()
    assert verify(path, [archive]).problem is not None  # and read afresh: changed there


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    kinds=st.lists(st.integers(0, 6), min_size=2, max_size=7),
    cut_after=st.none() | st.integers(0, 8),
    where=st.sampled_from(["negative", "zero", "older", "below-cut", "after-head"]),
    pick=st.integers(0, 10_000),
    in_archive=st.booleans(),
)
def test_an_insertion_anywhere_is_found(
    kinds: list[int], cut_after: int | None, where: str, pick: int, in_archive: bool
) -> None:
    """An upgraded journal (older rows at seq 1, 5, 9), maybe archived, and one row
    inserted at any sequence, in the journal or the archive: verify finds it."""
    with tempfile.TemporaryDirectory() as tmp:
        path, archive = Path(tmp) / "j.db", Path(tmp) / "j.archive.db"
        legacy_journal(path)
        journal = Journal(path)
        for i, kind in enumerate(kinds, start=1):
            write(journal, kind, i)
        journal.close()
        archives: list[Path] = []
        if cut_after is not None:
            while archive_batch(path, archive, T0 + cut_after * timedelta(days=10), limit=3):
                pass
            archives = [archive] if archive.exists() else []
        assert verify(path, archives).ok
        target = archive if in_archive and archives else path
        db = sqlite3.connect(target)
        present = {int(r[0]) for r in db.execute("SELECT seq FROM events")}
        cut = Head.parse(chain.meta(sqlite3.connect(path), "chain_cut"))
        top = max(present | {9})
        seq = {
            "negative": -1 - pick % 1000,
            "zero": 0,
            "older": [s for s in (2, 3, 4, 6, 7, 8) if s not in present][pick % 3],
            "below-cut": next(
                (s for s in range(10, (cut.rowids.get("events", 0) if cut else 0) + 1)
                 if s not in present),
                top + 1,
            ),
            "after-head": top + 1,
        }[where]  # fmt: skip
        db.execute(
            "INSERT INTO events (seq, at, kind, subject) VALUES (?, ?, 'forged', 'x')",
            (seq, T0.isoformat()),
        )
        db.commit()
        db.close()
        verdict = verify(path, archives)
        assert verdict.problem is not None, (where, seq, target.name)
        assert verdict.problem.kind == "inserted", verdict.problem.text


def test_text_that_is_not_utf8_is_escaped_at_the_journal_boundary(tmp_path: Path) -> None:
    """A lone surrogate (json.loads accepts "\\ud800") in a subject, a detail, a signal."""
    path = tmp_path / "j.db"
    journal = Journal(path)
    journal.record_event(T, "pools", "m\ud800", "stratum+tcp://evil\ud800:3333")
    journal.record_signal(
        at=T, transport="http", source="s\udfff", signal_id=None, revision=None, kind=None,
        verdict="forged", detail="bad \ud800", body=None,
    )  # fmt: skip
    assert journal.error is None
    (subject, detail) = journal.rows("SELECT subject, detail FROM events")[0]
    assert (subject, detail) == ("m\\ud800", "stratum+tcp://evil\\ud800:3333")
    assert journal.rows("SELECT source, detail FROM signals") == [("s\\udfff", "bad \\ud800")]
    # A state table bound raw: the row is refused as a JournalError, the journal goes on.
    with pytest.raises(JournalError, match="cannot journal this row"):
        journal.record_operator(T, "hold", {"who": "ops"}, key="k\ud800", state={"n": 1})
    assert journal.error is None
    journal.record_event(T, "after", None, None)
    journal.close()
    verdict = verify(path)
    assert verdict.ok, verdict.problem
    assert verdict.rows == 3
