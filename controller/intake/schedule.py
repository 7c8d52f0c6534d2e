"""Auction schedules: the surplus a farm won, uploaded by an operator as CSV or JSON.

Pure: bytes in, rows out (or a ScheduleError naming the row and the field). Each row
becomes a Grant with exactly a pushed grant's semantics, under the id `auction:<the
auction's reference>`: a namespace of its own, which no grid curtailment or grant may use
(wire.RESERVED), so an operator's reference can never shadow a grid signal. A grid cancel
withdraws it by that id, or by the bare reference (Inbox: see `bare_cancel`). The inbox
admits the rows (see Inbox.submit_schedule); here they are only read and judged.

CSV: a header `start,end,kw,auction` (or `reference`), in any order, any case. JSON: a
list of objects with the same fields, or `{"rows": [...]}`. Instants are ISO 8601 with
an offset.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from controller.core.signals import Grant, SignalBook
from controller.intake.wire import (
    AUCTION,
    EARLIEST,
    LATEST,
    MAX_BODY_BYTES,
    MAX_SIGNAL_ID,
    SIGNAL_ID_PATTERN,
)

MAX_BYTES = MAX_BODY_BYTES  # as the grid's own signals: 64 KiB
MAX_ROWS = 744  # a month of hourly awards
MAX_REFERENCE = MAX_SIGNAL_ID - len(AUCTION)  # the grant's id must still be a signal id
# Grants held at once after an upload: a year of hourly awards. Beyond it the book is a
# mistake (or an attack), and every cycle's arbitration walks it.
MAX_HELD_GRANTS = 9_000
MAX_INSTANT = 64  # characters in a start or end
MAX_NUMBER = 32  # characters in a kW figure
REVISION = 1  # an uploaded grant's revision: a grid cancel needs 2 or more
FIELDS = ("start", "end", "kw", "auction", "reference")
REFERENCES = ("auction", "reference")
MEDIA = {"text/csv": "csv", "application/csv": "csv", "application/json": "json"}
_ID = re.compile(SIGNAL_ID_PATTERN)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
SHOWN = 5  # conflicts named in one answer; the rest are counted


class ScheduleError(Exception):
    """An upload refused as a whole; nothing held changed. `status` is the HTTP answer,
    `row` the 1-based data row at fault (None: the file), `field` the field."""

    status = 400

    def __init__(
        self,
        detail: str,
        *,
        row: int | None = None,
        field: str | None = None,
        rows: Sequence[int] = (),
        held: Sequence[str] = (),
        signal_id: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.row = row
        self.field = field
        self.rows = tuple(rows)
        self.held = tuple(held)
        self.signal_id = signal_id

    def extra(self) -> dict[str, object]:
        """The problem document's members beyond the standard ones."""
        out: dict[str, object] = {}
        if self.row is not None:
            out["row"] = self.row
        if self.rows:
            out["rows"] = list(self.rows)
        if self.held:
            out["held"] = list(self.held)
        return out


class ScheduleTooLargeError(ScheduleError):
    status = 413


class ScheduleMediaError(ScheduleError):
    status = 415


class ScheduleOverlapError(ScheduleError):
    """Two awards for the same hours: rows of the file, or a row and a held grant."""

    status = 422


class ScheduleCapacityError(ScheduleError):
    """More grants than the book may hold (MAX_HELD_GRANTS)."""

    status = 422


class ScheduleIdTakenError(ScheduleError):
    """A reference already names a grant here (held, or cancelled): an id names one
    grant, so it cannot be given to another; as the grid endpoint answers a conflict
    with what is held."""

    status = 409


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """One award: `granted_w` from `start` to `end`, under the auction's reference."""

    number: int  # 1-based, among the data rows (a CSV header is not a row)
    where: str  # "row 2", or "row 2 (line 3)" in a CSV file
    reference: str
    reference_field: str  # auction | reference: as the file named it
    start: datetime
    end: datetime
    kw: float
    granted_w: int

    @property
    def grant_id(self) -> str:
        return grant_id(self.reference)

    def grant(self, issued_at: datetime) -> Grant:
        return Grant(self.grant_id, REVISION, issued_at, self.granted_w, self.start, self.end)

    def as_json(self) -> dict[str, object]:
        return {
            "row": self.number,
            self.reference_field: self.reference,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "kw": self.kw,
        }


@dataclass(frozen=True, slots=True)
class Schedule:
    rows: tuple[ScheduleRow, ...]
    sha256: str  # of the bytes uploaded: the evidence names the file
    format: Literal["csv", "json"]


def grant_id(reference: str) -> str:
    """The id an uploaded award is held under: its own namespace, not the grid's."""
    return AUCTION + reference


def shown(text: object) -> str:
    """`text` safe to answer and journal: JSON's escapes can carry a lone surrogate
    ("\\ud800"), which no UTF-8 encoder (SQLite's included) takes; it is written escaped."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def media_format(content_type: str | None) -> Literal["csv", "json"]:
    """csv or json from a Content-Type; ScheduleMediaError for anything else (a charset
    other than UTF-8 included)."""
    kind, _, params = (content_type or "").partition(";")
    found = MEDIA.get(kind.strip().lower())
    charset = next(
        (
            value.strip().strip('"').lower()
            for name, _, value in (p.partition("=") for p in params.split(";"))
            if name.strip().lower() == "charset"
        ),
        "utf-8",
    )
    if found is None or charset not in ("utf-8", "utf8"):
        raise ScheduleMediaError(
            "Content-Type must be text/csv or application/json (UTF-8)", field="Content-Type"
        )
    return "csv" if found == "csv" else "json"


def parse(data: bytes, content_type: str | None, *, now: datetime, cap_w: int) -> Schedule:
    """The schedule in `data`, every row checked; ScheduleError for the first fault (a
    bad row, or two rows for the same hours)."""
    if len(data) > MAX_BYTES:
        raise ScheduleTooLargeError(
            f"the schedule is {len(data)} bytes; the limit is {MAX_BYTES}", field="body"
        )
    if not data.strip():
        raise ScheduleError("the schedule is empty", field="body")
    kind = media_format(content_type)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ScheduleError(
            f"the schedule is not UTF-8 text (byte {err.start + 1})", field="body"
        ) from None
    text = text.removeprefix("\ufeff")  # a spreadsheet's byte-order mark
    found = _csv_rows(text) if kind == "csv" else _json_rows(text)
    if not found:
        raise ScheduleError("the schedule has no rows", field="rows")
    rows = tuple(_row(n, where, fields, now, cap_w, kind) for n, where, fields in found)
    _distinct(rows)
    _apart(rows)
    return Schedule(rows, sha256(data), kind)


def check_held(schedule: Schedule, book: SignalBook) -> None:
    """Refuse rows whose id is already known to the book (409), whose hours overlap a
    held grant's (422), or that would hold more than MAX_HELD_GRANTS grants (422). Pure:
    the book is not changed. The file's rows never overlap each other (parse), so each
    held grant finds the rows it meets by bisection: one sort, not one per row."""
    for row in schedule.rows:
        seen = book.revisions.get(row.grant_id)
        if seen is None:
            continue
        held = book.held.get(row.grant_id)
        what = (
            f"held: a {seen[1]} from {held.source}, revision {held.signal.revision}"
            if held is not None
            else f"used before (revision {seen[0]}, no longer held)"
        )
        raise ScheduleIdTakenError(
            f"{row.where}: {row.reference_field}: {row.reference} is already {what}; "
            f"a new award needs a reference of its own",
            row=row.number,
            field=row.reference_field,
            signal_id=row.grant_id,
        )
    grants = [h for h in book.held.values() if isinstance(h.signal, Grant)]
    if len(grants) + len(schedule.rows) > MAX_HELD_GRANTS:
        raise ScheduleCapacityError(
            f"{len(schedule.rows)} more grant(s) would make {len(grants) + len(schedule.rows)} "
            f"held; the limit is {MAX_HELD_GRANTS} (ended grants are forgotten a few "
            f"minutes after their end)",
            field="rows",
        )
    rows = sorted(schedule.rows, key=lambda r: r.start)
    ends = [r.end for r in rows]  # increasing too: the rows do not overlap
    clashes: list[tuple[int, str, str]] = []
    for held in grants:
        signal = held.signal
        start, end = held.starts_at, signal.end
        until = end.isoformat() if end is not None else "until cancelled"
        for row in rows[bisect.bisect_right(ends, start) :]:
            if row.start >= (end or LATEST):
                break
            clashes.append(
                (
                    row.number,
                    signal.id,
                    (
                        f"{row.where} ({_window(row.start, row.end)}) overlaps "
                        f"held grant {signal.id} ({start.isoformat()} to {until}, "
                        f"from {held.source})"
                    ),
                )
            )
    if clashes:
        clashes.sort()
        raise ScheduleOverlapError(
            _listed(
                [text for _, _, text in clashes],
                "an award for hours already granted",
            ),
            row=clashes[0][0],
            field="start",
            rows=sorted({n for n, _, _ in clashes}),
            held=sorted({h for _, h, _ in clashes}),
        )


# -- reading the file ----------------------------------------------------------------------

Raw = tuple[int, str, Mapping[str, object]]  # (row number, where, fields)
Bad = Callable[[str, str], ScheduleError]  # a row's error maker: (field, why)


def _csv_rows(text: str) -> list[Raw]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header: list[str] | None = None
        out: list[Raw] = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # blank lines
            if header is None:
                header = _header(cells)
                continue
            number = len(out) + 1
            where = f"row {number} (line {reader.line_num})"
            if number > MAX_ROWS:
                raise _too_many()
            if len(cells) != len(header):
                raise ScheduleError(
                    f"{where}: {len(cells)} fields, the header has {len(header)}",
                    row=number,
                    field="row",
                )
            out.append((number, where, dict(zip(header, (c.strip() for c in cells), strict=True))))
    except csv.Error as err:
        raise ScheduleError(f"line {reader.line_num}: not CSV: {err}", field="body") from None
    return out


def _header(cells: list[str]) -> list[str]:
    names = [c.strip().lower() for c in cells]
    wanted = "start,end,kw,auction (or reference)"
    shown = ",".join(c[:20] for c in cells[:8])[:120]
    unknown = [n for n in names if n not in FIELDS]
    if unknown or len(set(names)) != len(names):
        raise ScheduleError(f"header: expected {wanted}; got {shown!r}", field="header")
    missing = [f for f in ("start", "end", "kw") if f not in names]
    refs = [n for n in names if n in REFERENCES]
    if missing or len(refs) != 1:
        raise ScheduleError(
            f"header: expected {wanted}, with exactly one of auction and reference; got {shown!r}",
            field="header",
        )
    return names


def _json_rows(text: str) -> list[Raw]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:  # too deep, or too long a number
        where = (
            f" (line {err.lineno}, column {err.colno})"
            if isinstance(err, json.JSONDecodeError)
            else ""
        )
        raise ScheduleError(f"not JSON{where}", field="body") from None
    if isinstance(doc, dict):
        extra = sorted(shown(k) for k in doc if k != "rows")
        if extra or "rows" not in doc:
            name = extra[0][:40] if extra else "rows"
            raise ScheduleError(
                f"{name}: the schedule is a list of rows, or an object with only 'rows'",
                field=name,
            )
        doc = doc["rows"]
    if not isinstance(doc, list):
        raise ScheduleError("rows: must be a list of objects", field="rows")
    if len(doc) > MAX_ROWS:
        raise _too_many()
    out: list[Raw] = []
    for i, item in enumerate(doc, start=1):
        if not isinstance(item, dict):
            raise ScheduleError(f"row {i}: must be an object", row=i, field="row")
        out.append((i, f"row {i}", item))
    return out


def _too_many() -> ScheduleError:
    return ScheduleError(f"more than {MAX_ROWS} rows; upload a month at most", field="rows")


# -- judging one row -----------------------------------------------------------------------


def _row(  # noqa: PLR0917 - one row and what it is judged against
    number: int,
    where: str,
    fields: Mapping[str, object],
    now: datetime,
    cap_w: int,
    kind: Literal["csv", "json"],
) -> ScheduleRow:
    def bad(field: str, why: str) -> ScheduleError:
        return ScheduleError(f"{where}: {field}: {why}", row=number, field=field)

    field = _present(fields, bad)
    start = _instant(fields["start"], "start", bad)
    end = _instant(fields["end"], "end", bad)
    if end <= start:
        raise bad("end", f"must be after start ({start.isoformat()})")
    if end <= now:
        raise bad("end", f"{end.isoformat()} has already passed")
    kw = _kw(fields["kw"], bad, from_text=kind == "csv")
    # Judged against the cap before any arithmetic: 1e306 kW in watts is no float.
    if kw > cap_w / 1000:
        raise bad("kw", f"{kw:g} kW is above the site cap of {cap_w / 1000:g} kW")
    try:
        granted_w = round(kw * 1000)
    except (OverflowError, ValueError):  # unreachable below the cap; kept as a backstop
        raise bad("kw", f"{kw:g} kW is not a power this site can hold") from None
    if granted_w < 1:
        raise bad("kw", f"must be at least 0.001 kW (got {kw:g})")
    if granted_w > cap_w:
        raise bad("kw", f"{kw:g} kW is above the site cap of {cap_w / 1000:g} kW")
    reference = _reference(fields[field], field, bad)
    return ScheduleRow(number, where, reference, field, start, end, kw, granted_w)


def _present(fields: Mapping[str, object], bad: Bad) -> str:
    """Every field there, none unknown; which of auction and reference the row gives."""
    for name in fields:
        if name not in FIELDS:
            why = "not a schedule field (start, end, kw, auction or reference)"
            raise bad(shown(name)[:40], why)
    refs = [n for n in REFERENCES if n in fields]
    if len(refs) > 1:
        raise bad("reference", "give auction or reference, not both")
    for name in ("start", "end", "kw", *(refs or ["auction"])):
        if name not in fields:
            raise bad(name, "missing" if name != "auction" else "missing (or reference)")
    return refs[0]


def _reference(value: object, field: str, bad: Bad) -> str:
    if not isinstance(value, str) or not value:
        raise bad(field, "must be a non-empty text")
    if len(value) > MAX_REFERENCE:
        raise bad(field, f"longer than {MAX_REFERENCE} characters")
    if not _ID.fullmatch(value):
        raise bad(
            field,
            "letters, digits and . _ : - only, starting with a letter or digit "
            "(the grant is held as auction:<it>, which the grid cancels it by)",
        )
    return value


def _instant(value: object, field: str, bad: Bad) -> datetime:
    if not isinstance(value, str):
        raise bad(field, "must be an ISO 8601 instant, as text")
    if len(value) > MAX_INSTANT:
        raise bad(field, f"longer than {MAX_INSTANT} characters")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise bad(field, f"{value!r} is not an ISO 8601 instant") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise bad(field, "needs a UTC offset (e.g. Z or +05:00)")
    # Judged on the wall-clock fields: year 1 at +05:00 cannot even be converted to UTC.
    if (
        not EARLIEST.replace(tzinfo=None)
        <= parsed.replace(tzinfo=None)
        < LATEST.replace(tzinfo=None)
    ):
        raise bad(field, f"must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return parsed


def _kw(value: object, bad: Bad, *, from_text: bool) -> float:
    """A CSV cell is text; JSON must give a number, as its schema says."""
    if isinstance(value, str) and from_text:
        text = value.strip()
        if len(text) > MAX_NUMBER or not _NUMBER.fullmatch(text):
            raise bad("kw", f"{text[:MAX_NUMBER]!r} is not a number")
        kw = float(text)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            kw = float(value)
        except OverflowError:
            raise bad("kw", "is far too large") from None
    else:
        raise bad("kw", "must be a number")
    if not math.isfinite(kw):
        raise bad("kw", "must be a finite number")
    return kw


# -- the rows together ---------------------------------------------------------------------


def _distinct(rows: Sequence[ScheduleRow]) -> None:
    first: dict[str, int] = {}
    for row in rows:
        if row.reference in first:
            raise ScheduleError(
                f"{row.where}: {row.reference_field}: {row.reference} is row "
                f"{first[row.reference]}'s too; each award needs its own reference "
                f"(it becomes the grant's id)",
                row=row.number,
                field=row.reference_field,
            )
        first[row.reference] = row.number


def _apart(rows: Sequence[ScheduleRow]) -> None:
    """Two rows for the same hours would grant them twice: refused (422)."""
    ordered = sorted(rows, key=lambda r: (r.start, r.number))
    clashes: list[tuple[ScheduleRow, ScheduleRow]] = []
    latest: ScheduleRow | None = None  # the row reaching furthest so far
    for row in ordered:
        if latest is not None and row.start < latest.end:
            clashes.append((latest, row))
        if latest is None or row.end > latest.end:
            latest = row
    if not clashes:
        return
    texts = [
        f"rows {a.number} and {b.number} overlap ({_window(a.start, a.end)} and "
        f"{_window(b.start, b.end)})"
        for a, b in sorted(clashes, key=lambda p: min(p[0].number, p[1].number))
    ]
    numbers = sorted({r.number for pair in clashes for r in pair})
    raise ScheduleOverlapError(
        _listed(texts, "one file's awards overlap"),
        row=numbers[0],
        field="start",
        rows=numbers,
    )


def _window(start: datetime, end: datetime) -> str:
    return f"{start.isoformat()} to {end.isoformat()}"


def _listed(texts: Sequence[str], what: str) -> str:
    more = f"; and {len(texts) - SHOWN} more" if len(texts) > SHOWN else ""
    return f"{what}: " + "; ".join(texts[:SHOWN]) + more
