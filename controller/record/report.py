"""`curtaild report`: the journal's signal history as evidence, in JSON or CSV.

One row per received signal (every transport and verdict: accepted, stale, forged) and
per deadline it created, with how that deadline ended: when the draw was within the
limit, what was measured and by what. Deadlines that no signal carried (a grant's end, a
local frequency trip) are rows too. Reads the journal read-only, so it can run beside the
daemon (SQLite's WAL lets a reader in while the daemon writes).
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.record import chain
from controller.record.journal import BUSY_TIMEOUT_S

FIELDS = (
    "received_at",
    "transport",
    "source",
    "signal_id",
    "revision",
    "type",
    "verdict",
    "detail",
    "deadline_kind",
    "limit_kw",
    "starts_at",
    "due_at",
    "status",
    "reached_at",
    "time_to_target_s",
    "measured_kw",
    "measured_by",
)

# Signals with the deadlines they created, then deadlines no received signal carries.
_QUERY = """
SELECT s.at, s.transport, s.source, s.signal_id, s.revision, s.kind, s.verdict, s.detail,
       o.kind, o.limit_w, o.starts_at, o.due_at, o.status, o.reached_at, o.measured_w,
       o.measured_by
FROM signals s
LEFT JOIN obligations o ON o.signal_id = s.signal_id AND o.revision = s.revision
    AND s.verdict = 'received'
WHERE s.at >= :since AND {vouched}
UNION ALL
SELECT NULL, 'local', NULL, o.signal_id, o.revision, NULL, NULL, NULL,
       o.kind, o.limit_w, o.starts_at, o.due_at, o.status, o.reached_at, o.measured_w,
       o.measured_by
FROM obligations o
WHERE o.starts_at >= :since AND NOT EXISTS (
    SELECT 1 FROM signals s WHERE s.signal_id = o.signal_id AND s.revision = o.revision
        AND s.verdict = 'received')
"""


class ReportError(Exception):
    """The journal cannot be read."""


def signal_history(journal: Path, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every signal and deadline from `since` on (all of them by default), oldest first."""
    if not journal.exists():
        raise ReportError(f"{journal}: no journal there (has the daemon run with this config?)")
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as err:
        raise ReportError(f"{journal}: cannot open the journal: {err}") from None
    floor = since.astimezone(UTC).isoformat(timespec="microseconds") if since else ""
    try:
        with db:
            query = _QUERY.format(vouched=chain.vouched(db, "signals", "s"))
            rows = db.execute(query, {"since": floor}).fetchall()
    except sqlite3.Error as err:
        raise ReportError(f"{journal}: cannot read the journal: {err}") from None
    finally:
        db.close()
    history = [_row(r) for r in rows]
    history.sort(key=lambda r: (r["received_at"] or r["starts_at"] or "", r["signal_id"] or ""))
    return history


def render(history: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"signals": history}, indent=2) + "\n"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    starts_at, reached_at = r[10], r[13]
    took = None
    if starts_at is not None and reached_at is not None:
        took = (
            datetime.fromisoformat(reached_at) - datetime.fromisoformat(starts_at)
        ).total_seconds()
    return {
        "received_at": r[0],
        "transport": r[1],
        "source": r[2],
        "signal_id": r[3],
        "revision": r[4],
        "type": r[5],
        "verdict": r[6],
        "detail": r[7],
        "deadline_kind": r[8],
        "limit_kw": None if r[9] is None else r[9] / 1000,
        "starts_at": starts_at,
        "due_at": r[11],
        "status": r[12],
        "reached_at": reached_at,
        "time_to_target_s": None if took is None else round(max(took, 0.0), 3),
        "measured_kw": None if r[14] is None else r[14] / 1000,
        "measured_by": r[15],
    }
