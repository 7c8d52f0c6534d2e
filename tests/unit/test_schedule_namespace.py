"""Uploaded grants in their own id namespace: a grid signal always wins over an upload,
a grid cancel still reaches an uploaded grant (by its full id, or by the bare reference
when no grid signal holds it); kW no float can hold, lone surrogates and too many grants
are refused and journaled, never raised past the door."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.clock import FakeClock
from controller.core.signals import Cancel, Curtailment, Grant, Held, SignalBook
from controller.intake.inbox import Inbox, bare_cancel
from controller.intake.schedule import (
    MAX_HELD_GRANTS,
    ScheduleCapacityError,
    ScheduleError,
    ScheduleOverlapError,
    check_held,
    parse,
)
from controller.intake.wire import LATEST, InvalidSignalError, parse_signal
from controller.record.journal import Journal
from controller.record.publish import Recorder

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CAP_W = 2_000_000
CSV = "text/csv"
JSON = "application/json"


def hour(h: float) -> str:
    return (NOW + timedelta(hours=h)).isoformat()


def inbox_on(path: Path) -> tuple[Inbox, Journal, Recorder]:
    journal = Journal(path / "journal.db")
    publisher = Recorder()
    inbox = Inbox(
        journal=journal,
        clock=FakeClock(NOW),
        keys={"kegoc": b"k"},
        replay_window_s=30,
        book=SignalBook(),
        publisher=publisher,
    )
    return inbox, journal, publisher


def upload(inbox: Inbox, *refs: str) -> None:
    rows = "".join(f"{hour(i)},{hour(i + 1)},500,{r}\n" for i, r in enumerate(refs, start=1))
    data = ("start,end,kw,auction\n" + rows).encode()
    inbox.upload_schedule(data, CSV, by="alice", role="operator", cap_w=CAP_W)


def signals(journal: Journal) -> list[tuple[Any, ...]]:
    return journal.rows(
        "SELECT transport, signal_id, revision, kind, verdict, detail FROM signals ORDER BY seq"
    )


def test_namespace_a_grid_curtailment_with_an_uploaded_reference_is_admitted(
    tmp_path: Path,
) -> None:
    inbox, _, _ = inbox_on(tmp_path)
    upload(inbox, "KOREM-2026-001")
    for rev in (1, 2):
        cut = Curtailment("KOREM-2026-001", rev, NOW, 0, 60.0)
        out = inbox.submit_signal("http", "kegoc", cut, b"{}")
        assert (out.status, out.http_status) == ("received", 202), out
    held = inbox.book.held
    assert isinstance(held["KOREM-2026-001"].signal, Curtailment)
    assert held["KOREM-2026-001"].signal.revision == 2
    assert isinstance(held["auction:KOREM-2026-001"].signal, Grant)  # untouched


def test_namespace_a_grid_cancel_by_the_full_id_withdraws_the_upload(tmp_path: Path) -> None:
    inbox, journal, _ = inbox_on(tmp_path)
    upload(inbox, "korem-a")
    out = inbox.submit_signal("http", "kegoc", Cancel("auction:korem-a", 2, NOW), b"{}")
    assert (out.status, out.signal_id) == ("received", "auction:korem-a")
    assert "auction:korem-a" not in inbox.book.held
    assert "auction:korem-a" not in journal.restore_book().held
    assert [a.signal.id for a in inbox.admitted][-1] == "auction:korem-a"


def test_namespace_a_bare_reference_cancel_withdraws_the_upload_journaled_as_such(
    tmp_path: Path,
) -> None:
    inbox, journal, publisher = inbox_on(tmp_path)
    upload(inbox, "korem-b")
    out = inbox.submit_signal("mqtt", "kegoc", Cancel("korem-b", 2, NOW), b'{"id":"korem-b"}')
    # Answered under the id the grid named; the book and the journal say what it hit.
    assert (out.status, out.signal_id, out.revision) == ("received", "korem-b", 2)
    assert publisher.acks[-1].signal_id == "korem-b"
    assert "auction:korem-b" not in inbox.book.held
    assert "auction:korem-b" not in journal.restore_book().held
    assert "korem-b" not in inbox.book.revisions  # the grid's namespace is left alone
    transport, sid, rev, kind, verdict, detail = signals(journal)[-1]
    assert (transport, sid, rev, kind, verdict) == ("mqtt", "auction:korem-b", 2, "cancel",
                                                    "received")  # fmt: skip
    assert "named by its bare reference korem-b" in detail
    assert "no grid signal holds korem-b" in detail
    assert inbox.admitted[-1].signal == Cancel("auction:korem-b", 2, NOW)
    # The grid may still use the id for a curtailment of its own: admitted.
    cut = inbox.submit_signal("http", "kegoc", Curtailment("korem-b", 1, NOW, 0, 30.0), b"{}")
    assert cut.status == "received"


def test_namespace_a_bare_cancel_goes_to_the_grid_signal_holding_the_id(tmp_path: Path) -> None:
    inbox, journal, _ = inbox_on(tmp_path)
    upload(inbox, "x-1")
    inbox.submit_signal("http", "kegoc", Curtailment("x-1", 1, NOW, 0, 30.0), b"{}")
    out = inbox.submit_signal("http", "kegoc", Cancel("x-1", 2, NOW), b"{}")
    assert out.status == "received"
    assert "x-1" not in inbox.book.held  # the grid's curtailment
    assert "auction:x-1" in inbox.book.held  # the upload stays
    assert "bare reference" not in signals(journal)[-1][5]


def test_namespace_bare_cancel_aims_only_at_uploaded_grants() -> None:
    grant = Grant("auction:r", 1, NOW, 1, None, None)
    held = {"auction:r": Held(grant, "schedule:a", NOW)}
    uploaded = SignalBook(held, {"auction:r": (1, "grant")})
    assert bare_cancel(uploaded, Cancel("r", 2, NOW)) == Cancel("auction:r", 2, NOW)
    assert bare_cancel(uploaded, Cancel("auction:r", 2, NOW)) is None  # already full
    assert bare_cancel(uploaded, Cancel("s", 2, NOW)) is None
    # An id the grid has used is the grid's, held or not: a repeated grid cancel of its own
    # curtailment r (already withdrawn) must not reach the award uploaded as auction:r.
    used = SignalBook(held, {"auction:r": (1, "grant"), "r": (2, "cancel")})
    assert bare_cancel(used, Cancel("r", 2, NOW)) is None
    # A cancel of auction:s that named nothing made no grant of it.
    assert bare_cancel(SignalBook({}, {"auction:s": (2, "cancel")}), Cancel("s", 3, NOW)) is None


@pytest.mark.parametrize("kind", ["curtailment", "grant"])
def test_namespace_the_grid_cannot_push_into_it(kind: str) -> None:
    body: dict[str, Any] = {"type": kind, "id": "auction:korem-a", "revision": 3,
                            "issued_at": NOW.isoformat()}  # fmt: skip
    body |= {"limit_kw": 0, "deadline_s": 30} if kind == "curtailment" else {"granted_kw": 5}
    with pytest.raises(InvalidSignalError) as caught:
        parse_signal(json.dumps(body).encode())
    assert "reserved for uploaded auction grants" in caught.value.reason
    cancel = {"type": "cancel", "id": "auction:korem-a", "revision": 2,
              "issued_at": NOW.isoformat()}  # fmt: skip
    assert parse_signal(json.dumps(cancel).encode()) == Cancel("auction:korem-a", 2, NOW)


def test_namespace_an_upload_whose_reference_was_used_is_409(tmp_path: Path) -> None:
    inbox, journal, _ = inbox_on(tmp_path)
    upload(inbox, "korem-c")
    inbox.submit_signal("http", "kegoc", Cancel("auction:korem-c", 2, NOW), b"{}")
    with pytest.raises(ScheduleError) as caught:
        upload(inbox, "korem-c")
    assert (caught.value.status, caught.value.field) == (409, "auction")
    assert signals(journal)[-1][4] == "rejected"


# -- kW no float can hold ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (f"start,end,kw,auction\n{hour(1)},{hour(2)},1e306,a1\n".encode(), CSV),
        (json.dumps([{"start": hour(1), "end": hour(2), "kw": 1e306, "auction": "a1"}]).encode(),
         JSON),
        (json.dumps([{"start": hour(1), "end": hour(2), "kw": 1e20, "auction": "a1"}]).encode(),
         JSON),
    ],
)  # fmt: skip
def test_kw_beyond_any_cap_is_a_400_naming_row_and_field_and_journaled(
    tmp_path: Path, data: bytes, kind: str
) -> None:
    inbox, journal, _ = inbox_on(tmp_path)
    with pytest.raises(ScheduleError) as caught:
        inbox.upload_schedule(data, kind, by="bob", role="operator", cap_w=CAP_W)
    err = caught.value
    assert (err.status, err.row, err.field) == (400, 1, "kw")
    assert "above the site cap" in err.detail
    assert [r[4] for r in signals(journal)] == ["rejected"]


KW = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**400), 10**400),
    st.floats(min_value=1e300, max_value=1.7e308),
)


@settings(max_examples=300, deadline=None)
@given(kw=KW, as_csv=st.booleans(), cap_w=st.integers(1, 10**12))
def test_kw_of_any_size_is_accepted_within_the_cap_or_refused_by_name(
    kw: float, as_csv: bool, cap_w: int
) -> None:
    if as_csv:
        data = f"start,end,kw,auction\n{hour(1)},{hour(2)},{kw!r},a1\n".encode()
    else:
        data = json.dumps([{"start": hour(1), "end": hour(2), "kw": kw, "auction": "a1"}]).encode()
    refusal: ScheduleError | None = None
    try:
        got = parse(data, CSV if as_csv else JSON, now=NOW, cap_w=cap_w)
    except ScheduleError as err:
        refusal = err
    if refusal is not None:
        assert (refusal.status, refusal.row, refusal.field) == (400, 1, "kw"), refusal.detail
        return
    assert 1 <= got.rows[0].granted_w <= cap_w


# -- lone surrogates -----------------------------------------------------------------------

ROW = b'[{"start":"2030-01-01T00:00:00Z","end":"2030-01-01T01:00:00Z","kw":1,'


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (ROW + b'"auction":"a1","\\ud800":1}]', "\\ud800"),
        (b'{"rows":[],"\\udfff":1}', "\\udfff"),
        (b'[{"start":"\\ud800","end":"2030-01-01T01:00:00Z","kw":1,"auction":"a1"}]', "start"),
        (ROW + b'"auction":"a\\ud800"}]', "auction"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_is_a_400_naming_it_and_journaled(
    tmp_path: Path, data: bytes, field: str
) -> None:
    inbox, journal, _ = inbox_on(tmp_path)
    with pytest.raises(ScheduleError) as caught:
        inbox.upload_schedule(data, JSON, by="bob", role="operator", cap_w=10**9)
    assert (caught.value.status, caught.value.field) == (400, field)
    caught.value.detail.encode("utf-8")  # answerable as UTF-8
    [row] = signals(journal)
    assert row[4] == "rejected"
    assert field in row[5]


# -- the book against an upload ------------------------------------------------------------


def book_of(grants: list[tuple[str, datetime, datetime | None]]) -> SignalBook:
    held = {
        gid: Held(Grant(gid, 1, NOW, 1000, start, end), "kegoc", NOW) for gid, start, end in grants
    }
    return SignalBook(held, dict.fromkeys(held, (1, "grant")))


def test_too_many_grants_held_is_a_422(tmp_path: Path) -> None:
    base = NOW + timedelta(days=400)
    book = book_of(
        [(f"g{i}", base + timedelta(hours=i), base + timedelta(hours=i + 1))
         for i in range(MAX_HELD_GRANTS - 1)]
    )  # fmt: skip
    two = parse(
        f"start,end,kw,auction\n{hour(1)},{hour(2)},5,a\n{hour(2)},{hour(3)},5,b\n".encode(),
        CSV,
        now=NOW,
        cap_w=CAP_W,
    )
    with pytest.raises(ScheduleCapacityError) as caught:
        check_held(two, book)
    assert (caught.value.status, caught.value.field) == (422, "rows")
    assert str(MAX_HELD_GRANTS) in caught.value.detail
    check_held(parse(two_rows_one(), CSV, now=NOW, cap_w=CAP_W), book)  # one more fits


def two_rows_one() -> bytes:
    return f"start,end,kw,auction\n{hour(1)},{hour(2)},5,a\n".encode()


SPAN = st.tuples(st.integers(0, 40), st.integers(1, 12))  # (start, length) in quarter hours


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.integers(1, 6), min_size=1, max_size=8),
    held=st.lists(st.tuples(SPAN, st.booleans()), max_size=8),
)
def test_held_overlaps_are_found_as_a_pairwise_check_finds_them(
    rows: list[int], held: list[tuple[tuple[int, int], bool]]
) -> None:
    """Rows back to back (as parse leaves them: never overlapping), held grants anywhere,
    some until cancelled: the index finds exactly the pairs a check of every pair does."""
    q = timedelta(minutes=15)
    spans, at = [], 1
    for length in rows:
        spans.append((at, at + length))
        at += length
    data = "start,end,kw,auction\n" + "".join(
        f"{(NOW + a * q).isoformat()},{(NOW + b * q).isoformat()},5,r{i}\n"
        for i, (a, b) in enumerate(spans)
    )
    got = parse(data.encode(), CSV, now=NOW, cap_w=CAP_W)
    grants = [
        (f"g{i}", NOW + s * q, None if forever else NOW + (s + n) * q)
        for i, ((s, n), forever) in enumerate(held)
    ]
    expect = sorted(
        (r.number, gid)
        for r in got.rows
        for gid, start, end in grants
        if r.start < (end or LATEST) and start < r.end
    )
    if not expect:
        check_held(got, book_of(grants))
        return
    with pytest.raises(ScheduleOverlapError) as caught:
        check_held(got, book_of(grants))
    assert list(caught.value.rows) == sorted({n for n, _ in expect})
    assert list(caught.value.held) == sorted({g for _, g in expect})
