"""The journal's hash chain: every evidence row carries a global chain sequence and
SHA-256(previous row's hash || the row's canonical encoding), so an edit, a deletion or an
insertion anywhere breaks the chain from that row on.

One registry names the chained tables and their columns; the journal appends through
`link_rows`, inside its own transactions. `walk` checks a journal (and its archives) in
chain order and names the first row that does not follow. The chain proves a file was not
edited piecemeal; a whole rewrite is caught only against a head someone else holds (a
signed export carries it, the archive cut records it).
"""

from __future__ import annotations

import heapq
import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from controller.record import floor
from controller.record.chain_links import (
    INSERT,
    REGISTRY,
    ZERO,
    Chained,
    Head,
    Problem,
    encode,
    link,
    link_rows,
    meta,
    next_rowid,
    read_head,
    set_meta,
    start_chain,
    vouched,
)

# The links are used as chain.X across the record room: one name for the chain.
__all__ = [
    "INSERT",
    "REGISTRY",
    "ZERO",
    "Chained",
    "Head",
    "Problem",
    "encode",
    "link",
    "link_rows",
    "meta",
    "next_rowid",
    "read_head",
    "set_meta",
    "start_chain",
    "vouched",
]

# -- verification ----------------------------------------------------------------------------

READ_TIMEOUT_S = 5.0  # the daemon may hold the write lock briefly


class ChainError(Exception):
    """A journal or archive cannot be read for verification (not: the chain is broken)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    rows: int  # chained rows that verified
    head: Head  # the last of them (the start if none)
    start: str  # from where the evidence is chained, in words
    legacy: int  # rows written before the chain began (not chained)
    problem: Problem | None
    cut: Head | None = None  # the journal's archive cut (None: nothing archived)
    whole: bool = True  # False: the rows before the cut were not checked (no archive given)

    @property
    def ok(self) -> bool:
        return self.problem is None


def connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection: verification may run beside the daemon (WAL)."""
    if not path.exists():
        raise ChainError(f"{path}: no such file")
    try:
        db = sqlite3.connect(
            path.resolve().as_uri() + "?mode=ro",
            uri=True,
            timeout=READ_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
        db.execute("SELECT 1 FROM meta LIMIT 1").fetchall()
    except sqlite3.Error as err:
        raise ChainError(f"{path}: cannot read it as a journal: {err}") from None
    return db


def _tagged(db: sqlite3.Connection, c: Chained, after: int) -> Iterator[Row]:
    sql = f"SELECT {', '.join(c.columns)}, chain_seq, chain_hash FROM {c.table}"  # noqa: S608
    for row in db.execute(sql + " WHERE seq > ? ORDER BY seq", (after,)):
        yield c.table, row


def chain_key(item: Row) -> int:
    seq = item[1][-2]
    return seq if isinstance(seq, int) else -1  # unsequenced rows come out where they lie


def _where(item: Row) -> str:
    return f"{item[0]} row {item[1][0]}"


def walk(
    db: sqlite3.Connection, start: Head, end: Head | None = None, stop: int | None = None
) -> tuple[Head, int, Problem | None]:
    """Walk the chained rows after `start` in chain order: how far they verify, how many,
    and the first that does not follow. Each table is read in its own order (`seq`) and
    the tables merged on the chain sequence. `end`: the head the file records. `stop`:
    walk no further than this chain row (an archive read while retention runs may hold
    rows past the journal's cut: the journal still has them, they are walked there)."""
    streams = [_tagged(db, c, start.rowids.get(c.table, 0)) for c in REGISTRY.values()]
    prev, seq, rows = start.hash, start.seq, 0
    rowids = dict(start.rowids)
    if stop is not None and end is not None and end.seq > stop:
        end = None  # what lies past `stop` is not this walk's to judge
    for key, group in itertools.groupby(heapq.merge(*streams, key=chain_key), key=chain_key):
        if stop is not None and key > stop:
            break
        members = list(group)
        problem = judge(members, key, prev, seq, end)
        if problem is not None:
            return Head(seq, prev, rowids), rows, problem
        prev, seq = bytes.fromhex(members[0][1][-1]), key
        rowids[members[0][0]] = int(members[0][1][0])
        rows += 1
    reached = Head(seq, prev, rowids)
    if end is not None and end.seq > seq:
        missing = f"row {end.seq}" if end.seq == seq + 1 else f"rows {seq + 1}..{end.seq}"
        text = f"chain {missing} removed (the last ones: the recorded head is row {end.seq})"
        return reached, rows, Problem("removed", text, chain_seq=seq + 1)
    if end is not None and end.seq == seq and end.hash != prev:
        text = f"the recorded head (row {end.seq}) does not match the last row: changed"
        return reached, rows, Problem("changed", text, chain_seq=seq)
    return reached, rows, None


Row = tuple[str, tuple[Any, ...]]  # (table, its columns..., chain_seq, chain_hash)


def judge(members: list[Row], key: int, prev: bytes, seq: int, end: Head | None) -> Problem | None:
    """The rows carrying chain sequence `key`, after row `seq` whose hash is `prev`: None
    if exactly one of them (left first in `members`) follows, else what is wrong."""
    first = members[0]
    where = _where(first)
    if key <= seq or (end is not None and key > end.seq):
        why = (
            "has no chain sequence"
            if key < 0
            else f"repeats chain row {key}"
            if key <= seq
            else f"(chain row {key}) lies after the recorded head (row {end.seq if end else 0})"
        )
        return _problem("inserted", f"{where} {why}: inserted", first)
    if key > seq + 1:
        missing = f"row {seq + 1}" if key == seq + 2 else f"rows {seq + 1}..{key - 1}"
        text = f"chain {missing} removed (missing before {where}, chain row {key})"
        return Problem("removed", text, chain_seq=seq + 1)
    good = [m for m in members if m[1][-1] == link(prev, m[0], key, m[1][:-2]).hex()]
    if not good:
        text = f"{where} (chain row {key}) was changed: its hash does not follow row {seq}"
        return _problem("changed", text, first)
    extra = [m for m in members if m is not good[0]]
    if extra:
        text = f"{_where(extra[0])} duplicates chain row {key} ({_where(good[0])}): inserted"
        return _problem("inserted", text, extra[0])
    return None


def _problem(kind: str, text: str, at: Row) -> Problem:
    return Problem(kind, text, at[0], int(at[1][0]), chain_key(at) if chain_key(at) >= 0 else None)


def heads(db: sqlite3.Connection, path: Path) -> tuple[Head, Head | None, Head]:
    """A file's chain start, cut (None: none) and head."""
    start = Head.parse(meta(db, "chain_start") or meta(db, "chain_from"))
    if start is None:
        raise ChainError(
            f"{path}: no hash chain in it (schema {meta(db, 'schema')}): an older curtaild"
            " wrote it; this one starts the chain when it opens the journal"
        )
    head = Head.parse(meta(db, "chain_head")) or start
    return start, Head.parse(meta(db, "chain_cut")), head


def verify(journal: Path, archives: Sequence[Path] = ()) -> Verdict:
    """Check the journal's chain (from its archive cut, or from the archives given, end to
    end) and every row below it. ChainError if a file cannot be read."""
    main = connect_ro(journal)
    parts: list[tuple[Path, sqlite3.Connection]] = []
    try:
        # The journal's snapshot first: retention copies into the archive before it
        # deletes from the journal, so archives read after it reach at least its cut.
        main.execute("BEGIN")
        heads(main, journal)
        for p in archives:
            parts.append((p, connect_ro(p)))
            parts[-1][1].execute("BEGIN")
        return _verify(journal, main, parts)
    except sqlite3.Error as err:
        raise ChainError(f"{journal}: cannot read the chain: {err}") from None
    finally:
        for _, db in [*parts, (journal, main)]:
            db.close()


def _verify(
    journal: Path, main: sqlite3.Connection, parts: list[tuple[Path, sqlite3.Connection]]
) -> Verdict:
    chain_from, cut, head = heads(main, journal)
    edge = cut or chain_from  # where the journal's own chain begins
    pos, rows, problem = _walk_archives(parts, chain_from, edge.seq)
    if problem is not None:
        return Verdict(rows, pos, "", 0, problem, cut)
    whole = bool(parts) or (cut is None and not floor.archived(main))
    if parts:
        if edge.seq != pos.seq or edge.hash != pos.hash:
            at = "no cut" if cut is None else f"its cut at chain row {cut.seq}"
            text = f"the archives end at chain row {pos.seq}; the journal has {at}"
            return Verdict(rows, pos, "", 0, Problem("changed", text, chain_seq=pos.seq), cut)
        start_text = f"from chain row {chain_from.seq + 1}, archive and journal end to end"
    elif cut is not None:
        pos = cut
        start_text = (
            f"from the archive cut after chain row {cut.seq} (older rows are in the archive:"
            " give --archive to check them too)"
        )
    else:
        start_text = f"from chain row {chain_from.seq + 1}"
    problem = _stray(main, chain_from, cut) if cut is not None else None
    if problem is None:
        problem = floor.beyond_cut(main, parts, floor_at(edge, chain_from))
    if problem is not None:
        return Verdict(rows, pos, start_text, 0, problem, cut, whole)
    pos, n, problem = walk(main, floor_at(pos, chain_from), head)
    legacy = 0
    if problem is None:
        files = [(journal, main), *parts]
        legacy, problem = floor.account(journal, files, chain_from, whole=whole)
    if problem is None:
        problem = floor.cut_stated(main, cut)
    return Verdict(rows + n, pos, start_text, legacy, problem, cut, whole)


def _walk_archives(
    parts: list[tuple[Path, sqlite3.Connection]], chain_from: Head, stop: int
) -> tuple[Head, int, Problem | None]:
    """The archives end to end in chain order, up to chain row `stop` (the journal's cut)."""
    pos, rows = chain_from, 0
    ordered = sorted(((heads(db, p), p, db) for p, db in parts), key=lambda x: x[0][0].seq)
    for (start, _, end), path, db in ordered:
        if start.seq != pos.seq or start.hash != pos.hash:
            text = f"{path} starts after chain row {start.seq}, the part before ends at {pos.seq}"
            kind = "removed" if start.seq > pos.seq else "inserted"
            return pos, rows, Problem(kind, text, chain_seq=pos.seq + 1)
        pos, n, problem = walk(db, floor_at(start, chain_from), end, stop=stop)
        rows += n
        if problem is not None:
            return pos, rows, replace(problem, text=f"{path}: {problem.text}")
    return pos, rows, None


def floor_at(pos: Head, chain_from: Head) -> Head:
    rowids = {t: max(pos.rowids.get(t, 0), r) for t, r in chain_from.rowids.items()}
    return Head(pos.seq, pos.hash, {**pos.rowids, **rowids})


def _stray(db: sqlite3.Connection, chain_from: Head, cut: Head) -> Problem | None:
    """A chained row at or below the cut still in the journal was put there afterwards."""
    for t, last in cut.rowids.items():
        row = db.execute(
            f"SELECT seq FROM {t} WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 1",  # noqa: S608
            (chain_from.rowids.get(t, 0), last),
        ).fetchone()
        if row is not None:
            text = f"{t} row {row[0]} lies before the archive cut: inserted"
            return Problem("inserted", text, t, int(row[0]))
    return None


@dataclass(frozen=True, slots=True)
class ChainStatus:
    """Whether the journal's chain verifies, for the dashboard and status."""

    verified: bool | None  # None: not checked yet
    rows: int = 0
    head: str | None = None
    checked_at: datetime | None = None
    problem: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "rows": self.rows,
            "head": self.head,
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
            "problem": self.problem,
        }


class ChainWatch:
    """The daemon's own check of its journal: the whole chain (from the cut) once, then
    only the rows written since. Blocking: run it in a thread (asyncio.to_thread), on its
    own read-only connection, never on the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.status = ChainStatus(None)
        self._db: sqlite3.Connection | None = None
        self._pos: Head | None = None  # verified up to here

    def check(self, now: datetime, *, full: bool = False) -> ChainStatus:
        """Check the rows written since the last check (`full`: the whole chain again)."""
        if full:
            self._pos = None
        try:
            if self._db is None:
                self._db = connect_ro(self.path)
            db = self._db
            db.execute("BEGIN")
            try:
                self.status = self._check(db, now)
            finally:
                db.execute("ROLLBACK")
        except (ChainError, sqlite3.Error) as err:
            self.close()
            self.status = ChainStatus(False, self.status.rows, self.status.head, now, str(err))  # noqa: FBT003
        return self.status

    def _check(self, db: sqlite3.Connection, now: datetime) -> ChainStatus:
        chain_from, cut, head = heads(db, self.path)
        rows = self.status.rows
        pos, whole = self._pos, False
        if pos is None or (cut is not None and pos.seq < cut.seq):
            pos, rows, whole = floor_at(cut or chain_from, chain_from), 0, True
        # A row below every sequence each time (cheap: the key's first entry); the older
        # rows' count and the cut's statement on a whole check.
        problem = floor.below_one(self.path, db)
        if problem is None and whole and cut is not None:
            problem = _stray(db, chain_from, cut)
        reached, n = pos, 0
        if problem is None:
            reached, n, problem = walk(db, pos, head)
        if problem is None and whole:
            problem = floor.account(self.path, [(self.path, db)], chain_from, whole=False)[1]
            problem = problem or floor.cut_stated(db, cut)
        rows += n
        if problem is not None:
            self._pos = None  # checked again from the start next time
            return ChainStatus(False, rows, reached.hex, now, problem.text)  # noqa: FBT003
        self._pos = reached
        return ChainStatus(True, rows, reached.hex if reached.seq else None, now, None)  # noqa: FBT003

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
