"""The chain's links: the registry of chained tables, a row's canonical encoding, the head,
and appending (numbering and hashing rows inside the journal's own transaction). What
verification builds on (record/chain.py, record/floor.py) and what the journal writes with.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from json import encoder as _json_encoder
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


@dataclass(frozen=True, slots=True)
class Problem:
    """The first row that does not follow: changed, removed or inserted."""

    kind: str
    text: str
    table: str | None = None
    rowid: int | None = None
    chain_seq: int | None = None
