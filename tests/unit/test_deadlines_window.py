"""A schedule's deadlines in one pass: each row's obligation judged on the few signals
near its start is exactly the obligation a whole-book arbitration gives, and absorbing an
uploaded schedule journals one obligation per row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.clock import FakeClock
from controller.core.signals import (
    Admission,
    Curtailment,
    Grant,
    GridMode,
    GridPolicy,
    Held,
    SignalBook,
    Verdict,
    obligation_for,
)
from controller.intake.inbox import Inbox
from controller.loop.deadlines import Deadlines, Window
from controller.record.journal import Journal
from controller.record.publish import Recorder

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POLICY = GridPolicy(GridMode.SURPLUS_ONLY, cap_w=5_000_000, base_allowance_w=100_000)
Q = timedelta(minutes=15)

# (start, length) in quarter hours from NOW; length None: until cancelled; kind
SIGNAL = st.tuples(
    st.integers(-8, 200),
    st.one_of(st.none(), st.integers(1, 8), st.integers(90, 140)),
    st.sampled_from(["grant", "curtailment"]),
    st.integers(1, 3000),
)


def book_of(signals: list[tuple[int, int | None, str, int]]) -> SignalBook:
    held: dict[str, Held] = {}
    for i, (start, length, kind, kw) in enumerate(signals):
        begin = NOW + start * Q
        end = None if length is None else begin + length * Q
        sid = f"s{i}"
        signal = (
            Grant(sid, 1, NOW, kw * 1000, begin, end)
            if kind == "grant"
            else Curtailment(sid, 1, NOW, kw * 1000, 30.0, begin, end)
        )
        held[sid] = Held(signal, "kegoc", NOW)
    return SignalBook(held, {k: (1, h.signal.kind) for k, h in held.items()})


@settings(max_examples=150, deadline=None)
@given(
    signals=st.lists(SIGNAL, min_size=1, max_size=25),
    now_q=st.integers(-4, 60),
    lead_s=st.integers(0, 4000),
)
def test_window_gives_each_grant_the_obligation_the_whole_book_gives(
    signals: list[tuple[int, int | None, str, int]], now_q: int, lead_s: int
) -> None:
    book = book_of(signals)
    policy = GridPolicy(
        GridMode.SURPLUS_ONLY,
        cap_w=5_000_000,
        base_allowance_w=100_000,
        grant_end_lead=timedelta(seconds=lead_s),
    )
    now = NOW + now_q * Q
    window = Window(book)
    for held in book.held.values():
        grant = held.signal
        if not isinstance(grant, Grant):
            continue
        admission = Admission(Verdict.RECEIVED, "new", book)
        whole = obligation_for(admission, grant, policy, now, last_heard={})
        near = obligation_for(
            window.around(admission, grant, now, policy), grant, policy, now, last_heard={}
        )
        assert near == whole


def test_absorb_an_uploaded_schedule_gives_one_obligation_per_row(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    inbox = Inbox(
        journal=journal,
        clock=FakeClock(NOW),
        keys={"kegoc": b"k"},
        replay_window_s=30,
        book=SignalBook(),
        publisher=Recorder(),
    )
    rows = "".join(
        f"{(NOW + i * Q).isoformat()},{(NOW + (i + 1) * Q).isoformat()},{100 + i},r{i}\n"
        for i in range(40)
    )
    inbox.upload_schedule(
        ("start,end,kw,auction\n" + rows).encode(),
        "text/csv",
        by="alice",
        role="operator",
        cap_w=POLICY.cap_w,
    )
    deadlines = Deadlines(
        inbox=inbox,
        journal=journal,
        publisher=Recorder(),
        policy=POLICY,
        pending=(),
        known_keys=set(),
    )
    expected = [
        obligation_for(a.admission, a.signal, POLICY, a.received_at, last_heard={})
        for a in inbox.admitted
    ]
    deadlines.absorb(inbox.admitted, "meter")
    assert deadlines.pending == expected
    assert len(journal.obligations()) == 40
    # Each row's limit is its own award plus the base allowance (back to back: no dip).
    assert [o.limit_w for o in deadlines.pending[1:]] == [
        100_000 + (100 + i) * 1000 for i in range(1, 40)
    ]
