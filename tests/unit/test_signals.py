"""Signal book semantics, arbitrate() and deadline obligations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.core.signals import (
    Cancel,
    Curtailment,
    Grant,
    GridMode,
    GridPolicy,
    ObligationStatus,
    Override,
    SignalBook,
    SourcePolicy,
    StalePolicy,
    Verdict,
    arbitrate,
    grant_end_obligations,
    obligation_for,
    track,
    withdraw,
)

T0 = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
POLICY = GridPolicy(GridMode.ALWAYS_ON, cap_w=5_000_000, base_allowance_w=200_000)
SURPLUS = GridPolicy(
    GridMode.SURPLUS_ONLY,
    cap_w=5_000_000,
    base_allowance_w=200_000,
    grant_end_lead=timedelta(seconds=15),
    response_deadline=timedelta(seconds=10),
)
HEARD: dict[str, datetime] = {}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def curtail(rev: int = 1, limit_w: int = 1_200_000, **kw: object) -> Curtailment:
    return Curtailment("evt-0017", rev, T0, limit_w, 10.0, **kw)  # type: ignore[arg-type]


def grant(
    gid: str = "korem-h10",
    rev: int = 1,
    granted_w: int = 3_000_000,
    start: float = 0,
    end: float = 3600,
) -> Grant:
    return Grant(gid, rev, T0, granted_w, at(start), at(end))


def test_book_same_pair_is_duplicate_and_changes_nothing() -> None:
    book = SignalBook().admit(curtail(), "kegoc", T0).book
    again = book.admit(curtail(limit_w=5), "kegoc", at(1))
    assert again.verdict is Verdict.DUPLICATE
    assert again.book is book


def test_book_lower_revision_is_stale() -> None:
    book = SignalBook().admit(curtail(rev=3), "kegoc", T0).book
    stale = book.admit(curtail(rev=2), "kegoc", at(1))
    assert stale.verdict is Verdict.STALE
    assert "older than revision 3" in stale.detail
    assert stale.book.held["evt-0017"].signal.revision == 3


def test_book_higher_revision_replaces() -> None:
    book = SignalBook().admit(curtail(), "kegoc", T0).book
    result = book.admit(curtail(rev=2, limit_w=800_000), "kegoc", at(3))
    assert result.verdict is Verdict.RECEIVED
    assert result.replaced is not None
    assert result.replaced.signal.revision == 1
    assert result.book.held["evt-0017"].signal.limit_w == 800_000  # type: ignore[union-attr]


def test_book_cancel_withdraws_and_later_replays_are_stale() -> None:
    book = SignalBook().admit(curtail(), "kegoc", T0).book
    result = book.admit(Cancel("evt-0017", 2, T0), "kegoc", at(5))
    assert result.verdict is Verdict.RECEIVED
    assert "evt-0017" not in result.book.held
    assert result.book.admit(curtail(rev=1), "kegoc", at(6)).verdict is Verdict.STALE
    assert result.book.admit(Cancel("evt-0017", 2, T0), "kegoc", at(7)).verdict is Verdict.DUPLICATE


def test_book_cancel_that_overtakes_its_signal_still_wins() -> None:
    book = SignalBook().admit(Cancel("evt-0017", 2, T0), "kegoc", T0).book
    late = book.admit(curtail(rev=1), "kegoc", at(1))
    assert late.verdict is Verdict.STALE
    assert "evt-0017" not in late.book.held


def test_book_refuses_a_type_change() -> None:
    book = SignalBook().admit(curtail(), "kegoc", T0).book
    cancelled = book.admit(Cancel("evt-0017", 2, T0), "kegoc", at(1)).book
    for b in (book, cancelled):
        result = b.admit(Grant("evt-0017", 3, T0, 1, None, None), "kegoc", at(2))
        assert result.verdict is Verdict.REJECTED
        assert "is a curtailment" in result.detail


def test_book_prune_forgets_ended_signals_but_not_their_revisions() -> None:
    book = SignalBook().admit(grant(end=60), "kegoc", T0).book
    pruned = book.prune(at(60 + 301))
    assert "korem-h10" not in pruned.held
    assert pruned.admit(grant(end=60), "kegoc", at(400)).verdict is Verdict.DUPLICATE


def test_arbitrate_always_on_is_the_cap_without_signals() -> None:
    limit = arbitrate(SignalBook(), POLICY, T0, last_heard=HEARD)
    assert limit.limit_w == 5_000_000
    assert limit.reasons == ("site cap: 5000 kW",)


def test_arbitrate_curtailment_applies_from_start_to_end() -> None:
    book = SignalBook().admit(curtail(start=at(60), end=at(120)), "kegoc", T0).book
    assert arbitrate(book, POLICY, at(59), last_heard=HEARD).limit_w == 5_000_000
    limit = arbitrate(book, POLICY, at(60), last_heard=HEARD)
    assert limit.limit_w == 1_200_000
    assert limit.reasons == ("curtailment evt-0017 r1: 1200 kW",)
    assert arbitrate(book, POLICY, at(120), last_heard=HEARD).limit_w == 5_000_000


def test_arbitrate_surplus_only_base_allowance_without_grants() -> None:
    limit = arbitrate(SignalBook(), SURPLUS, T0, last_heard=HEARD)
    assert limit.limit_w == 200_000
    assert "no active grant" in limit.reasons[0]


def test_arbitrate_surplus_only_sums_grants_and_ends_them_early() -> None:
    book = SignalBook().admit(grant(), "kegoc", T0).book
    book = book.admit(grant("korem-h10b", granted_w=500_000), "kegoc", T0).book
    assert arbitrate(book, SURPLUS, at(10), last_heard=HEARD).limit_w == 3_700_000
    # 15 s before the grants end the limit is already back to the base allowance.
    assert arbitrate(book, SURPLUS, at(3600 - 15), last_heard=HEARD).limit_w == 200_000


def test_arbitrate_cancelled_grant_drops_to_base_allowance() -> None:
    book = SignalBook().admit(grant(), "kegoc", T0).book
    book = book.admit(Cancel("korem-h10", 2, at(30)), "kegoc", at(30)).book
    assert arbitrate(book, SURPLUS, at(31), last_heard=HEARD).limit_w == 200_000


def test_arbitrate_minimum_of_everything_and_overrides_only_tighten() -> None:
    book = SignalBook().admit(grant(), "kegoc", T0).book
    book = book.admit(curtail(limit_w=900_000), "kegoc", T0).book
    loose = Override("ovr-1", 4_000_000, "maintenance", "alice")
    tight = Override("ovr-2", 700_000, "transformer hot", "bob", expires_at=at(100))
    limit = arbitrate(book, SURPLUS, at(10), last_heard=HEARD, overrides=[loose, tight])
    assert limit.limit_w == 700_000
    assert limit.reasons == ("override ovr-2 by bob: transformer hot: 700 kW",)
    assert (
        arbitrate(book, SURPLUS, at(100), last_heard=HEARD, overrides=[loose, tight]).limit_w
        == 900_000
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (StalePolicy.HOLD, 5_000_000),
        (StalePolicy.BASE_ALLOWANCE, 200_000),
        (StalePolicy.LIMIT, 50_000),
    ],
)
def test_arbitrate_silent_source_falls_back(policy: StalePolicy, expected: int) -> None:
    source = SourcePolicy("kegoc", timedelta(seconds=120), policy, stale_limit_w=50_000)
    grid = GridPolicy(GridMode.ALWAYS_ON, 5_000_000, 200_000, sources=(source,))
    heard = {"kegoc": T0}
    assert arbitrate(SignalBook(), grid, at(119), last_heard=heard).limit_w == 5_000_000
    limit = arbitrate(SignalBook(), grid, at(121), last_heard=heard)
    assert limit.limit_w == expected
    if policy is not StalePolicy.HOLD:
        assert "silent for 121 s" in limit.reasons[0]


def test_obligation_for_curtailment_counts_from_start_or_receipt() -> None:
    admission = SignalBook().admit(curtail(), "kegoc", T0)
    ob = obligation_for(admission, curtail(), POLICY, T0, last_heard=HEARD)
    assert ob is not None
    assert (ob.limit_w, ob.starts_at, ob.due_at) == (1_200_000, T0, at(10))
    later = curtail(start=at(300))
    ob2 = obligation_for(
        SignalBook().admit(later, "kegoc", T0), later, POLICY, T0, last_heard=HEARD
    )
    assert ob2 is not None
    assert ob2.due_at == at(310)


def test_obligation_for_cancelled_grant_uses_response_deadline() -> None:
    book = SignalBook().admit(grant(), "kegoc", T0).book
    cancel = Cancel("korem-h10", 2, at(30))
    admission = book.admit(cancel, "kegoc", at(30))
    ob = obligation_for(admission, cancel, SURPLUS, at(30), last_heard=HEARD)
    assert ob is not None
    assert (ob.kind, ob.limit_w, ob.due_at) == ("cancel", 200_000, at(40))


def test_obligation_none_for_duplicates() -> None:
    book = SignalBook().admit(curtail(), "kegoc", T0).book
    dup = book.admit(curtail(), "kegoc", T0)
    assert obligation_for(dup, curtail(), POLICY, T0, last_heard=HEARD) is None


def test_grant_end_obligation_appears_in_the_lead_window_once() -> None:
    book = SignalBook().admit(grant(end=600), "kegoc", T0).book
    assert grant_end_obligations(book, SURPLUS, at(584), [], last_heard=HEARD) == []
    [ob] = grant_end_obligations(book, SURPLUS, at(585), [], last_heard=HEARD)
    assert (ob.key, ob.kind, ob.limit_w, ob.due_at) == (
        "korem-h10#r1#end",
        "grant-end",
        200_000,
        at(600),
    )
    assert grant_end_obligations(book, SURPLUS, at(590), [ob.key], last_heard=HEARD) == []


def test_track_reaches_misses_and_waits_for_start() -> None:
    book = SignalBook()
    c1 = curtail()
    ob = obligation_for(book.admit(c1, "kegoc", T0), c1, POLICY, T0, last_heard=HEARD)
    c2 = curtail(start=at(100))
    ob_later = obligation_for(SignalBook().admit(c2, "kegoc", T0), c2, POLICY, T0, last_heard=HEARD)
    assert ob is not None
    assert ob_later is not None
    obs, changed = track([ob, ob_later], 2_000_000, at(5))
    assert changed == []
    obs, changed = track(obs, 1_100_000, at(6))
    assert [o.status for o in obs] == [ObligationStatus.REACHED, ObligationStatus.PENDING]
    assert changed[0].time_to_target_s == 6.0
    obs, changed = track(obs[1:], 2_000_000, at(111))
    assert changed[0].status is ObligationStatus.MISSED
    assert changed[0].measured_w == 2_000_000


def test_withdraw_only_pending_obligations_of_that_signal() -> None:
    c = curtail()
    ob = obligation_for(SignalBook().admit(c, "kegoc", T0), c, POLICY, T0, last_heard=HEARD)
    assert ob is not None
    obs, changed = withdraw([ob], "evt-0017")
    assert obs[0].status is ObligationStatus.WITHDRAWN
    assert changed == obs
    assert withdraw([ob], "other")[1] == []


def test_arbitrate_back_to_back_grants_hand_over_without_a_dip() -> None:
    book = SignalBook().admit(grant("h10", granted_w=3_000_000, end=40), "kegoc", T0).book
    book = book.admit(grant("h11", granted_w=4_000_000, start=40, end=3640), "kegoc", T0).book
    for t in (0, 25, 30, 39):  # 25-40 is h10's lead window; h11 takes over at 40
        assert arbitrate(book, SURPLUS, at(t), last_heard=HEARD).limit_w == 3_200_000
    assert arbitrate(book, SURPLUS, at(40), last_heard=HEARD).limit_w == 4_200_000


def test_arbitrate_smaller_next_grant_applies_a_lead_early() -> None:
    book = SignalBook().admit(grant("h10", granted_w=3_000_000, end=40), "kegoc", T0).book
    book = book.admit(grant("h11", granted_w=1_000_000, start=40, end=3640), "kegoc", T0).book
    assert arbitrate(book, SURPLUS, at(24), last_heard=HEARD).limit_w == 3_200_000
    limit = arbitrate(book, SURPLUS, at(26), last_heard=HEARD)
    assert limit.limit_w == 1_200_000
    assert "(from 05:00:40)" in limit.reasons[0]


def test_arbitrate_a_gap_between_grants_is_honoured() -> None:
    book = SignalBook().admit(grant("h10", end=40), "kegoc", T0).book
    book = book.admit(grant("h11", start=41, end=3640), "kegoc", T0).book
    assert arbitrate(book, SURPLUS, at(26), last_heard=HEARD).limit_w == 200_000


def test_withdraw_covers_every_pending_promise_of_the_signal() -> None:
    book = SignalBook().admit(grant(end=600), "kegoc", T0).book
    [end] = grant_end_obligations(book, SURPLUS, at(590), [], last_heard=HEARD)
    assert end.key == "korem-h10#r1#end"
    obs, changed = withdraw([end], "korem-h10")
    assert changed[0].status is ObligationStatus.WITHDRAWN
    assert obs[0].status is ObligationStatus.WITHDRAWN
