"""The journal's hash chain: any single-row edit, deletion or insertion, in any chained
table, in the journal or its archive, is found and the first bad row named; a schema-2
journal is upgraded with its old rows kept and not chained; the daemon's own check."""

from __future__ import annotations

import sqlite3
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.clock import FakeClock
from controller.core.energy import CurtailmentExcess, GrantUse, Interval
from controller.core.model import Action, ActionKind, Limit, Plan
from controller.core.signals import Grant, Held, Obligation, ObligationStatus
from controller.record import chain
from controller.record.chain import REGISTRY, ChainWatch, verify
from controller.record.journal import CommandRecord, Journal
from controller.record.retention import archive_batch
from controller.record.upkeep import Upkeep

T0 = datetime(2025, 1, 1, tzinfo=UTC)
STEP = timedelta(days=10)


def write(journal: Journal, kind: int, i: int) -> None:
    """One write through the journal's public methods, of the kind picked."""
    at = T0 + i * STEP
    if kind == 0:
        grant = Grant(f"g{i}", 1, at, 5_000_000, at, at + timedelta(hours=1))
        journal.record_signal(
            at=at,
            transport="http",
            source="kegoc",
            signal_id=grant.id,
            revision=1,
            kind="grant",
            verdict="received",
            detail="new",
            body=b'{"type":"grant"}',
            book_change=("grant", Held(grant, "kegoc", at)),
        )
    elif kind == 1:
        actions = tuple(Action(f"m{k}", ActionKind.SLEEP, "shed") for k in range(3))
        plan = Plan(actions, 900, 850, feasible=True, notes=("n",))
        seq = journal.record_decision(at=at, cause="signal", limit=Limit(900, ("r",)), plan=plan)
        journal.record_commands(
            [CommandRecord(seq, f"m{k}", "sleep", at, at, "ok") for k in range(2)],
            ladder={"m0": {"cut_at": at.isoformat()}},
        )
    elif kind == 2:
        ob = Obligation(f"o{i}", f"s{i}", 1, "curtailment", 800, at, at + timedelta(seconds=30))
        journal.record_obligations([ob], "meter")
        done = Obligation(
            ob.key, ob.signal_id, 1, ob.kind, 800, ob.starts_at, ob.due_at,
            ObligationStatus.REACHED, at + timedelta(seconds=5), 790,
        )  # fmt: skip
        journal.record_obligations([done], "meter")
    elif kind == 3:
        journal.record_event(at, "alarm", f"m{i}", {"why": "cold", "n": i})
    elif kind == 4:
        journal.record_operator(at, "hold", {"who": "ops"}, key=f"hold:{i}", state={"n": i})
    elif kind == 5:  # an energy minute with a grant's use and a curtailment's excess
        minute = Interval(
            at, at + timedelta(minutes=1), 0.5, 0.3, 0.1, 0.1, 0.0, 0.4, 0.3, 0.0, 0.0, "meter",
            {f"g{i}": GrantUse(0.3, 0.3, 0.0)}, (CurtailmentExcess(f"c{i}", 1, 20_000, 0.1),),
        )  # fmt: skip
        journal.record_energy([minute])
    else:  # an uploaded auction schedule: its grants and the upload's event
        grant = Grant(f"auction-{i}", 1, at, 2_000_000, at, at + timedelta(hours=1))
        held = Held(grant, "schedule:ops", at)
        journal.record_schedule(
            at, [(held, "row 1", b'{"kw":2000}')], (f"schedule:{i}", {"by": "ops"})
        )


def chained_rows(db: sqlite3.Connection) -> list[tuple[str, int, int, str]]:
    """(table, seq, chain seq, chain hash) of every chained row, in chain order."""
    rows = [
        (t, int(r[0]), int(r[1]), str(r[2]))
        for t in REGISTRY
        for r in db.execute(f"SELECT seq, chain_seq, chain_hash FROM {t}")
    ]
    return sorted(rows, key=lambda r: r[2])


def build(path: Path, kinds: list[int]) -> Journal:
    journal = Journal(path)
    for i, kind in enumerate(kinds):
        write(journal, kind, i)
    return journal


def test_every_write_method_is_chained_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = build(path, [0, 1, 2, 3, 4, 1, 5, 6])
    with sqlite3.connect(path) as db:
        rows = chained_rows(db)
        counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in REGISTRY}
    # two signals (one uploaded), 2 decisions + 4 commands, 2 obligation changes, an alarm,
    # an operator event and the upload's, an energy minute with its grant and curtailment
    assert counts == {
        "signals": 2, "decisions": 2, "commands": 4, "events": 3, "obligation_log": 2,
        "energy_intervals": 1, "energy_grants": 1, "energy_curtailments": 1,
    }  # fmt: skip
    assert [r[2] for r in rows] == list(range(1, 17))
    assert journal.head.seq == 16
    assert journal.head.hex == rows[-1][3]
    assert journal.obligations()[0].status is ObligationStatus.REACHED  # the state table too
    journal.close()
    verdict = verify(path)
    assert verdict.ok, verdict.problem
    assert (verdict.rows, verdict.head.seq, verdict.legacy) == (16, 16, 0)
    assert Journal(path).head.hex == rows[-1][3]  # the head is read back from meta


MUTATIONS = st.sampled_from(
    ["edit", "edit-hash", "delete", "insert-bare", "insert-dup", "append", "insert-low"]
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    kinds=st.lists(st.integers(0, 6), min_size=3, max_size=9),
    cut_after=st.none() | st.integers(0, 9),
    mutation=MUTATIONS,
    pick=st.integers(0, 10_000),
    in_archive=st.booleans(),
)
def test_any_single_row_change_is_found_and_named(
    kinds: list[int], cut_after: int | None, mutation: str, pick: int, in_archive: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, archive = Path(tmp) / "j.db", Path(tmp) / "j.archive.db"
        build(path, kinds).close()
        archives: list[Path] = []
        if cut_after is not None:
            before = T0 + min(cut_after, len(kinds)) * STEP
            while archive_batch(path, archive, before, limit=4):
                pass
            if archive.exists():
                archives = [archive]
                assert verify(path).ok  # the journal alone, from the cut
        target = archive if in_archive and archives else path
        assert verify(path, archives).ok
        db = sqlite3.connect(target)
        rows = chained_rows(db)
        if not rows:
            db.close()
            return
        table, seq, chain_seq, _ = rows[pick % len(rows)]
        expect = mutate(db, mutation, (table, seq, chain_seq), pick // 13, rows)
        db.commit()
        db.close()
        verdict = verify(path, archives)
        assert not verdict.ok, (mutation, table, seq)
        problem = verdict.problem
        assert problem is not None
        assert problem.kind == expect["kind"], problem.text
        for field in ("table", "rowid", "chain_seq"):
            if field in expect:
                assert getattr(problem, field) == expect[field], problem.text
        if target == path:
            alone = verify(path)  # the journal alone finds what was done to it
            assert alone.problem is not None


def mutate(
    db: sqlite3.Connection,
    mutation: str,
    row: tuple[str, int, int],
    pick: int,
    rows: list[tuple[str, int, int, str]],
) -> dict[str, Any]:
    """Apply one mutation to `row` (table, seq, chain seq); what verification must say."""
    table, seq, chain_seq = row
    columns = REGISTRY[table].columns
    if mutation == "edit":
        column = columns[1 + pick % (len(columns) - 1)]
        old = db.execute(f"SELECT {column} FROM {table} WHERE seq=?", (seq,)).fetchone()[0]
        new: Any = (
            (old or 0) + 1
            if isinstance(old, int)
            else b"x"
            if isinstance(old, bytes)
            else f"{old}!"
        )
        db.execute(f"UPDATE {table} SET {column}=? WHERE seq=?", (new, seq))
        return {"kind": "changed", "table": table, "rowid": seq}
    if mutation == "edit-hash":
        db.execute(f"UPDATE {table} SET chain_hash=? WHERE seq=?", ("00" * 32, seq))
        return {"kind": "changed", "table": table, "rowid": seq}
    if mutation == "delete":
        db.execute(f"DELETE FROM {table} WHERE seq=?", (seq,))
        return {"kind": "removed", "chain_seq": chain_seq}
    (last,) = db.execute(f"SELECT max(seq) FROM {table}").fetchone()
    rowid = int(last) + 1
    names = ", ".join(columns[1:])
    copy = f"INSERT INTO {table} (seq, {names}, chain_seq, chain_hash) SELECT ?, {names}, ?, ?"
    if mutation == "insert-low":  # below 1, or a free place at or below the archive cut
        cut = chain.Head.parse(chain.meta(db, "chain_cut"))
        held = {int(r[0]) for r in db.execute(f"SELECT seq FROM {table}")}
        free = [r for r in range(1, (cut.rowids.get(table, 0) if cut else 0) + 1) if r not in held]
        rowid = [-1 - pick % 50, 0, *free][pick % (2 + len(free))]
        db.execute(f"{copy} FROM {table} WHERE seq=?", (rowid, None, None, seq))
        return {"kind": "inserted", "table": table, "rowid": rowid}
    if mutation == "insert-bare":
        db.execute(f"{copy} FROM {table} WHERE seq=?", (rowid, None, None, seq))
    elif mutation == "insert-dup":  # another row's place in the chain, and its hash
        db.execute(f"{copy} FROM {table} WHERE seq=?", (rowid, chain_seq, rows[0][3], seq))
    else:  # after the head, with a hash that follows it: the head in meta says otherwise
        head = rows[-1]
        forged = chain.link(bytes.fromhex(head[3]), table, head[2] + 1, (rowid,))
        db.execute(f"{copy} FROM {table} WHERE seq=?", (rowid, head[2] + 1, forged.hex(), seq))
    return {"kind": "inserted", "table": table, "rowid": rowid}


def test_a_schema_2_journal_is_upgraded_and_chained_from_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_2)
    db.execute("INSERT INTO meta VALUES ('schema', '2')")
    for i in range(3):
        db.execute(
            "INSERT INTO events (at, kind, subject, detail) VALUES (?,?,?,?)",
            (T0.isoformat(), "old", f"e{i}", None),
        )
    db.execute(
        "INSERT INTO decisions (at, cause, limit_w, reasons, budget_w, expected_w, feasible,"
        " notes, action_count, actions) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (T0.isoformat(), "signal", 1, "[]", 1, 1, 1, "[]", 0, b"x"),
    )
    db.commit()
    db.close()
    journal = Journal(path)
    assert journal.rows("SELECT value FROM meta WHERE key='schema'") == [("3",)]
    assert journal.head.seq == 1  # the chain's first row counts the older ones
    assert [e[2] for e in journal.events()] == ["old", "old", "old", "chain"]
    write(journal, 3, 1)
    write(journal, 1, 2)
    new_event = journal.events()[-1][0]
    journal.close()
    verdict = verify(path)
    assert verdict.ok, verdict.problem
    assert (verdict.rows, verdict.legacy) == (1 + 1 + 1 + 2, 4)
    assert verdict.start == "from chain row 1"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM events WHERE chain_seq IS NULL").fetchone() == (3,)
        # Old rows are not evidence the chain can vouch for; the new ones are.
        db.execute("UPDATE events SET subject='edited' WHERE seq=1")
        assert verify(path).ok
        db.execute("UPDATE events SET subject='edited' WHERE seq=?", (new_event,))
    problem = verify(path).problem
    assert problem is not None
    assert (problem.kind, problem.table, problem.rowid) == ("changed", "events", new_event)


def test_the_journal_numbers_on_after_a_table_is_archived_whole(tmp_path: Path) -> None:
    path, archive = tmp_path / "j.db", tmp_path / "a.db"
    journal = build(path, [1, 1, 3])
    while archive_batch(path, archive, T0 + 100 * STEP):
        pass
    assert journal.rows("SELECT count(*) FROM decisions") == [(0,)]
    write(journal, 1, 200)  # the same journal object, writing on after the archiver
    seqs = journal.rows("SELECT seq FROM decisions")
    assert seqs == [(3,)]  # not 1: decisions 1 and 2 are in the archive
    assert journal.rows("SELECT count(*) FROM ladder") == [(1,)]  # state is never archived
    journal.close()
    assert verify(path).ok
    assert "archive cut after chain row" in verify(path).start
    both = verify(path, [archive])
    assert both.ok, both.problem
    assert both.rows == 3 + 3 + 1 + 1 + 3  # and the cut's event


def test_the_daemons_check_is_incremental_and_sees_tampering(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = build(path, [3, 1])
    watch = ChainWatch(path)
    first = watch.check(T0)
    assert (first.verified, first.rows, first.head) == (True, 4, journal.head.hex)
    write(journal, 3, 5)
    second = watch.check(T0 + STEP)
    assert (second.verified, second.rows, second.head) == (True, 5, journal.head.hex)
    assert second.as_json()["checked_at"] == (T0 + STEP).isoformat()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE commands SET outcome='timeout' WHERE seq=2")
    write(journal, 3, 6)
    # Only rows after the last check are read: the edit is found by the next full check.
    assert watch.check(T0).verified is True
    status = watch.check(T0, full=True)
    assert status.verified is False
    assert status.problem is not None
    assert "commands row 2" in status.problem
    assert watch.check(T0).verified is False  # and stays found
    watch.close()
    journal.close()


SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE signals (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, transport TEXT NOT NULL, source TEXT,
    signal_id TEXT, revision INTEGER, kind TEXT, verdict TEXT NOT NULL, detail TEXT,
    body TEXT);
CREATE TABLE revisions (signal_id TEXT PRIMARY KEY, revision INTEGER NOT NULL,
    kind TEXT NOT NULL);
CREATE TABLE held (signal_id TEXT PRIMARY KEY, signal TEXT NOT NULL, source TEXT NOT NULL,
    received_at TEXT NOT NULL);
CREATE TABLE decisions (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, cause TEXT NOT NULL, limit_w INTEGER NOT NULL,
    reasons TEXT NOT NULL, budget_w INTEGER NOT NULL, expected_w INTEGER NOT NULL,
    feasible INTEGER NOT NULL, notes TEXT NOT NULL, action_count INTEGER NOT NULL,
    actions BLOB NOT NULL);
CREATE TABLE commands (
    seq INTEGER PRIMARY KEY, decision_seq INTEGER, miner_id TEXT NOT NULL,
    action TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT NOT NULL,
    outcome TEXT NOT NULL, detail TEXT);
CREATE TABLE obligations (
    key TEXT PRIMARY KEY, signal_id TEXT NOT NULL, revision INTEGER NOT NULL,
    kind TEXT NOT NULL, limit_w INTEGER NOT NULL, starts_at TEXT NOT NULL,
    due_at TEXT NOT NULL, status TEXT NOT NULL, reached_at TEXT, measured_w INTEGER,
    measured_by TEXT);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT,
    detail TEXT);
CREATE TABLE operator (key TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE ladder (miner_id TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE site_state (key TEXT PRIMARY KEY, state TEXT NOT NULL);
"""


async def test_the_daemons_retention_archives_old_rows_and_journals_it(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = build(path, [1, 3, 0, 2, 4, 1])  # one write every 10 days from T0
    upkeep = Upkeep(journal, FakeClock(T0 + 44 * STEP), retention_days=400)
    assert upkeep.archive_path == tmp_path / "j.archive.db"
    held = journal.restore_book().held
    assert await upkeep.retain() == 3 + 1 + 1 + 2  # i=0..3: more than 400 days before
    assert journal.restore_book().held == held  # state stays, evidence moved
    assert [e[2] for e in journal.events()][-1] == "archive"
    assert await upkeep.retain() == 0
    status = await upkeep.check()
    assert status.verified is True, status.problem
    journal.close()
    both = verify(path, [upkeep.archive_path])
    assert both.ok, both.problem
    assert both.rows == 3 + 1 + 1 + 2 + 1 + 3 + 1 + 1  # the cut's event and the summary
    assert await Upkeep(Journal(path), FakeClock(T0)).retain() == 0  # no window: keep all
