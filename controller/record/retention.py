"""Retention: evidence rows older than the window move, in small batches, from the journal
into an archive file with the same tables, and the journal records the cut (the last
archived row's chain sequence and hash), so the chain verifies across it: the journal
alone from the cut, the archive and the journal end to end.

Only evidence moves (the chained tables); state (held signals, revisions, obligations,
the ladder, the operator's changes) stays. Recovery reads decisions from minutes ago; the
window is at least a day. Each batch copies to the archive first (committed, fsynced),
then deletes from the journal and moves the cut in one transaction: a crash between the
two leaves rows in both, and the next batch skips what the archive already holds.
"""

from __future__ import annotations

import heapq
import itertools
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.record import chain, floor
from controller.record.chain import REGISTRY, ChainError, Head

BATCH_ROWS = 2000  # per transaction: the daemon's writer waits at most this long
TIMEOUT_S = 5.0


def default_archive(journal: Path) -> Path:
    """Beside the journal: journal.db -> journal.archive.db."""
    return journal.with_name(f"{journal.stem}.archive{journal.suffix or '.db'}")


@dataclass(slots=True)
class _Batch:
    legacy: list[chain.Row] = field(default_factory=list)  # rows older than the chain
    chained: list[chain.Row] = field(default_factory=list)  # a prefix of the chain, in order
    cut: Head | None = None  # the last chained row moved


def archive_batch(
    journal: Path,
    archive: Path,
    before: datetime,
    limit: int = BATCH_ROWS,
    *,
    now: datetime | None = None,
) -> int:
    """Move up to `limit` rows written before `before` into `archive`; how many moved (0:
    none left). ChainError if the rows to move do not verify: nothing moves then (the
    archive holds only evidence that checks). Each batch journals its cut as a chained
    event (`archive_cut`, at `now`), so a cut no chained row states is found."""
    stamp = now or datetime.now(UTC)
    db = sqlite3.connect(journal, timeout=TIMEOUT_S, isolation_level=None)
    try:
        chain_from, cut, _ = chain.heads(db, journal)
        batch = _select(db, chain_from, cut, _ts(before), limit)
        moved = len(batch.legacy) + len(batch.chained)
        if not moved:
            return 0
        _copy(db, archive, batch, cut or chain_from)
        db.execute("BEGIN IMMEDIATE")
        try:
            _release(db, journal, batch, cut, stamp)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return moved
    finally:
        db.close()


def _release(
    db: sqlite3.Connection, journal: Path, batch: _Batch, cut: Head | None, now: datetime
) -> None:
    """Delete the archived rows from the journal, move its cut and journal it (one
    transaction)."""
    if chain.meta(db, "chain_cut") != (cut.as_json() if cut else None):
        raise ChainError(f"{journal}: another archiver moved the cut; try again")
    rows = sorted([*batch.legacy, *batch.chained], key=lambda r: r[0])
    for table, group in itertools.groupby(rows, key=lambda r: r[0]):
        db.executemany(
            f"DELETE FROM {table} WHERE seq=?",  # noqa: S608 - a REGISTRY name
            [(r[1][0],) for r in group],
        )
    moved = floor.archived(db)
    for table, _ in batch.legacy:
        moved[table] = moved.get(table, 0) + 1
    if batch.legacy:
        chain.set_meta(db, "legacy_archived", json.dumps(moved, sort_keys=True))
    if batch.cut is not None:
        chain.set_meta(db, "chain_cut", batch.cut.as_json())
    # The cut, stated by a chained row after it (numbered after the cut's rows).
    detail = json.dumps(floor.cut_detail(batch.cut or cut, moved))
    head = chain.read_head(db)
    first = chain.next_rowid(db, "events")
    linked, head = chain.link_rows(
        "events", head, first, [(_ts(now), floor.CUT_EVENT, None, detail)]
    )
    db.executemany(chain.INSERT["events"], linked)
    chain.set_meta(db, "chain_head", head.as_json())


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _rows(
    db: sqlite3.Connection, c: chain.Chained, where: str, args: tuple[Any, ...], limit: int
) -> sqlite3.Cursor:
    cols = f"{', '.join(c.columns)}, chain_seq, chain_hash, {c.time_sql}"
    sql = f"SELECT {cols} FROM {c.table} WHERE {where} ORDER BY seq LIMIT ?"  # noqa: S608
    return db.execute(sql, (*args, limit))


def _select(
    db: sqlite3.Connection, chain_from: Head, cut: Head | None, before: str, limit: int
) -> _Batch:
    """The oldest rows to move: unchained ones first, then the chain's prefix up to the
    first row that is not old enough, checked row by row as `chain.walk` checks."""
    batch = _Batch()
    for c in REGISTRY.values():
        boundary = chain_from.rowids.get(c.table, 0)
        if not boundary:
            continue
        rows = _rows(db, c, f"seq <= ? AND {c.time_sql} < ?", (boundary, before), limit)
        found = [(c.table, tuple(r[:-1])) for r in rows]
        batch.legacy += found
        limit -= len(found)
        if limit <= 0:
            return batch
    start = chain.floor_at(cut or chain_from, chain_from)
    # The event stating the current cut stays: moving it would only state a new one.
    stating = db.execute(
        "SELECT seq FROM events WHERE kind = ? AND chain_seq IS NOT NULL"
        " ORDER BY chain_seq DESC LIMIT 1",
        (floor.CUT_EVENT,),
    ).fetchone()
    keep = ("events", int(stating[0])) if stating else None
    streams = [_old(db, c, start.rowids.get(c.table, 0), limit) for c in REGISTRY.values()]
    prev, seq, rowids = start.hash, start.seq, dict(start.rowids)
    merged = heapq.merge(*streams, key=lambda r: chain.chain_key(r[0]))
    for key, group in itertools.groupby(merged, key=lambda r: chain.chain_key(r[0])):
        members = list(group)
        if any(at is None or at >= before for _, at in members) or len(batch.chained) >= limit:
            break
        if (members[0][0][0], members[0][0][1][0]) == keep:
            break
        problem = chain.judge([m for m, _ in members], key, prev, seq, None)
        if problem is not None:
            raise ChainError(f"not archived: the chain does not verify: {problem.text}")
        row = members[0][0]
        prev, seq = bytes.fromhex(row[1][-1]), key
        rowids[row[0]] = int(row[1][0])
        batch.chained.append(row)
    if batch.chained:
        batch.cut = Head(seq, prev, rowids)
    return batch


def _old(
    db: sqlite3.Connection, c: chain.Chained, after: int, limit: int
) -> Iterator[tuple[chain.Row, str | None]]:
    for r in _rows(db, c, "seq > ?", (after,), limit + 1):
        yield (c.table, tuple(r[:-1])), r[-1]


def _copy(db: sqlite3.Connection, archive: Path, batch: _Batch, start: Head) -> None:
    """Into the archive, committed before the journal lets go of them."""
    out = sqlite3.connect(archive, timeout=TIMEOUT_S, isolation_level=None)
    try:
        out.execute("PRAGMA synchronous=FULL")
        out.execute("BEGIN IMMEDIATE")
        out.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for c in REGISTRY.values():
            (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name=?", (c.table,)).fetchone()
            out.execute(sql.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
        for key in ("schema", "chain_from"):
            if chain.meta(out, key) is None:
                chain.set_meta(out, key, chain.meta(db, key) or "")
        if chain.meta(out, "chain_start") is None:
            chain.set_meta(out, "chain_start", start.as_json())
        held = chain.Head.parse(chain.meta(out, "chain_head"))
        rows = [r for r in batch.chained if held is None or chain.chain_key(r) > held.seq]
        for table, group in itertools.groupby(
            sorted([*batch.legacy, *rows], key=lambda r: r[0]), key=lambda r: r[0]
        ):
            sql = chain.INSERT[table].replace("INSERT", "INSERT OR IGNORE", 1)
            out.executemany(sql, [r[1] for r in group])
        if batch.cut is not None and (held is None or batch.cut.seq > held.seq):
            chain.set_meta(out, "chain_head", batch.cut.as_json())
        out.execute("COMMIT")
    except sqlite3.Error as err:
        raise ChainError(f"{archive}: cannot write the archive: {err}") from None
    finally:
        out.close()
