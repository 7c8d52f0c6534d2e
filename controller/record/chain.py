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

import hashlib
import heapq
import itertools
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from json import encoder as _json_encoder
from pathlib import Path
from typing import Any

ZERO = bytes(32)


@dataclass(frozen=True, slots=True)
class Chained:
    """A chained table: its columns (its own `seq` first) and the SQL for a row's time,
    by which retention decides what is old."""

    table: str
    columns: tuple[str, ...]
    time_sql: str


def _table(table: str, columns: str, time_sql: str = "at") -> Chained:
    return Chained(table, ("seq", *columns.split()), time_sql)


# Adding a chained table is one entry here (its CREATE TABLE carries chain_seq, chain_hash).
REGISTRY: dict[str, Chained] = {
    c.table: c
    for c in (
        _table("signals", "at transport source signal_id revision kind verdict detail body"),
        _table(
            "decisions",
            "at cause limit_w reasons budget_w expected_w feasible notes action_count actions",
        ),
        _table(
            "commands",
            "decision_seq miner_id action started_at finished_at outcome detail",
            "finished_at",
        ),
        _table("events", "at kind subject detail"),
        # Obligations are state (INSERT OR REPLACE); each write is logged here, append-only.
        _table(
            "obligation_log",
            "key signal_id revision kind limit_w starts_at due_at status reached_at"
            " measured_w measured_by",
            "coalesce(reached_at, due_at)",
        ),
        # The energy account's minutes, each grant's use and each curtailment's excess.
        _table(
            "energy_intervals",
            "start end grid_kwh within_grants_kwh base_allowance_kwh excess_kwh"
            " exempt_generation_kwh allowed_kwh granted_kwh gap_s estimated_s measured_by",
            "start",
        ),
        _table("energy_grants", "start grant_id used_kwh granted_kwh excess_kwh", "start"),
        _table("energy_curtailments", "start signal_id revision limit_w excess_kwh", "start"),
    )
}

INSERT = {
    c.table: f"INSERT INTO {c.table} ({', '.join(c.columns)}, chain_seq, chain_hash)"  # noqa: S608
    f" VALUES ({', '.join('?' * (len(c.columns) + 2))})"
    for c in REGISTRY.values()
}


def _blob(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not a journal value")


# Canonical encoding: the JSON array [table, chain seq, column values...] as Python's
# json.dumps(separators=(",", ":")) writes it (ASCII, blobs as hex). The C encoder is made
# once: JSONEncoder.encode makes one per call, a third of the cost on 10,000 rows.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_blob)
# (markers, default, encoder, indent, key sep, item sep, sort_keys, skipkeys, allow_nan)
_C_ARGS = (None, _blob, _json_encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
_MAKE: Callable[..., Callable[[object, int], Iterable[str]]] | None = getattr(
    _json_encoder, "c_make_encoder", None
)
_C_ENCODE = _MAKE(*_C_ARGS) if _MAKE is not None else None


def encode(table: str, chain_seq: int, row: Sequence[Any]) -> bytes:
    """The bytes a row's hash covers (after the previous hash)."""
    value = (table, chain_seq, *row)
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(value, 0)).encode()
    return _ENCODER.encode(value).encode()  # pragma: no cover - CPython has the C encoder


def link(prev: bytes, table: str, chain_seq: int, row: Sequence[Any]) -> bytes:
    return hashlib.sha256(prev + encode(table, chain_seq, row)).digest()


@dataclass(frozen=True, slots=True)
class Head:
    """A point on the chain: the last row's chain sequence and hash (0, zeros: none)."""

    seq: int = 0
    hash: bytes = ZERO
    rowids: dict[str, int] = field(default_factory=dict)  # per table, its last row there

    def as_json(self) -> str:
        return json.dumps({"seq": self.seq, "hash": self.hash.hex(), "rowids": self.rowids})

    @classmethod
    def parse(cls, text: str | None) -> Head | None:
        if text is None:
            return None
        data = json.loads(text)
        rowids = {str(k): int(v) for k, v in data.get("rowids", {}).items()}
        return cls(int(data["seq"]), bytes.fromhex(data["hash"]), rowids)

    @property
    def hex(self) -> str:
        return self.hash.hex()


def meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def start_chain(db: sqlite3.Connection, at: str) -> None:
    """The chain starts here: rows already in the chained tables (a journal an older
    curtaild wrote) stay unchained, and verification says from which row it holds."""
    rowids = {}
    for c in REGISTRY.values():
        cols = {r[1] for r in db.execute(f"PRAGMA table_info({c.table})")}
        for name, kind in (("chain_seq", "INTEGER"), ("chain_hash", "TEXT")):
            if name not in cols:
                db.execute(f"ALTER TABLE {c.table} ADD COLUMN {name} {kind}")
        (last,) = db.execute(f"SELECT max(seq) FROM {c.table}").fetchone()  # noqa: S608
        if last is not None:
            rowids[c.table] = int(last)
    start = Head(0, ZERO, rowids)
    set_meta(db, "chain_from", json.dumps({**json.loads(start.as_json()), "at": at}))
    set_meta(db, "chain_head", start.as_json())


def vouched(db: sqlite3.Connection, table: str, alias: str = "") -> str:
    """An SQL condition for the rows of `table` the chain vouches for: chained ones, and
    the older ones counted at its start (`curtaild verify` checks both). A report reads
    only these, so a row slipped in beside the chain is not counted."""
    start = Head.parse(meta(db, "chain_from")) or Head()
    p = f"{alias}." if alias else ""
    older = int(start.rowids.get(table, 0))
    return f"({p}seq >= 1 AND ({p}chain_seq IS NOT NULL OR {p}seq <= {older}))"


def read_head(db: sqlite3.Connection) -> Head:
    return Head.parse(meta(db, "chain_head")) or Head()


def next_rowid(db: sqlite3.Connection, table: str) -> int:
    """The table's next `seq`. Rows are numbered here, before they are hashed: the hash
    covers the number; a table emptied by archiving goes on from its archived rows."""
    (last,) = db.execute(f"SELECT max(seq) FROM {table}").fetchone()  # noqa: S608
    if last is not None:
        return int(last) + 1
    floors = [Head.parse(meta(db, key)) for key in ("chain_from", "chain_cut")]
    return max((h.rowids.get(table, 0) for h in floors if h is not None), default=0) + 1


def link_rows(
    table: str, head: Head, first: int, rows: Sequence[Sequence[Any]]
) -> tuple[list[tuple[Any, ...]], Head]:
    """The rows to insert (seq, columns..., chain_seq, chain_hash) and the new head."""
    out: list[tuple[Any, ...]] = []
    prev, seq, rowid = head.hash, head.seq, first
    sha, join, enc = hashlib.sha256, "".join, _C_ENCODE  # hot: 10,000 command rows a batch
    for row in rows:
        seq += 1
        if enc is not None:
            prev = sha(prev + join(enc((table, seq, rowid, *row), 0)).encode()).digest()
        else:  # pragma: no cover - CPython has the C encoder
            prev = link(prev, table, seq, (rowid, *row))
        out.append((rowid, *row, seq, prev.hex()))
        rowid += 1
    return out, Head(seq, prev, {**head.rowids, table: rowid - 1})


# -- verification ----------------------------------------------------------------------------

READ_TIMEOUT_S = 5.0  # the daemon may hold the write lock briefly


class ChainError(Exception):
    """A journal or archive cannot be read for verification (not: the chain is broken)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """The first row that does not follow: changed, removed or inserted."""

    kind: str
    text: str
    table: str | None = None
    rowid: int | None = None
    chain_seq: int | None = None


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
    from controller.record import floor  # noqa: PLC0415 - it builds on this module

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
        from controller.record import floor  # noqa: PLC0415 - it builds on this module

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
