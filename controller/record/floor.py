"""What lies below the chain's walk: rows older than the chain (a journal an older curtaild
wrote, kept unchained at the upgrade), rows at or below the archive cut, and rows with no
place in any sequence (seq below 1). The walk reads only the rows after its floor, so an
insertion there would go unseen; this accounts for every one of them.

At the chain's start each table's older rows are counted and digested (`summary`, kept in
`meta.chain_from` and, when there are any, in the chain's first row, an event `chain`, so
the count cannot be edited alone). Retention counts the older rows it moves
(`meta.legacy_archived`) and journals every cut as a chained event `archive_cut`, so a cut
that no chained row states (rows deleted, the cut written by hand) is found.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from controller.record import chain_links as chain
from controller.record.chain_links import REGISTRY, ZERO, Head, Problem, encode, meta

CUT_EVENT = "archive_cut"
START_EVENT = "chain"


def digest(table: str, rows: Iterable[Sequence[Any]]) -> str:
    """The older rows' digest: SHA-256 chained over their canonical encodings, in seq order
    (chain sequence 0: they have none)."""
    value = ZERO
    for row in rows:
        value = hashlib.sha256(value + encode(table, 0, row)).digest()
    return value.hex()


def _older(db: sqlite3.Connection, table: str, floor: int) -> list[tuple[Any, ...]]:
    cols = ", ".join(REGISTRY[table].columns)
    sql = f"SELECT {cols} FROM {table} WHERE seq <= ? ORDER BY seq"  # noqa: S608
    return [tuple(r) for r in db.execute(sql, (floor,))]


def take_summary(db: sqlite3.Connection, rowids: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Each table's rows at or below `rowids` (the chain's start): how many, their digest."""
    out = {}
    for table, floor in rowids.items():
        rows = _older(db, table, floor)
        out[table] = {"rows": len(rows), "digest": digest(table, rows)}
    return out


def start_chain(db: sqlite3.Connection, at: str) -> None:
    """Start the chain (chain.start_chain) and account for the rows already there: their
    count and digest in `meta.chain_from`, and, if there are any, stated again by the
    chain's first row (an event `chain`), so neither can be edited alone."""
    chain.start_chain(db, at)
    ensure_summary(db)
    recorded = summary(db) or {}
    if not any(v["rows"] for v in recorded.values()):
        return
    head = chain.read_head(db)
    detail = json.dumps({"legacy": recorded}, sort_keys=True)
    first = chain.next_rowid(db, "events")
    linked, head = chain.link_rows("events", head, first, [(at, START_EVENT, "start", detail)])
    db.executemany(chain.INSERT["events"], linked)
    chain.set_meta(db, "chain_head", head.as_json())


def ensure_summary(db: sqlite3.Connection) -> None:
    """Count and digest the older rows if `meta.chain_from` does not yet (a journal whose
    chain an earlier build started: counted from what is there when this one opens it)."""
    text = meta(db, "chain_from")
    if text is None or summary(db) is not None:
        return
    data = json.loads(text)
    start = Head.parse(text) or Head()
    data["legacy"] = take_summary(db, start.rowids)
    chain.set_meta(db, "chain_from", json.dumps(data))


def summary(db: sqlite3.Connection) -> dict[str, dict[str, Any]] | None:
    """The older rows counted at the chain's start (None: a journal from before they were)."""
    text = meta(db, "chain_from")
    data = json.loads(text) if text else {}
    found = data.get("legacy") if isinstance(data, dict) else None
    return found if isinstance(found, dict) else None


def archived(db: sqlite3.Connection) -> dict[str, int]:
    """Older rows retention has moved to the archive, per table."""
    text = meta(db, "legacy_archived")
    return {str(k): int(v) for k, v in json.loads(text).items()} if text else {}


def below_one(path: Path, db: sqlite3.Connection) -> Problem | None:
    """A row with a sequence below 1: nothing curtaild writes has one."""
    for table in REGISTRY:
        (low,) = db.execute(f"SELECT min(seq) FROM {table}").fetchone()  # noqa: S608
        if low is not None and int(low) < 1:
            text = f"{path}: {table} row {low} has a sequence below 1: inserted"
            return Problem("inserted", text, table, int(low))
    return None


def account(
    journal: Path,
    files: Sequence[tuple[Path, sqlite3.Connection]],
    chain_from: Head,
    *,
    whole: bool,
) -> tuple[int, Problem | None]:
    """Check the rows older than the chain in `files` (the journal first) against the count
    and digest taken at the chain's start: how many there are, and the first problem.
    `whole`: the files hold everything (the journal and its archives), else the journal
    alone and its count must be what the start recorded less what retention moved."""
    for path, db in files:
        problem = below_one(path, db)
        if problem is not None:
            return 0, problem
    recorded = summary(files[0][1])
    total = 0
    for table, floor in chain_from.rowids.items():
        if table in REGISTRY:
            check = _whole if whole else _journal_alone
            n, problem = check(journal, files, table, floor, recorded)
            total += n
            if problem is not None:
                return total, problem
    return total, _start_stated(files, recorded)


Recorded = dict[str, dict[str, Any]] | None


def _journal_alone(
    journal: Path,
    files: Sequence[tuple[Path, sqlite3.Connection]],
    table: str,
    floor: int,
    recorded: Recorded,
) -> tuple[int, Problem | None]:
    main = files[0][1]
    sql = f"SELECT count(*) FROM {table} WHERE seq <= ?"  # noqa: S608 - a REGISTRY name
    n = int(main.execute(sql, (floor,)).fetchone()[0])
    if recorded is None:
        return n, None
    want = int(recorded.get(table, {}).get("rows", 0)) - archived(main).get(table, 0)
    return n, None if n == want else _miscount(journal, table, n, want, floor)


def _whole(
    journal: Path,
    files: Sequence[tuple[Path, sqlite3.Connection]],
    table: str,
    floor: int,
    recorded: Recorded,
) -> tuple[int, Problem | None]:
    merged: dict[int, tuple[Any, ...]] = {}  # a crash mid-batch leaves rows in both files
    for path, db in files:
        for row in _older(db, table, floor):
            if merged.setdefault(int(row[0]), row) != row:
                text = f"{path}: {table} row {row[0]} differs from the journal's copy: changed"
                return len(merged), Problem("changed", text, table, int(row[0]))
    if recorded is None:
        return len(merged), None
    want = recorded.get(table, {"rows": 0, "digest": digest(table, ())})
    if len(merged) != int(want.get("rows", 0)):
        return len(merged), _miscount(journal, table, len(merged), int(want["rows"]), floor)
    if digest(table, (merged[k] for k in sorted(merged))) != want.get("digest"):
        text = (
            f"{table}: the {len(merged)} rows older than the chain (seq <= {floor}) do not"
            " match the digest taken at the chain's start: changed"
        )
        return len(merged), Problem("changed", text, table)
    return len(merged), None


def _miscount(journal: Path, table: str, n: int, want: int, floor: int) -> Problem:
    kind = "inserted" if n > want else "removed"
    text = (
        f"{journal}: {table} has {n} rows older than the chain (seq <= {floor}), its start"
        f" recorded {want} (less those archived): {kind}"
    )
    return Problem(kind, text, table)


def _start_stated(
    files: Sequence[tuple[Path, sqlite3.Connection]], recorded: dict[str, Any] | None
) -> Problem | None:
    """The chain's first row, where it is at hand, states the older rows' count."""
    if not recorded or not any(v.get("rows") for v in recorded.values()):
        return None
    for _, db in files:
        row = db.execute("SELECT kind, detail FROM events WHERE chain_seq = 1").fetchone()
        if row is None:
            continue
        stated = json.loads(row[1]).get("legacy") if row[0] == START_EVENT and row[1] else None
        if stated != recorded:
            text = "the older rows' count at the chain's start differs from its first row: changed"
            return Problem("changed", text, chain_seq=1)
        return None
    return None  # chain row 1 is in an archive not at hand: nothing to compare


def cut_detail(cut: Head | None, moved: dict[str, int]) -> dict[str, Any]:
    """What an `archive_cut` event states: the cut and the older rows moved so far."""
    return {
        "seq": cut.seq if cut else 0,
        "hash": (cut.hash if cut else ZERO).hex(),
        "legacy": dict(sorted(moved.items())),
    }


def cut_stated(db: sqlite3.Connection, cut: Head | None) -> Problem | None:
    """The journal's cut (and the older rows moved) as its last `archive_cut` event states
    them: each batch retention moves journals one, after the rows it moved, so the last
    one is always in the journal, after the cut, verified by the walk."""
    row = db.execute(
        "SELECT seq, detail FROM events WHERE kind = ? AND chain_seq IS NOT NULL"
        " ORDER BY chain_seq DESC LIMIT 1",
        (CUT_EVENT,),
    ).fetchone()
    want = cut_detail(cut, archived(db))
    if row is None:
        if cut is None and not any(want["legacy"].values()):
            return None
        text = (
            f"the journal records an archive cut (chain row {want['seq']}) that no chained"
            " event states: rows before it were removed"
        )
        return Problem("removed", text, chain_seq=want["seq"] or None)
    try:
        stated = json.loads(row[1])
        same = {k: stated.get(k) for k in want} == want
    except (ValueError, TypeError, AttributeError):
        same = False
    if not same:
        text = (
            f"the journal's archive cut (chain row {want['seq']}) is not the one events row"
            f" {row[0]} states: rows before it were removed or the cut was rewritten"
        )
        return Problem("removed", text, "events", int(row[0]))
    return None


def beyond_cut(
    main: sqlite3.Connection, parts: Sequence[tuple[Path, sqlite3.Connection]], edge: Head
) -> Problem | None:
    """Archive rows after the journal's cut: copied by a batch whose deletion had not run
    when the journal was read; each must be the journal's own row."""
    for path, db in parts:
        for c in REGISTRY.values():
            sql = f"SELECT {', '.join(c.columns)}, chain_seq, chain_hash FROM {c.table}"  # noqa: S608
            for row in db.execute(sql + " WHERE seq > ?", (edge.rowids.get(c.table, 0),)):
                there = main.execute(sql + " WHERE seq = ?", (row[0],)).fetchone()
                if there is None or tuple(there) != tuple(row):
                    text = f"{path}: {c.table} row {row[0]} lies after the cut: inserted"
                    return Problem("inserted", text, c.table, int(row[0]))
    return None
