"""The auction schedule parser: every field judged, the row and field named, rows that
overlap each other or a held grant refused, and nothing but ScheduleError on any input."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.clock import FakeClock
from controller.core.signals import Grant, Held, SignalBook, schedule_source
from controller.intake import schedule
from controller.intake.inbox import Inbox
from controller.intake.schedule import (
    MAX_ROWS,
    ScheduleError,
    ScheduleIdTakenError,
    ScheduleMediaError,
    ScheduleOverlapError,
    ScheduleTooLargeError,
    check_held,
    parse,
)
from controller.record.journal import Journal, JournalError
from controller.record.publish import Recorder

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CAP_W = 2_000_000
CSV = "text/csv"
JSON = "application/json"


def hour(h: int) -> str:
    """An instant at +05:00 (Kazakhstan), h hours after NOW."""
    at = NOW + timedelta(hours=h)
    return at.astimezone(datetime.fromisoformat("2026-01-01T00:00+05:00").tzinfo).isoformat()


def csv_of(*rows: tuple[object, ...], header: str = "start,end,kw,auction") -> bytes:
    lines = [header, *(",".join(str(c) for c in r) for r in rows)]
    return ("\n".join(lines) + "\n").encode()


def row(h: int, kw: object = 500, ref: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"start": hour(h), "end": hour(h + 1), "kw": kw}
    out["auction"] = ref or f"korem-h{h:02d}"
    out.update(extra)
    return out


def read(data: bytes, kind: str = CSV, **kw: Any) -> schedule.Schedule:
    return parse(data, kind, now=kw.get("now", NOW), cap_w=kw.get("cap_w", CAP_W))


def refused(data: bytes, kind: str = CSV, **kw: Any) -> ScheduleError:
    with pytest.raises(ScheduleError) as caught:
        read(data, kind, **kw)
    return caught.value


def test_schedule_csv_rows_become_grants_under_their_auction_reference() -> None:
    data = csv_of((hour(1), hour(2), 500, "korem-h11"), (hour(2), hour(3), "750.5", "korem-h12"))
    got = read(data)
    assert got.format == "csv"
    assert len(got.sha256) == 64
    assert [(r.number, r.reference, r.granted_w) for r in got.rows] == [
        (1, "korem-h11", 500_000),
        (2, "korem-h12", 750_500),
    ]
    grant = got.rows[0].grant(NOW)
    assert grant == Grant("auction:korem-h11", 1, NOW, 500_000, got.rows[0].start, got.rows[0].end)
    assert grant.start == NOW + timedelta(hours=1)


def test_schedule_csv_header_any_order_and_case_with_reference_bom_and_blank_lines() -> None:
    text = f"\ufeffKW , Reference,END,Start\r\n\r\n600,ref-1,{hour(2)},{hour(1)}\r\n\r\n"
    got = read(text.encode(), "text/csv; charset=utf-8")
    [only] = got.rows
    assert (only.reference, only.reference_field, only.kw) == ("ref-1", "reference", 600.0)


def test_schedule_json_list_and_rows_object_read_the_same() -> None:
    rows = [row(1), row(2, kw=250.25, ref="korem-b")]
    a = read(json.dumps(rows).encode(), JSON)
    b = read(json.dumps({"rows": rows}).encode(), "application/json; charset=UTF-8")
    assert [(r.reference, r.granted_w, r.start, r.end) for r in a.rows] == [
        (r.reference, r.granted_w, r.start, r.end) for r in b.rows
    ]
    assert a.sha256 != b.sha256  # the file's own hash: different bytes
    assert [r.granted_w for r in a.rows] == [500_000, 250_250]


@pytest.mark.parametrize(
    ("cells", "field", "words"),
    [
        (("tomorrow", hour(2), 500, "a"), "start", "not an ISO 8601 instant"),
        (("2026-11-23T16:00:00", hour(2), 500, "a"), "start", "needs a UTC offset"),
        (("0001-01-01T00:00:00+05:00", hour(2), 500, "a"), "start", "must lie between"),
        ((hour(1), "", 500, "a"), "end", "not an ISO 8601 instant"),
        ((hour(2), hour(1), 500, "a"), "end", "must be after start"),
        ((hour(1), hour(1), 500, "a"), "end", "must be after start"),
        ((hour(-3), hour(-1), 500, "a"), "end", "has already passed"),
        ((hour(1), hour(2), "-5", "a"), "kw", "at least 0.001"),
        ((hour(1), hour(2), "0", "a"), "kw", "at least 0.001"),
        ((hour(1), hour(2), "nan", "a"), "kw", "not a number"),
        ((hour(1), hour(2), "inf", "a"), "kw", "not a number"),
        ((hour(1), hour(2), "1e999", "a"), "kw", "finite"),
        ((hour(1), hour(2), "5 kW", "a"), "kw", "not a number"),
        ((hour(1), hour(2), "1_000", "a"), "kw", "not a number"),
        ((hour(1), hour(2), "2000.001", "a"), "kw", "above the site cap of 2000 kW"),
        ((hour(1), hour(2), 500, ""), "auction", "non-empty"),
        ((hour(1), hour(2), 500, "-lead"), "auction", "letters, digits"),
        ((hour(1), hour(2), 500, "a b"), "auction", "letters, digits"),
        ((hour(1), hour(2), 500, "x" * 121), "auction", "longer than 120"),
    ],
)
def test_schedule_csv_each_bad_field_is_named_with_its_row(
    cells: tuple[object, ...], field: str, words: str
) -> None:
    data = csv_of((hour(5), hour(6), 100, "good-1"), cells)
    err = refused(data)
    assert (err.status, err.row, err.field) == (400, 2, field)
    assert err.detail.startswith(f"row 2 (line 3): {field}: ")
    assert words in err.detail


@pytest.mark.parametrize(
    ("item", "field", "words"),
    [
        (row(1, kw="500"), "kw", "must be a number"),  # text is fine in CSV, not in JSON
        (row(1, kw=True), "kw", "must be a number"),
        (row(1, kw=None), "kw", "must be a number"),
        (row(1, kw=10**400), "kw", "far too large"),
        ({**row(1), "start": 1795000000}, "start", "as text"),
        ({**row(1), "end": "x" * 65}, "end", "longer than 64"),
        ({k: v for k, v in row(1).items() if k != "kw"}, "kw", "missing"),
        ({k: v for k, v in row(1).items() if k != "auction"}, "auction", "missing (or reference)"),
        (row(1, reference="r-1"), "reference", "not both"),
        (row(1, colour="red"), "colour", "not a schedule field"),
        (row(1, ref="ok", auction=7), "auction", "non-empty text"),
    ],
)
def test_schedule_json_each_bad_field_is_named_with_its_row(
    item: dict[str, Any], field: str, words: str
) -> None:
    err = refused(json.dumps([row(5), item]).encode(), JSON)
    assert (err.status, err.row, err.field) == (400, 2, field)
    assert err.detail.startswith(f"row 2: {field}: ")
    assert words in err.detail


@pytest.mark.parametrize(
    ("data", "kind", "status", "field"),
    [
        (b"", CSV, 400, "body"),
        (b"  \n\n", JSON, 400, "body"),
        (b"start,end,kw,auction\n", CSV, 400, "rows"),
        (b"[]", JSON, 400, "rows"),
        (b'{"rows": []}', JSON, 400, "rows"),
        (b'{"rows": [], "note": 1}', JSON, 400, "note"),
        (b'{"grants": []}', JSON, 400, "grants"),
        (b'"rows"', JSON, 400, "rows"),
        (b"[1]", JSON, 400, "row"),
        (b"[" * 100_000, JSON, 413, "body"),
        (b"[" * 50_000, JSON, 400, "body"),  # deeper than the JSON reader goes
        (b"\xff\xfe" + "start".encode("utf-16-le"), CSV, 400, "body"),
        (b'start,end,kw,auction\n"open', CSV, 400, "body"),
        (b"start;end;kw;auction\n", CSV, 400, "header"),
        (b"start,end,kw\n", CSV, 400, "header"),
        (b"start,end,kw,auction,reference\n", CSV, 400, "header"),
        (b"start,end,kw,auction,kw\n", CSV, 400, "header"),
        (b"start,end,kw,auction\na,b\n", CSV, 400, "row"),
        (b"start,end,kw,auction\n", "text/plain", 415, "Content-Type"),
        (b"[]", None, 415, "Content-Type"),
        (b"[]", "application/json; charset=latin-1", 415, "Content-Type"),
    ],
)
def test_schedule_bad_files_are_refused_whole(
    data: bytes, kind: str | None, status: int, field: str
) -> None:
    err = refused(data, kind)  # type: ignore[arg-type]
    assert (err.status, err.field) == (status, field), err.detail


def test_schedule_too_many_rows_is_refused_in_either_format() -> None:
    many = [(hour(i), hour(i + 1), 1, f"r{i}") for i in range(MAX_ROWS + 1)]
    err = refused(csv_of(*many))
    assert (err.status, err.field) == (400, "rows")
    assert str(MAX_ROWS) in err.detail

    def utc(h: int) -> str:
        return (NOW + timedelta(hours=h)).isoformat().replace("+00:00", "Z")

    items = [
        {"start": utc(i), "end": utc(i + 1), "kw": 1, "auction": f"r{i}"}
        for i in range(MAX_ROWS + 1)
    ]
    text = json.dumps(items, separators=(",", ":")).encode()
    assert len(text) <= schedule.MAX_BYTES  # the row count, not the size, refuses it
    err = refused(text, JSON)
    assert (err.status, err.field) == (400, "rows")
    assert len(read(csv_of(*many[:MAX_ROWS])).rows) == MAX_ROWS


def test_schedule_a_reference_twice_in_one_file_is_a_bad_row() -> None:
    err = refused(csv_of((hour(1), hour(2), 5, "dup"), (hour(3), hour(4), 5, "dup")))
    assert (err.status, err.row, err.field) == (400, 2, "auction")
    assert "row 1's too" in err.detail


def test_schedule_rows_that_overlap_each_other_are_422_naming_both() -> None:
    data = csv_of(
        (hour(1), hour(3), 5, "a"),
        (hour(5), hour(6), 5, "b"),
        (hour(2), hour(4), 5, "c"),
        (hour(3), hour(5), 5, "d"),  # touches a's end and b's start: no overlap with them
    )
    with pytest.raises(ScheduleOverlapError) as caught:
        read(data)
    err = caught.value
    assert err.status == 422
    assert err.rows == (1, 3, 4)  # a-c, and c-d (c runs to hour 4)
    assert "rows 1 and 3 overlap" in err.detail
    assert "rows 3 and 4 overlap" in err.detail
    assert "rows 1 and 4" not in err.detail
    # Back to back is no overlap.
    assert len(read(csv_of((hour(1), hour(2), 5, "a"), (hour(2), hour(3), 5, "b"))).rows) == 2


def held_grant(grant_id: str, start_h: int, end_h: int | None) -> SignalBook:
    end = None if end_h is None else NOW + timedelta(hours=end_h)
    grant = Grant(grant_id, 3, NOW, 100_000, NOW + timedelta(hours=start_h), end)
    return SignalBook({grant_id: Held(grant, "kegoc", NOW)}, {grant_id: (3, "grant")})


def test_schedule_against_the_book_overlap_is_422_naming_the_held_grant() -> None:
    got = read(csv_of((hour(1), hour(2), 5, "a"), (hour(4), hour(6), 5, "b")))
    check_held(got, held_grant("korem-x", 2, 4))  # back to back on both sides: fine
    with pytest.raises(ScheduleOverlapError) as caught:
        check_held(got, held_grant("korem-x", 5, None))  # until cancelled
    err = caught.value
    assert (err.status, err.rows, err.held) == (422, (2,), ("korem-x",))
    assert "row 2" in err.detail
    assert "korem-x" in err.detail
    assert "until cancelled" in err.detail
    assert "kegoc" in err.detail


def test_schedule_against_the_book_a_known_id_is_409() -> None:
    got = read(csv_of((hour(8), hour(9), 5, "korem-x")))
    # The grid's own korem-x is another namespace: it does not take the reference.
    check_held(got, held_grant("korem-x", 1, 2))
    with pytest.raises(ScheduleIdTakenError) as caught:
        check_held(got, held_grant("auction:korem-x", 1, 2))
    assert (caught.value.status, caught.value.row, caught.value.field) == (409, 1, "auction")
    assert "already held" in caught.value.detail
    cancelled = SignalBook({}, {"auction:korem-x": (2, "grant")})
    with pytest.raises(ScheduleIdTakenError) as caught:
        check_held(got, cancelled)
    assert "no longer held" in caught.value.detail


def test_schedule_source_names_the_uploader() -> None:
    grant = Grant("a", 1, NOW, 1, None, None)
    assert Held(grant, schedule_source("alice"), NOW).uploaded_by == "alice"
    assert Held(grant, "kegoc", NOW).uploaded_by is None


def test_schedule_too_large_is_413() -> None:
    err = refused(b"x" * (schedule.MAX_BYTES + 1))
    assert isinstance(err, ScheduleTooLargeError)


def test_schedule_media_types() -> None:
    assert schedule.media_format('TEXT/CSV; charset="utf-8"') == "csv"
    assert schedule.media_format("application/json") == "json"
    with pytest.raises(ScheduleMediaError):
        schedule.media_format("multipart/form-data; boundary=x")


CELLS = st.one_of(
    st.text(max_size=30),
    st.sampled_from([hour(1), hour(2), hour(-2), "2026-11-23T16:00:00", "500", "-1", "nan"]),
)


@settings(max_examples=400, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=2000),
        st.lists(st.lists(CELLS, max_size=6), max_size=6).map(
            lambda rows: "\n".join(
                ",".join(r) for r in [["start", "end", "kw", "auction"], *rows]
            ).encode()
        ),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | CELLS,
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from([*schedule.FIELDS, "rows", "x"]), inner, max_size=5
                )
            ),
            max_leaves=30,
        ).map(lambda doc: json.dumps(doc).encode()),
    ),
    kind=st.sampled_from([CSV, JSON, "text/plain", None, "application/json; charset=utf-16"]),
    cap_w=st.integers(1, 10**9),
)
def test_schedule_parser_raises_only_its_own_error(
    data: bytes, kind: str | None, cap_w: int
) -> None:
    try:
        got = parse(data, kind, now=NOW, cap_w=cap_w)
    except ScheduleError as err:
        refusal: ScheduleError | None = err
    else:
        refusal = None
    if refusal is not None:
        assert 400 <= refusal.status < 500
        assert refusal.detail
        return
    # Whatever it accepts is a schedule the book can hold.
    assert got.rows
    for r in got.rows:
        assert 1 <= r.granted_w <= cap_w
        assert r.start < r.end
        assert r.end > NOW


# -- the inbox's door and the journal's one transaction -----------------------------------


def inbox_on(path: Path) -> tuple[Inbox, Journal]:
    journal = Journal(path / "journal.db")
    return Inbox(
        journal=journal,
        clock=FakeClock(NOW),
        keys={"kegoc": b"k"},
        replay_window_s=30,
        book=SignalBook(),
        publisher=Recorder(),
    ), journal


def test_schedule_inbox_admits_every_row_in_one_transaction_and_restores(tmp_path: Path) -> None:
    inbox, journal = inbox_on(tmp_path)
    data = csv_of((hour(1), hour(2), 500, "a"), (hour(2), hour(3), 400, "b"))
    got = inbox.upload_schedule(data, CSV, by="alice", role="operator", cap_w=CAP_W)
    assert [h.signal.id for h in got.held] == ["auction:a", "auction:b"]
    assert inbox.wake.is_set()
    # Each admission carries the whole schedule's book (a row's deadline sees the next).
    assert [a.admission.book for a in inbox.admitted] == [inbox.book, inbox.book]
    restored = journal.restore_book()  # what a restart reads
    assert {k: (h.signal, h.uploaded_by) for k, h in restored.held.items()} == {
        k: (h.signal, "alice") for k, h in inbox.book.held.items()
    }
    rows = journal.rows(
        "SELECT transport, source, signal_id, verdict, detail FROM signals ORDER BY seq"
    )
    digest = hashlib.sha256(data).hexdigest()
    assert [r[:4] for r in rows] == [
        ("schedule", "schedule:alice", "auction:a", "received"),
        ("schedule", "schedule:alice", "auction:b", "received"),
    ]
    assert all(digest in r[4] for r in rows)


def test_schedule_a_journal_failure_midway_leaves_nothing_written_or_held(tmp_path: Path) -> None:
    inbox, journal = inbox_on(tmp_path)
    with closing(sqlite3.connect(tmp_path / "journal.db")) as other:  # full at the 2nd row
        other.execute(
            "CREATE TRIGGER fail_b BEFORE INSERT ON held WHEN NEW.signal_id = 'auction:b'"
            " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    book = inbox.book
    data = csv_of((hour(1), hour(2), 500, "a"), (hour(2), hour(3), 400, "b"))
    with pytest.raises(JournalError):
        inbox.upload_schedule(data, CSV, by="alice", role="operator", cap_w=CAP_W)
    assert inbox.book is book
    assert inbox.admitted == []
    assert not inbox.wake.is_set()
    assert journal.rows("SELECT count(*) FROM signals") == [(0,)]
    assert journal.restore_book().held == {}


def test_schedule_refusals_are_journaled_and_hold_nothing(tmp_path: Path) -> None:
    inbox, journal = inbox_on(tmp_path)
    bad = csv_of((hour(1), hour(2), -1, "a"))
    with pytest.raises(ScheduleError):
        inbox.upload_schedule(bad, CSV, by="bob", role="operator", cap_w=CAP_W)
    assert inbox.book.held == {}
    [(source, verdict, detail)] = journal.rows("SELECT source, verdict, detail FROM signals")
    assert (source, verdict) == ("schedule:bob", "rejected")
    assert "row 1 (line 2): kw" in detail
    assert hashlib.sha256(bad).hexdigest() in detail
