"""The compliance view's figures from the daemon's own evidence: the energy account's
journaled minutes, the pools check's verdicts and the chain check's last result.

Everything the energy report says is read from the journal, on a read-only connection of
the caller's thread (the API calls `compliance` in a worker thread), so the dashboard
shows exactly what `curtaild report energy` would hand over for the same span.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.record.chain import ChainStatus
from controller.record.compliance import ComplianceError
from controller.record.energy_report import TOTALS, energy_report
from controller.record.journal import BUSY_TIMEOUT_S
from controller.record.report import ReportError
from controller.record.site import PoolsView

MAX_EXCESS_EVENTS = 50

# Minutes with excess this month, newest first, with the curtailments in force then.
_EXCESS = """
SELECT i.start, i.excess_kwh, i.allowed_kwh, i.end,
       (SELECT group_concat(c.signal_id || ' r' || c.revision, ', ')
        FROM energy_curtailments c WHERE c.start = i.start AND c.excess_kwh > 0)
FROM energy_intervals i
WHERE i.start >= ? AND i.start < ? AND i.excess_kwh > 0
ORDER BY i.start DESC LIMIT ?
"""


class JournalCompliance:
    """`ComplianceSource` over the daemon's journal, pools check and chain check."""

    def __init__(
        self,
        journal: Path,
        *,
        site_id: str,
        chain: Callable[[], ChainStatus],
        pools: Callable[[], PoolsView | None],
    ) -> None:
        self.journal = journal
        self.site_id = site_id
        self._chain = chain
        self._pools = pools

    def compliance(self, now: datetime) -> Mapping[str, Any]:
        now = now.astimezone(UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        first = midnight.replace(day=1)
        try:
            today = energy_report(self.journal, midnight, now, site_id=self.site_id)
            month = self._month(first, now)
            excess = self._excess(first, now)
        except ReportError as err:
            raise ComplianceError(str(err)) from None
        return {
            "today": today["totals"],
            "month": month,
            "grants": [
                {k: g[k] for k in ("id", "source", "granted_kwh", "used_kwh", "utilisation")}
                for g in today["grants"]
            ],
            "excess_events": excess,
            "unapproved_pools": self.unapproved_pools(),
            "chain": self._chain().as_json(),
        }

    def unapproved_pools(self) -> list[dict[str, Any]]:
        view = self._pools()
        if view is None:
            return []
        out = []
        for miner_id, state in sorted(view.miners.items()):
            verdict = state.verdict
            if verdict is None or verdict.approved or state.since is None:
                continue
            out.append(
                {
                    "miner_id": miner_id,
                    "unapproved": list(verdict.unapproved),
                    "action": view.action(miner_id),
                    "since": state.since.isoformat(),
                }
            )
        return out

    def _connect(self) -> sqlite3.Connection:
        if not self.journal.exists():
            raise ComplianceError(f"{self.journal}: no journal there")
        return sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)

    def _month(self, start: datetime, end: datetime) -> dict[str, float]:
        """The month's totals by one sum in SQL: a month of minutes is ~43,000 rows, and
        the chart series the report would build for them is not needed here."""
        db = self._connect()
        try:
            row = db.execute(
                f"SELECT {', '.join(f'coalesce(sum({f}), 0)' for f in TOTALS)}"  # noqa: S608
                " FROM energy_intervals WHERE start >= ? AND start < ?",
                (_ts(start), _ts(end)),
            ).fetchone()
        finally:
            db.close()
        return {f: round(float(v), 6) for f, v in zip(TOTALS, row, strict=True)}

    def _excess(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        db = self._connect()
        try:
            rows = db.execute(_EXCESS, (_ts(start), _ts(end), MAX_EXCESS_EVENTS)).fetchall()
        finally:
            db.close()
        events = []
        for at, kwh, allowed_kwh, until, curtailments in rows:
            minutes = (
                datetime.fromisoformat(until) - datetime.fromisoformat(at)
            ).total_seconds() / 3600
            events.append(
                {
                    "at": at,
                    "kwh": round(float(kwh), 6),
                    # The grid's allowance over that minute, on average.
                    "limit_kw": round(allowed_kwh / minutes, 3) if minutes > 0 else None,
                    "reason": (
                        f"above curtailment {curtailments} after its deadline"
                        if curtailments
                        else "above what the grid allowed"
                    ),
                }
            )
        return events


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")
