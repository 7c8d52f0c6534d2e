"""`curtaild report energy`: the energy account from the journal, as a dict (JSON) or
its hourly table (CSV). Hours and days are rolled up here, by query of the journaled
1-minute intervals, not materialized: the intervals are the evidence, and a sum taken
when asked cannot disagree with them. Read-only, beside the running daemon.

An interval belongs to the hour and day its start falls in (UTC); a report from..to holds
the intervals that start in [from, to), and the part in it of a gap row (an outage, up to
an hour) that starts before `from`. Every query runs in one read transaction: the figures
and the chain head reported are one snapshot, whatever the daemon writes meanwhile."""

from __future__ import annotations

import csv
import functools
import io
import json
import sqlite3
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.record import chain
from controller.record.journal import BUSY_TIMEOUT_S
from controller.record.report import ReportError

TOTALS = (
    "grid_kwh",
    "within_grants_kwh",
    "base_allowance_kwh",
    "excess_kwh",
    "exempt_generation_kwh",
    "allowed_kwh",
    "gap_s",
    "estimated_s",
)
HOURLY_FIELDS = ("start", "end", *TOTALS, "measured_by")
_INTERVALS = (
    "SELECT start, end, grid_kwh, within_grants_kwh, base_allowance_kwh, excess_kwh,"
    " exempt_generation_kwh, allowed_kwh, gap_s, estimated_s, measured_by, granted_kwh"
    " FROM energy_intervals WHERE start >= ? AND start < ? AND {vouched} ORDER BY start"
)
# Gap rows (nothing measured) that began before the window and run into it: their part
# inside is reported, so an outage across `from` is not left out.
_GAPS_INTO = (
    "SELECT start, end, grid_kwh, within_grants_kwh, base_allowance_kwh, excess_kwh,"
    " exempt_generation_kwh, allowed_kwh, gap_s, estimated_s, measured_by, granted_kwh"
    " FROM energy_intervals WHERE measured_by = 'none' AND start < ? AND end > ?"
    " AND {vouched} ORDER BY start"
)


def energy_report(
    journal_path: Path, start: datetime, end: datetime, *, site_id: str
) -> dict[str, Any]:
    """The energy account from `start` to `end` (see contracts: totals, hours, days with
    their 1-minute series, grants, curtailments, pools, chain)."""
    lo, hi = _ts(start), _ts(end)
    with _ReadOnly(journal_path) as db:
        vouched = functools.partial(chain.vouched, db)  # rows the chain vouches for
        gaps_sql = _GAPS_INTO.format(vouched=vouched("energy_intervals"))
        gaps_into = db.execute(gaps_sql, (lo, lo)).fetchall()
        intervals_sql = _INTERVALS.format(vouched=vouched("energy_intervals"))
        rows = db.execute(intervals_sql, (lo, hi)).fetchall()
        grant_use = db.execute(
            "SELECT grant_id, sum(used_kwh), sum(excess_kwh) FROM energy_grants"  # noqa: S608 - vouched() is ours
            f" WHERE start >= ? AND start < ? AND {vouched('energy_grants')} GROUP BY grant_id",
            (lo, hi),
        ).fetchall()
        curtailed = db.execute(
            "SELECT signal_id, revision, sum(excess_kwh) FROM energy_curtailments"  # noqa: S608 - vouched() is ours
            f" WHERE start >= ? AND start < ? AND {vouched('energy_curtailments')}"
            " GROUP BY signal_id, revision",
            (lo, hi),
        ).fetchall()
        signals = db.execute(
            "SELECT at, source, signal_id, revision, kind, body FROM signals"  # noqa: S608 - vouched() is ours
            " WHERE verdict = 'received' AND kind IN ('grant', 'curtailment', 'cancel')"
            f" AND {vouched('signals')} ORDER BY seq"
        ).fetchall()
        obligations = db.execute(
            "SELECT signal_id, revision, limit_w, starts_at, due_at FROM obligations"
            " WHERE kind = 'curtailment' AND starts_at < ? ORDER BY starts_at",
            (hi,),
        ).fetchall()
        pools = db.execute(
            "SELECT at, subject, detail FROM events WHERE kind = 'pools' AND at < ?"  # noqa: S608 - vouched() is ours
            f" AND {vouched('events')} ORDER BY seq",
            (hi,),
        ).fetchall()
        head = chain.read_head(db)  # the same snapshot as the figures above
    intervals = [
        *(_clipped(_interval(r), start, end) for r in gaps_into),
        *(_interval(r) for r in rows),
    ]
    history = _revisions(signals)
    return {
        "site": site_id,
        "from": _iso(start),
        "to": _iso(end),
        "measured_by": _how(iv["measured_by"] for iv in intervals),
        "totals": _sum(intervals),
        "hours": [
            {
                "start": _iso(h),
                "end": _iso(h + timedelta(hours=1)),
                **_sum(ivs),
                "measured_by": _how(i["measured_by"] for i in ivs),
            }
            for h, ivs in _group(intervals, lambda t: t.replace(minute=0, second=0, microsecond=0))
        ],
        "days": [
            {
                "date": d.date().isoformat(),
                **_sum(ivs),
                "measured_by": _how(i["measured_by"] for i in ivs),
                "series": [p for i in ivs for p in _series(i)],
            }
            for d, ivs in _group(
                intervals, lambda t: t.replace(hour=0, minute=0, second=0, microsecond=0)
            )
        ],
        "grants": _grants(history, {g: (u, x) for g, u, x in grant_use}, start, end),
        "curtailments": _curtailments(obligations, history, curtailed, start),
        "pools": _pools(pools, start),
        # The journal's chain head when this was read: `curtaild verify` recomputes it.
        "chain": {"head": head.hash.hex() if head.seq else None, "rows": head.seq},
    }


def render_energy(report: dict[str, Any], fmt: str) -> str:
    """JSON: the whole report; CSV: its hourly table."""
    if fmt == "json":
        return json.dumps(report, indent=2) + "\n"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HOURLY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(report["hours"])
    return out.getvalue()


class _ReadOnly:
    """The journal, read-only (the daemon may be writing: SQLite's WAL lets us in), in
    one read transaction: Python's sqlite3 opens none for SELECTs, so each query would
    see the journal as it is then. BEGIN (deferred) takes the snapshot at the first read;
    every later query reads the same one (WAL keeps it while the daemon writes)."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise ReportError(f"{path}: no journal there (has the daemon run with this config?)")
        try:
            self.db = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None
            )
        except sqlite3.Error as err:
            raise ReportError(f"{path}: cannot open the journal: {err}") from None
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.db.execute("BEGIN DEFERRED")
        except sqlite3.Error as err:
            self.db.close()
            raise ReportError(f"{self.path}: cannot read the journal: {err}") from None
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.close()
        if isinstance(exc, sqlite3.Error):
            raise ReportError(f"{self.path}: cannot read the journal: {exc}") from None


def _interval(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "start": _parse(r[0]),
        "end": _parse(r[1]),
        **dict(zip(TOTALS, (float(v) for v in r[2:10]), strict=True)),
        "measured_by": r[10],
        "granted_kwh": float(r[11]),
    }


def _clipped(iv: dict[str, Any], start: datetime, end: datetime) -> dict[str, Any]:
    """A row that began before `start`: its part in [start, end), each figure in
    proportion to the time (a gap row's are its seconds; its kWh are nothing)."""
    whole = (iv["end"] - iv["start"]).total_seconds()
    a, b = max(iv["start"], start), min(iv["end"], end)
    share = (b - a).total_seconds() / whole if whole > 0 else 0.0
    figures = {k: iv[k] * share for k in (*TOTALS, "granted_kwh")}
    return {**iv, **figures, "start": a, "end": b}


def _sum(intervals: list[dict[str, Any]]) -> dict[str, float]:
    return {k: round(sum(iv[k] for iv in intervals), 6) for k in TOTALS}


def _how(kinds: Iterable[str]) -> str:
    """meter | estimate | mixed, over the intervals that measured anything (none: none)."""
    seen = {k for k in kinds if k != "none"}
    if not seen:
        return "none"
    if seen == {"meter"}:
        return "meter"
    return "estimate" if seen == {"estimate"} else "mixed"


def _group(
    intervals: list[dict[str, Any]], key: Callable[[datetime], datetime]
) -> list[tuple[datetime, list[dict[str, Any]]]]:
    groups: dict[datetime, list[dict[str, Any]]] = {}
    for iv in intervals:
        groups.setdefault(key(iv["start"]), []).append(iv)
    return sorted(groups.items())


def _series(iv: dict[str, Any]) -> list[dict[str, Any]]:
    """An interval's chart points, a minute each: a restart's gap row (up to an hour) is
    one point per minute with no draw."""
    hours = (iv["end"] - iv["start"]).total_seconds() / 3600
    if iv["measured_by"] == "none" and hours > 1 / 60:
        points, t = [], iv["start"]
        while t < iv["end"]:
            points.append(
                {
                    "start": _iso(t),
                    "grid_kw": None,
                    "allowed_kw": 0.0,
                    "granted_kw": 0.0,
                    "excess_kwh": 0.0,
                }
            )
            t += timedelta(minutes=1)
        return points

    def kw(kwh: float) -> float:
        return round(kwh / hours, 3) if hours > 0 else 0.0

    return [
        {
            "start": _iso(iv["start"]),
            "grid_kw": None if iv["measured_by"] == "none" else kw(iv["grid_kwh"]),
            "allowed_kw": kw(iv["allowed_kwh"]),
            "granted_kw": kw(iv["granted_kwh"]),
            "excess_kwh": round(iv["excess_kwh"], 6),
        }
    ]


def _revisions(signals: list[tuple[Any, ...]]) -> dict[str, list[dict[str, Any]]]:
    """Per signal id, its accepted revisions and cancels in order: (at, source, revision,
    kind, the signal's terms)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for at, source, signal_id, revision, kind, body in signals:
        try:
            terms = json.loads(body) if body else {}
        except ValueError:
            terms = {}
        if not isinstance(terms, dict):
            terms = {}
        out.setdefault(signal_id, []).append(
            {
                "at": _parse(at),
                "source": source,
                "revision": int(revision),
                "kind": kind,
                "terms": terms,
            }
        )
    return out


def _in_force(revs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], datetime, datetime | None]]:
    """Each revision with when it was in force: from its start (or receipt) to its end, cut
    by the next revision or cancel."""
    spans = []
    for i, rev in enumerate(revs):
        if rev["kind"] == "cancel":
            continue
        terms = rev["terms"]
        begin = max(_opt(terms.get("start")) or rev["at"], rev["at"])  # in force from receipt
        stop = _opt(terms.get("end"))
        if i + 1 < len(revs):
            cut = revs[i + 1]["at"]
            stop = cut if stop is None else min(stop, cut)
        if stop is None or stop > begin:
            spans.append((rev, begin, stop))
    return spans


def _grants(
    history: dict[str, list[dict[str, Any]]],
    use: dict[str, tuple[float, float]],
    start: datetime,
    end: datetime,
) -> list[dict[str, Any]]:
    out = []
    for grant_id, revs in history.items():
        spans = [s for s in _in_force(revs) if s[0]["kind"] == "grant"]
        if not spans:
            continue
        granted = 0.0
        for rev, begin, stop in spans:
            a, b = max(begin, start), min(stop or end, end)
            if b > a:
                granted += (
                    float(rev["terms"].get("granted_kw", 0.0)) * (b - a).total_seconds() / 3600
                )
        first, last = spans[0], spans[-1]
        outside = (last[2] is not None and last[2] <= start) or first[1] >= end
        if outside and grant_id not in use:
            continue
        used, excess = use.get(grant_id, (0.0, 0.0))
        out.append(
            {
                "id": grant_id,
                "source": first[0]["source"],
                "start": _iso(first[1]),
                "end": None if last[2] is None else _iso(last[2]),
                "granted_kwh": round(granted, 6),
                "used_kwh": round(used, 6),
                "utilisation": round(min(1.0, used / granted), 4) if granted > 0 else None,
                "excess_kwh": round(excess, 6),
            }
        )
    return sorted(out, key=lambda g: (g["start"], g["id"]))


def _curtailments(
    obligations: list[tuple[Any, ...]],
    history: dict[str, list[dict[str, Any]]],
    excess: list[tuple[Any, ...]],
    start: datetime,
) -> list[dict[str, Any]]:
    over = {(sid, int(rev)): float(kwh) for sid, rev, kwh in excess}
    out = []
    for sid, rev, limit_w, starts_at, due_at in obligations:
        stop = next(
            (s for r, _, s in _in_force(history.get(sid, [])) if r["revision"] == int(rev)), None
        )
        if stop is not None and stop <= start and (sid, int(rev)) not in over:
            continue
        out.append(
            {
                "id": sid,
                "revision": int(rev),
                "limit_kw": limit_w / 1000,
                "starts_at": _iso(_parse(starts_at)),
                "due_at": _iso(_parse(due_at)),
                "end": None if stop is None else _iso(stop),
                "excess_kwh_after_deadline": round(over.get((sid, int(rev)), 0.0), 6),
            }
        )
    return out


def _pools(events: list[tuple[Any, ...]], start: datetime) -> list[dict[str, Any]]:
    """Each miner's periods on an unapproved pool, from its verdicts (events "pools")."""
    open_: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for at, miner, text in events:
        try:
            detail = json.loads(text or "{}")
        except ValueError:
            continue
        if not isinstance(detail, dict):
            continue
        was = open_.pop(miner, None)
        if was is not None:
            was["until"] = _iso(_parse(at))
            out.append(was)
        if not detail.get("approved", True):
            open_[miner] = {
                "miner_id": miner,
                "since": _iso(_parse(at)),
                "until": None,
                "unapproved": list(detail.get("unapproved", [])),
                "action": detail.get("action", "none"),
            }
    out.extend(open_.values())
    floor = _iso(start)
    kept = [p for p in out if p["until"] is None or p["until"] > floor]
    return sorted(kept, key=lambda p: (p["since"], p["miner_id"]))


def _opt(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def _iso(t: datetime) -> str:
    t = t.astimezone(UTC)
    spec = "seconds" if t.microsecond == 0 else "milliseconds"
    return t.isoformat(timespec=spec).replace("+00:00", "Z")
