"""The write-ahead journal: SQLite in WAL mode with synchronous=FULL.

A signal and the decision it causes are committed before any command leaves; command
results follow in batches. On start the daemon rebuilds its signal book and pending
deadlines from here, so a restart mid-curtailment resumes rather than wakes the farm.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from controller.core.energy import Interval
from controller.core.model import Limit, Plan
from controller.core.signals import (
    Cancel,
    Held,
    Obligation,
    ObligationStatus,
    SignalBook,
)
from controller.record import chain, floor
from controller.record.chain import Head
from controller.record.schema import SCHEMA
from controller.record.standing import StandingError, standing_from, standing_json

log = structlog.get_logger("curtaild.journal")

SCHEMA_VERSION = 3
# Journals an older curtaild wrote, and what opening them here adds (tables and columns: an
# older journal's rows are kept as they are, the new tables start empty, and the hash
# chain starts at the upgrade: older rows are not chained).
MIGRATIONS = {
    1: "the ladder and site-state tables, the hash chain and the obligation log",
    2: "the hash chain and the obligation log",
}
BUSY_TIMEOUT_S = 5.0  # another process (curtaild report) may hold a read lock briefly


class JournalError(Exception):
    """The journal cannot be opened or written; the daemon must not act without it."""


@dataclass(frozen=True, slots=True)
class CommandRecord:
    decision_seq: int | None
    miner_id: str
    action: str
    started_at: datetime
    finished_at: datetime
    outcome: str  # "ok" or an error kind: unreachable, timeout, lying, ...
    detail: str | None = None


class Journal:
    """Durable record of signals, decisions, commands, deadlines and events."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Why the last write failed (a full disk, say); None while writes succeed. The loop
        # commands nothing while it is set: every command is write-ahead.
        self.error: str | None = None
        self._tx_head: Head | None = None  # the chain's head within a write transaction
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # WAL fsync on every commit
            self._db.executescript(SCHEMA)
            self._db.execute("BEGIN IMMEDIATE")  # one writer migrates; none sees half
            version = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            now = _ts(datetime.now(UTC))  # when the chain starts: said, never computed on
            if version is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                floor.start_chain(self._db, now)
            elif int(version[0]) in MIGRATIONS:
                # One way: an older curtaild refuses the upgraded journal (keep a copy to
                # roll back). The new tables start empty.
                log.info(
                    "journal schema upgraded",
                    path=str(path),
                    schema=f"{version[0]} -> {SCHEMA_VERSION}",
                    adds=MIGRATIONS[int(version[0])],
                )
                self._db.execute(
                    "UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),)
                )
                floor.start_chain(self._db, now)
            elif int(version[0]) != SCHEMA_VERSION:
                raise JournalError(  # noqa: TRY301 - the connection is closed below
                    f"{path}: schema {version[0]}, expected {SCHEMA_VERSION}"
                )
            floor.ensure_summary(self._db)
            self._db.execute("COMMIT")
            self.head = chain.read_head(self._db)  # the chain's last row (kept up to date)
        except (sqlite3.Error, OSError) as err:
            self._abandon()
            raise JournalError(f"{path}: cannot open the journal: {err}") from err
        except JournalError:
            self._abandon()
            raise

    def _abandon(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()  # rolls back a migration half done

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._tx_head = None
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                head = self._staged()
                if head is not None:
                    chain.set_meta(self._db, "chain_head", head.as_json())
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back a full disk's by itself
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self.head = head or self.head
        except sqlite3.Error as err:
            if self.error is None:
                log.exception("journal unwritable: nothing is commanded until it is")
            self.error = str(err)
            raise JournalError(f"{self.path}: write failed: {err}") from err
        except (UnicodeError, ValueError, OverflowError) as err:
            # A value SQLite cannot bind (text that is not UTF-8, an integer too large):
            # that row is refused, typed like every journal failure; the journal itself
            # is fine, so the loop is not stopped for it (self.error stays as it was).
            raise JournalError(f"{self.path}: cannot journal this row: {err}") from err
        if self.error is not None:
            log.warning("journal writable again", was=self.error)
            self.error = None

    def _staged(self) -> Head | None:
        """The chain's head as this transaction's appends left it (None: none)."""
        return self._tx_head

    # -- writes ----------------------------------------------------------------------------

    def _append(self, table: str, rows: Sequence[Sequence[Any]]) -> int:
        """Append evidence rows (their columns after `seq`, as chain.REGISTRY lists them)
        to a chained table inside the open transaction; returns the first row's seq. The
        head is read in the transaction, so another writer cannot fork the chain."""
        first = chain.next_rowid(self._db, table)
        if not rows:
            return first
        rows = [_clean(row) for row in rows]  # hashed and bound alike
        if self._tx_head is None:
            self._tx_head = chain.read_head(self._db)
        linked, self._tx_head = chain.link_rows(table, self._tx_head, first, rows)
        self._db.executemany(chain.INSERT[table], linked)
        return first

    def record_signal(
        self,
        *,
        at: datetime,
        transport: str,
        source: str | None,
        signal_id: str | None,
        revision: int | None,
        kind: str | None,
        verdict: str,
        detail: str,
        body: bytes | None,
        book_change: tuple[str, Held | None] | None = None,
    ) -> None:
        """One received signal and, if it changed the book, the change; one transaction."""
        text = body.decode("utf-8", errors="replace") if body is not None else None
        with self._tx() as db:
            self._append(
                "signals",
                [(_ts(at), transport, source, signal_id, revision, kind, verdict, detail, text)],
            )
            if book_change is not None and signal_id is not None and revision is not None:
                stored_kind, held = book_change
                db.execute(
                    "INSERT OR REPLACE INTO revisions VALUES (?,?,?)",
                    (signal_id, revision, stored_kind),
                )
                if held is None:
                    db.execute("DELETE FROM held WHERE signal_id=?", (signal_id,))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO held VALUES (?,?,?,?)",
                        (
                            signal_id,
                            json.dumps(standing_json(held.signal)),
                            held.source,
                            _ts(held.received_at),
                        ),
                    )

    def record_schedule(
        self,
        at: datetime,
        rows: Sequence[tuple[Held, str, bytes]],
        event: tuple[str, dict[str, Any]],
    ) -> None:
        """An uploaded schedule's grants, all or none: each row (held, detail, body) a
        received signal of transport "schedule" with its book change, and the upload's
        operator event (subject, detail), in one transaction."""
        with self._tx() as db:
            self._append(
                "signals",
                [
                    (_ts(at), "schedule", held.source, held.signal.id, held.signal.revision,
                     held.signal.kind, "received", detail, body.decode("utf-8", errors="replace"))
                    for held, detail, body in rows
                ],
            )  # fmt: skip
            for held, _, _ in rows:
                s = held.signal
                db.execute(
                    "INSERT OR REPLACE INTO revisions VALUES (?,?,?)", (s.id, s.revision, s.kind)
                )
                db.execute(
                    "INSERT OR REPLACE INTO held VALUES (?,?,?,?)",
                    (s.id, json.dumps(standing_json(s)), held.source, _ts(held.received_at)),
                )
            self._append("events", [(_ts(at), "operator", event[0], json.dumps(event[1]))])

    def record_decision(self, *, at: datetime, cause: str, limit: Limit, plan: Plan) -> int:
        """Commit a decision before its commands leave; returns its sequence number.

        This sits between a signal and its first command, so the actions are grouped by
        kind and reason and compressed: a 10,000-miner shed is ~20 KB, not ~600 KB.
        """
        grouped: dict[str, dict[str, list[str]]] = {}
        # A plan lists its actions in runs of one kind and reason (one string object per
        # class): look the group up once per run, not twice per action.
        kind: str | None = None
        reason: str | None = None
        ids: list[str] = []
        for action in plan.actions:
            if action.reason is not reason or action.kind is not kind:
                kind, reason = action.kind, action.reason
                ids = grouped.setdefault(kind, {}).setdefault(reason, [])
            ids.append(action.miner_id)
        actions = zlib.compress(json.dumps(grouped, separators=(",", ":")).encode(), 1)
        with self._tx():
            return self._append(
                "decisions",
                [
                    (
                        _ts(at),
                        cause,
                        limit.limit_w,
                        json.dumps(limit.reasons),
                        plan.budget_w,
                        plan.expected_w,
                        int(plan.feasible),
                        json.dumps(plan.notes),
                        len(plan.actions),
                        actions,
                    )
                ],
            )

    def record_commands(
        self,
        records: Sequence[CommandRecord],
        *,
        ladder: Mapping[str, Mapping[str, Any] | None] | None = None,
        site: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Command results, with where they left the ladder: per miner its state (None:
        nothing to remember) and the site's learned state, in one transaction, so a restart
        resumes from a consistent point."""
        if not records and not ladder and not site:
            return
        with self._tx() as db:
            if ladder:
                db.executemany(
                    "DELETE FROM ladder WHERE miner_id=?",
                    [(m,) for m, state in ladder.items() if state is None],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO ladder (miner_id, state) VALUES (?,?)",
                    [
                        (m, json.dumps(state, separators=(",", ":")))
                        for m, state in ladder.items()
                        if state is not None
                    ],
                )
            if site:
                db.executemany(
                    "INSERT OR REPLACE INTO site_state (key, state) VALUES (?,?)",
                    [(k, json.dumps(v)) for k, v in site.items()],
                )
            self._append(
                "commands",
                [
                    (
                        r.decision_seq,
                        r.miner_id,
                        r.action,
                        _ts(r.started_at),
                        _ts(r.finished_at),
                        r.outcome,
                        r.detail,
                    )
                    for r in records
                ],
            )

    def record_obligations(self, obligations: Sequence[Obligation], measured_by: str) -> None:
        if not obligations:
            return
        rows = [
            (
                o.key,
                o.signal_id,
                o.revision,
                o.kind,
                o.limit_w,
                _ts(o.starts_at),
                _ts(o.due_at),
                o.status.value,
                _ts(o.reached_at) if o.reached_at else None,
                o.measured_w,
                measured_by,
            )
            for o in obligations
        ]
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO obligations VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows
            )
            self._append("obligation_log", rows)  # the state above; each change chained

    def record_event(
        self,
        at: datetime,
        kind: str,
        subject: str | None,
        detail: dict[str, Any] | str | None = None,
    ) -> None:
        text = json.dumps(detail) if isinstance(detail, dict) else detail
        with self._tx():
            self._append("events", [(_ts(at), kind, subject, text)])

    def record_events(
        self, events: Sequence[tuple[datetime, str, str | None, dict[str, Any] | str | None]]
    ) -> None:
        """Many events (at, kind, subject, detail) in one transaction: a pools sweep's
        verdicts cost one fsync, not one per miner."""
        if not events:
            return
        rows = [
            (_ts(at), kind, subject, json.dumps(detail) if isinstance(detail, dict) else detail)
            for at, kind, subject, detail in events
        ]
        with self._tx():
            self._append("events", rows)

    def record_energy(self, intervals: Sequence[Interval]) -> None:
        """Closed energy intervals (the account's minutes, or a restart's gap), with each
        one's use per grant and excess per curtailment, in one transaction."""
        if not intervals:
            return
        rows = [
            (_ts(iv.start), _ts(iv.end), iv.grid_kwh, iv.within_grants_kwh,
             iv.base_allowance_kwh, iv.excess_kwh, iv.exempt_generation_kwh, iv.allowed_kwh,
             iv.granted_kwh, iv.gap_s, iv.estimated_s, iv.measured_by)
            for iv in intervals
        ]  # fmt: skip
        grants = [
            (_ts(iv.start), grant_id, use.used_kwh, use.granted_kwh, use.excess_kwh)
            for iv in intervals
            for grant_id, use in iv.grants.items()
        ]
        curtailments = [
            (_ts(iv.start), c.signal_id, c.revision, c.limit_w, c.excess_kwh)
            for iv in intervals
            for c in iv.curtailments
        ]
        with self._tx():
            self._append("energy_intervals", rows)
            self._append("energy_grants", grants)
            self._append("energy_curtailments", curtailments)

    def record_operator(
        self,
        at: datetime,
        subject: str,
        detail: dict[str, Any],
        *,
        key: str,
        state: dict[str, Any] | None,
    ) -> int:
        """An operator's change: the event (who, what, why) and the standing state it
        leaves (None: the key is gone) in one transaction. Returns the event's seq."""
        with self._tx() as db:
            seq = self._append("events", [(_ts(at), "operator", subject, json.dumps(detail))])
            if state is None:
                db.execute("DELETE FROM operator WHERE key=?", (key,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO operator (key, state) VALUES (?,?)",
                    (key, json.dumps(state)),
                )
        return seq

    def operator_state(self) -> dict[str, dict[str, Any]]:
        """Every standing operator change (overrides, holds, automation), by key."""
        standing: dict[str, dict[str, Any]] = {}
        for key, text in self._db.execute("SELECT key, state FROM operator ORDER BY key"):
            try:
                standing[key] = json.loads(text)
            except ValueError:  # handed on as such: the desk logs it and goes on
                standing[key] = {"type": "unreadable", "text": str(text)[:200]}
        return standing

    def events(
        self, *, after: int = 0, since: datetime | None = None, limit: int = 500
    ) -> list[tuple[int, str, str, str | None, str | None]]:
        """Journal events (seq, at, kind, subject, detail) after `after` and from `since`,
        oldest first, at most `limit`."""
        since_at = _ts(since) if since is not None else ""
        return [
            (int(r[0]), r[1], r[2], r[3], r[4])
            for r in self._db.execute(
                "SELECT seq, at, kind, subject, detail FROM events"
                " WHERE seq > ? AND at >= ? ORDER BY seq LIMIT ?",
                (after, since_at, limit),
            )
        ]

    def prune_held(self, signal_ids: Sequence[str]) -> None:
        if not signal_ids:
            return
        with self._tx() as db:
            db.executemany("DELETE FROM held WHERE signal_id=?", [(i,) for i in signal_ids])

    # -- recovery --------------------------------------------------------------------------

    def ladder_state(self) -> dict[str, dict[str, Any]]:
        """Where the ladder left each miner at the last flush (see record_commands)."""
        return self._objects("SELECT miner_id, state FROM ladder", "ladder")

    def site_state(self) -> dict[str, dict[str, Any]]:
        """What the loop had learned about the site (the meter's unexplained draw, the
        frequency relay), by key."""
        return self._objects("SELECT key, state FROM site_state", "site state")

    def _objects(self, sql: str, what: str) -> dict[str, dict[str, Any]]:
        """Rows of (key, JSON object). One that does not read as an object is left out and
        logged: a restart must not fail on it (the ladder is rebuilt from the readings)."""
        out: dict[str, dict[str, Any]] = {}
        for key, text in self._db.execute(sql):
            try:
                value = json.loads(text)
            except (ValueError, TypeError):
                value = None
            if isinstance(value, dict):
                out[str(key)] = value
            else:
                log.warning("unreadable journal row left out", table=what, key=str(key))
        return out

    def probe(self, at: datetime) -> None:
        """A small write to learn whether the journal takes writes again (Journal.error)."""
        with contextlib.suppress(JournalError), self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('probe', ?)", (_ts(at),))

    def unsettled(
        self, since: datetime, until: datetime | None = None
    ) -> list[tuple[int, datetime, str, str, str]]:
        """Actions decided from `since` (to `until`) with no command result (or one
        cancelled mid-way) that are still each miner's latest decision: on the wire, or
        done but not flushed, when the daemon stopped. (decision seq, decided at, miner,
        action, reason), oldest decision first."""
        decisions = list(
            self._db.execute(
                "SELECT seq, at, actions FROM decisions WHERE at >= ? AND at <= ? ORDER BY seq",
                (_ts(since), _ts(until) if until is not None else "9999"),
            )
        )
        if not decisions:
            return []
        done = set(
            self._db.execute(
                "SELECT decision_seq, miner_id FROM commands"
                " WHERE decision_seq >= ? AND outcome != 'cancelled'",
                (decisions[0][0],),
            )
        )
        latest: dict[str, tuple[int, datetime, str, str, str] | None] = {}
        for seq, at, blob in decisions:
            grouped: dict[str, dict[str, list[str]]] = json.loads(zlib.decompress(blob))
            for kind, by_reason in grouped.items():
                for reason, miners in by_reason.items():
                    for m in miners:
                        settled = (seq, m) in done
                        latest[m] = None if settled else (int(seq), _parse(at), m, kind, reason)
        return sorted((v for v in latest.values() if v is not None), key=lambda v: v[0])

    def restore_book(self) -> SignalBook:
        """The signal book as it was at the last commit."""
        revisions = {
            row[0]: (int(row[1]), str(row[2]))
            for row in self._db.execute("SELECT signal_id, revision, kind FROM revisions")
        }
        held = {}
        for signal_id, text, source, received_at in self._db.execute(
            "SELECT signal_id, signal, source, received_at FROM held"
        ):
            try:
                signal = standing_from(json.loads(text))
            except StandingError as err:
                raise JournalError(f"{self.path}: held signal {signal_id}: {err}") from None
            held[signal_id] = Held(signal, source, _parse(received_at))
        return SignalBook(held, revisions)

    def obligation_keys(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT key FROM obligations")}

    def obligations(self, *, pending_only: bool = False) -> list[Obligation]:
        query = (
            "SELECT key, signal_id, revision, kind, limit_w, starts_at, due_at, status,"
            " reached_at, measured_w FROM obligations"
        )
        if pending_only:
            query += " WHERE status='pending'"
        return [
            Obligation(
                row[0],
                row[1],
                int(row[2]),
                row[3],
                int(row[4]),
                _parse(row[5]),
                _parse(row[6]),
                ObligationStatus(row[7]),
                _parse(row[8]) if row[8] else None,
                int(row[9]) if row[9] is not None else None,
            )
            for row in self._db.execute(query + " ORDER BY starts_at, key")
        ]

    # -- queries for reports and tests ----------------------------------------------------

    def decision_actions(self, seq: int) -> list[tuple[str, str, str]]:
        """A decision's actions as (miner id, kind, reason)."""
        [(blob,)] = self._db.execute("SELECT actions FROM decisions WHERE seq=?", (seq,))
        grouped: dict[str, dict[str, list[str]]] = json.loads(zlib.decompress(blob))
        return [
            (miner, kind, reason)
            for kind, by_reason in grouped.items()
            for reason, miners in by_reason.items()
            for miner in miners
        ]

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read-only query helper for reports and tests."""
        return list(self._db.execute(sql, params))


def _clean(row: Sequence[Any]) -> Sequence[Any]:
    """The row with any text SQLite cannot store as UTF-8 (a lone surrogate a JSON body
    carried, say) written with backslash escapes, so the chain covers what is stored."""
    for value in row:
        if isinstance(value, str) and not value.isascii():
            return tuple(_utf8(v) if isinstance(v, str) else v for v in row)
    return row


def _utf8(text: str) -> str:
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


__all__ = ["Cancel", "CommandRecord", "Journal", "JournalError"]
