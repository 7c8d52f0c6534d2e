"""The energy account (controller/core/energy.py): on any sequence of meter samples,
allowance changes (grants, cancels, curtailments), gaps and minute boundaries, the parts
add up to the draw, nothing is counted twice or lost across intervals or grants, and
excess is only what was drawn above the allowance after a change's deadline."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.energy import (
    MINUTE,
    Account,
    Allowance,
    Curtailed,
    Deadline,
    Interval,
    gap_intervals,
    metered,
)

START = datetime(2026, 11, 23, 10, 0, 17, 250_000, tzinfo=UTC)
STALE_S = 3.0
HOLD_S = 30.0
TOL_KWH = 1e-9


@dataclass(frozen=True)
class Sample:
    at_s: float
    draw_w: float
    exempt_w: float


@dataclass(frozen=True)
class Cycle:
    at_s: float
    allowance: Allowance
    estimate_w: float | None


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


watts = st.integers(min_value=0, max_value=2_000_000)
# Whole milliseconds: the oracle's float seconds and the account's datetimes agree.
gaps = st.one_of(
    st.integers(0, 2_000),  # meter cadence
    st.integers(2_000, 200_000),  # silences, minute boundaries, gaps
).map(lambda ms: ms / 1000)
millis = st.integers(-60_000, 120_000).map(lambda ms: ms / 1000)


@st.composite
def allowances(draw: st.DrawFn, now_s: float) -> Allowance:
    grants = draw(st.dictionaries(st.sampled_from(["g1", "g2", "g3"]), watts, max_size=3))
    ends = draw(
        st.dictionaries(
            st.sampled_from(sorted(grants) or ["g1"]),
            millis.map(lambda d: at(now_s + abs(d))),
            max_size=len(grants),
        )
    )
    base = draw(st.one_of(st.none(), st.integers(0, 500_000)))
    allowed = draw(watts)
    curtailments = draw(
        st.dictionaries(
            st.sampled_from(["c1", "c2"]),
            st.builds(
                Curtailed,
                st.integers(1, 5),
                watts,
                millis.map(lambda d: at(now_s + d)),
            ),
            max_size=2,
        )
    )
    deadlines = draw(
        st.lists(
            st.tuples(st.sampled_from(["d1", "d2", "d3"]), millis, millis.map(abs)).map(
                lambda ksd: Deadline(ksd[0], at(now_s + ksd[1]), at(now_s + ksd[1] + ksd[2]))
            ),
            max_size=2,
            unique_by=lambda d: d.key,
        )
    )
    ends = {g: t for g, t in ends.items() if g in grants}
    return Allowance(allowed, base, grants, curtailments, tuple(deadlines), ends)


@st.composite
def consistent(draw: st.DrawFn, now_s: float) -> Allowance:
    """An allowance whose grants fit in it (as arbitrate() gives): always-on has none."""
    a = draw(allowances(now_s))
    if a.base_w is None:
        return replace(a, grants={}, grant_ends={})
    return replace(a, allowed_w=max(a.allowed_w, int(sum(a.grants.values()))))


@st.composite
def histories(
    draw: st.DrawFn, *, metered_site: bool = True, fitting: bool = False
) -> list[Sample | Cycle]:
    """`fitting`: every allowance's grants fit in it."""
    events: list[Sample | Cycle] = []
    t = 0.0
    for _ in range(draw(st.integers(1, 30))):
        t += draw(gaps)
        if metered_site and draw(st.booleans()):
            events.append(Sample(t, draw(watts), draw(st.sampled_from([0.0, 1500.0]))))
        else:
            estimate = draw(st.one_of(st.none(), watts.map(float)))
            allowance = draw(consistent(t) if fitting else allowances(t))
            events.append(Cycle(t, allowance, estimate))
    return events


@st.composite
def graced_histories(draw: st.DrawFn) -> list[Sample | Cycle]:
    """Few kW values and few grants, every cycle bringing a deadline of its own (so every
    fall is graced) and grants that fit their allowance: graces overlap grants often."""
    kw = st.sampled_from([0, 1_000, 2_000])
    events: list[Sample | Cycle] = []
    t = 0.0
    for i in range(draw(st.integers(1, 20))):
        t += draw(st.integers(0, 20))
        grants = draw(st.dictionaries(st.sampled_from(["g1", "g2", "g3"]), kw, max_size=2))
        base = draw(kw)
        allowed = sum(grants.values()) + draw(st.integers(0, base))
        due = at(t + draw(st.integers(1, 60)))
        deadline = Deadline(f"k{i}", at(t), due)
        events.append(Sample(t, draw(st.integers(0, 6_000)), 0.0))
        events.append(Cycle(t, Allowance(allowed, base, grants, {}, (deadline,)), None))
    return events


def run(
    events: list[Sample | Cycle], *, stale_s: float | None = STALE_S, end_pad_s: float = 90.0
) -> tuple[list[Interval], Interval, datetime]:
    """Feed every event; return the closed intervals, the last (closed at the end) and
    the end."""
    account = Account(
        start=START, allowance=Allowance(10_000), stale_after_s=stale_s, estimate_hold_s=HOLD_S
    )
    closed: list[Interval] = []
    for e in events:
        if isinstance(e, Sample):
            account.sample(at(e.at_s), e.draw_w, e.exempt_w)
        else:
            account.cycle(at(e.at_s), e.allowance, e.estimate_w)
        closed.extend(account.take())
    end = at((events[-1].at_s if events else 0.0) + end_pad_s)
    *rest, last = account.close(end)
    return [*closed, *rest], last, end


def oracle_kwh(events: list[Sample | Cycle], end: datetime, stale_s: float | None) -> float:
    return oracle(events, end, stale_s)[0]


def oracle(
    events: list[Sample | Cycle], end: datetime, stale_s: float | None
) -> tuple[float, float]:
    """(the draw's integral, the draw above the allowance given) computed directly,
    segment by segment between events: the latest sample while fresh, else the latest
    estimate while it stands, else nothing; against the latest cycle's allowed W (no
    grace: the excess holds only for histories without deadlines or grant ends)."""
    total = over = 0.0
    sample: tuple[float, float] | None = None
    estimate: tuple[float, float] | None = None
    allowed = 10_000.0  # run()'s first allowance
    times = [e.at_s for e in events] + [(end - START).total_seconds()]
    for i, e in enumerate(events):
        if isinstance(e, Sample):
            sample = (e.at_s, e.draw_w)
        else:
            allowed = e.allowance.allowed_w
            if e.estimate_w is not None:
                estimate = (e.at_s, e.estimate_w)
        a, b = e.at_s, times[i + 1]
        metered_until = a
        if stale_s is not None and sample is not None:
            metered_until = min(b, max(a, sample[0] + stale_s))
            total += sample[1] * (metered_until - a)
            over += max(0.0, sample[1] - allowed) * (metered_until - a)
        if estimate is not None:
            est_until = min(b, max(metered_until, estimate[0] + HOLD_S))
            total += estimate[1] * (est_until - metered_until)
            over += max(0.0, estimate[1] - allowed) * (est_until - metered_until)
    return total / 3_600_000, over / 3_600_000


def check_intervals(intervals: list[Interval]) -> None:
    for prev, nxt in itertools.pairwise(intervals):
        assert prev.end == nxt.start  # contiguous: no time twice, none skipped
    for iv in intervals[:-1]:
        assert iv.end.second == 0
        assert iv.end.microsecond == 0
        assert iv.end - iv.start <= MINUTE
    for iv in intervals:
        parts = iv.within_grants_kwh + iv.base_allowance_kwh + iv.excess_kwh
        assert math.isclose(iv.grid_kwh, parts, rel_tol=1e-9, abs_tol=TOL_KWH)
        assert min(iv.within_grants_kwh, iv.excess_kwh, iv.base_allowance_kwh) >= -TOL_KWH
        used = sum(g.used_kwh for g in iv.grants.values())
        assert math.isclose(used, iv.within_grants_kwh, rel_tol=1e-9, abs_tol=TOL_KWH)
        grant_excess = sum(g.excess_kwh for g in iv.grants.values())
        assert grant_excess <= iv.excess_kwh + TOL_KWH
        length = (iv.end - iv.start).total_seconds()
        assert 0 <= iv.gap_s <= length + 1e-6
        assert 0 <= iv.estimated_s <= length + 1e-6


@settings(max_examples=150, deadline=None)
@given(histories())
def test_parts_add_up_and_nothing_is_counted_twice(events: list[Sample | Cycle]) -> None:
    closed, last, end = run(events)
    intervals = [*closed, last]
    check_intervals(intervals)
    assert intervals[0].start == START.replace(second=0, microsecond=0)
    assert last.end == end
    total = sum(iv.grid_kwh for iv in intervals)
    expected = oracle_kwh(events, end, STALE_S)
    assert math.isclose(total, expected, rel_tol=1e-9, abs_tol=TOL_KWH)
    # Each part has its own rule: together they are the integral, not by subtraction.
    parts = sum(iv.within_grants_kwh + iv.base_allowance_kwh + iv.excess_kwh for iv in intervals)
    assert math.isclose(parts, expected, rel_tol=1e-9, abs_tol=TOL_KWH)


def total_excess(events: list[Sample | Cycle]) -> float:
    closed, last, _ = run(events)
    return sum(iv.excess_kwh for iv in [*closed, last])


def without_grace(events: list[Sample | Cycle]) -> list[Sample | Cycle]:
    return [
        replace(e, allowance=replace(e.allowance, deadlines=(), grant_ends={}))
        if isinstance(e, Cycle)
        else e
        for e in events
    ]


@settings(max_examples=100, deadline=None)
@given(histories().map(without_grace))
def test_without_grace_the_excess_is_the_draw_above_the_allowance_given(
    events: list[Sample | Cycle],
) -> None:
    closed, last, end = run(events)
    intervals = [*closed, last]
    check_intervals(intervals)
    grid, over = oracle(events, end, STALE_S)
    assert math.isclose(sum(iv.excess_kwh for iv in intervals), over, rel_tol=1e-9, abs_tol=TOL_KWH)
    inside = sum(iv.within_grants_kwh + iv.base_allowance_kwh for iv in intervals)
    assert math.isclose(inside, grid - over, rel_tol=1e-9, abs_tol=TOL_KWH)


@settings(max_examples=100, deadline=None)
@given(histories(), st.data())
def test_an_unrelated_deadline_running_never_reduces_the_excess(
    events: list[Sample | Cycle], data: st.DataObject
) -> None:
    # A deadline that was already running when the allowance fell did not cause the fall
    # (a grant's own end, say): it graces nothing. It starts at a cycle that changes
    # nothing else, anywhere in the history, and runs past its end.
    k = data.draw(st.integers(0, len(events) - 1))
    unrelated = Deadline("other#r1", at(-3600), at(10**6))
    in_force = next(
        (e.allowance for e in reversed(events[:k]) if isinstance(e, Cycle)), Allowance(10_000)
    )
    plain = [*events[:k], Cycle(events[k].at_s, in_force, None), *events[k:]]

    def alongside(e: Sample | Cycle) -> Sample | Cycle:
        if not isinstance(e, Cycle):
            return e
        return replace(
            e, allowance=replace(e.allowance, deadlines=(*e.allowance.deadlines, unrelated))
        )

    with_it = plain[:k] + [alongside(e) for e in plain[k:]]
    excess = [total_excess(h) for h in (plain, with_it)]
    assert excess[1] >= excess[0] - TOL_KWH


@settings(max_examples=100, deadline=None)
@given(st.one_of(histories(fitting=True), graced_histories()))
def test_the_grants_credited_never_exceed_the_allowance_in_force(
    events: list[Sample | Cycle],
) -> None:
    # Grants given that fit their allowance: whatever the graces, the grants credited in
    # an interval fit in what was allowed in it (a graced grant is never counted beside a
    # grant given since for the same allowance).
    closed, last, _ = run(events)
    for iv in [*closed, last]:
        per_grant = sum(g.granted_kwh for g in iv.grants.values())
        assert math.isclose(per_grant, iv.granted_kwh, rel_tol=1e-9, abs_tol=TOL_KWH)
        assert iv.granted_kwh <= iv.allowed_kwh + TOL_KWH


@settings(max_examples=100, deadline=None)
@given(histories(metered_site=False))
def test_without_a_meter_everything_is_the_fleet_estimate(events: list[Sample | Cycle]) -> None:
    closed, last, end = run(events, stale_s=None)
    intervals = [*closed, last]
    check_intervals(intervals)
    assert {iv.measured_by for iv in intervals} <= {"estimate", "none"}
    total = sum(iv.grid_kwh for iv in intervals)
    assert math.isclose(total, oracle_kwh(events, end, None), rel_tol=1e-9, abs_tol=TOL_KWH)
    for iv in intervals:  # every second is either estimated or not covered at all
        length = (iv.end - iv.start).total_seconds()
        assert math.isclose(iv.estimated_s + iv.gap_s, length, abs_tol=1e-6)


def least(a: Allowance) -> int:
    """The least `a` allows: once every grant with an end has ended, at most its base and
    the grants left."""
    if not a.grant_ends:
        return a.allowed_w
    left = sum(w for g, w in a.grants.items() if g not in a.grant_ends)
    return int(min(a.allowed_w, (a.base_w or 0) + left))


@settings(max_examples=100, deadline=None)
@given(histories(), st.integers(0, 10))
def test_within_the_allowance_there_is_no_excess(
    events: list[Sample | Cycle], headroom_w: int
) -> None:
    # Every draw at or under the least allowance ever in force (after its grants' ends
    # too): never excess.
    floor_w = min([10_000, *(least(e.allowance) for e in events if isinstance(e, Cycle))])
    capped: list[Sample | Cycle] = [
        Sample(e.at_s, min(e.draw_w, floor_w - headroom_w), 0.0)
        if isinstance(e, Sample)
        else Cycle(
            e.at_s,
            e.allowance,
            None if e.estimate_w is None else min(e.estimate_w, floor_w - headroom_w),
        )
        for e in events
    ]
    closed, last, _ = run(capped)
    assert all(iv.excess_kwh == 0 for iv in [*closed, last])


@settings(max_examples=200, deadline=None)
@given(
    high_w=st.integers(10_000, 1_000_000),
    drop=st.floats(0.1, 0.9),
    grace_s=st.floats(1.0, 150.0),
    cadence_s=st.floats(0.2, 2.0),
    grant=st.booleans(),
)
def test_a_lowered_allowance_binds_from_its_deadline_not_before(
    high_w: int, drop: float, grace_s: float, cadence_s: float, grant: bool
) -> None:
    # The farm draws the old allowance; at t=30 the allowance drops (a cancelled grant or
    # a curtailment) with a deadline grace_s later, and the farm obeys only then.
    low_w = int(high_w * drop)
    base = low_w if grant else None  # cancelled, the grant leaves the base allowance
    before = Allowance(high_w, base, {"g1": high_w - low_w} if grant else {})
    changed_at = at(30)
    due = changed_at + timedelta(seconds=grace_s)
    after = Allowance(low_w, base, {}, {}, (Deadline("c1#r1", changed_at, due),))
    account = Account(start=START, allowance=before, stale_after_s=STALE_S)
    account.cycle(START, before, None)
    t = 0.0
    obeyed_at = 30 + grace_s
    while t < obeyed_at + 60:
        draw_w = high_w if t < obeyed_at else low_w
        account.sample(at(t), draw_w)
        if t <= 30 < t + cadence_s:
            account.cycle(changed_at, after, None)
        t += cadence_s
    intervals = account.close(at(t))
    check_intervals(intervals)
    excess = sum(iv.excess_kwh for iv in intervals)
    # The sample read before the deadline is held until the next one: at most one
    # cadence of the old draw lands after the deadline.
    assert excess <= (high_w - low_w) * cadence_s / 3_600_000 + TOL_KWH
    if grant:  # the cancelled grant still carries the draw during its grace
        used = sum(iv.grants["g1"].used_kwh for iv in intervals if "g1" in iv.grants)
        assert used >= (high_w - low_w) * (29 + grace_s - cadence_s) / 3_600_000


def test_a_draw_over_the_new_allowance_after_the_deadline_is_excess() -> None:
    before, after_w = Allowance(100_000), 40_000
    due = at(40)
    after = Allowance(
        after_w, None, {}, {"c1": Curtailed(1, after_w, due)}, (Deadline("c1#r1", at(30), due),)
    )
    account = Account(start=START, allowance=before, stale_after_s=STALE_S)
    for t in range(120):
        account.sample(at(t), 90_000)
        if t == 30:
            account.cycle(at(30), after, None)
    intervals = account.close(at(120))
    check_intervals(intervals)
    expected = 50_000 * (120 - 40) / 3_600_000  # only after the deadline
    assert math.isclose(sum(iv.excess_kwh for iv in intervals), expected, rel_tol=1e-9)
    per_curtailment = sum(c.excess_kwh for iv in intervals for c in iv.curtailments)
    assert math.isclose(per_curtailment, expected, rel_tol=1e-9)
    assert all(iv.measured_by == "meter" for iv in intervals)


def test_a_long_silence_is_a_gap_filled_from_the_estimate_and_marked() -> None:
    account = Account(start=at(-17.25), allowance=Allowance(50_000), stale_after_s=STALE_S)
    account.sample(at(-17.25), 20_000)
    account.cycle(at(0), Allowance(50_000), 18_000.0)
    # No more samples and no cycles: the meter's reading stands STALE_S, the estimate
    # HOLD_S (ESTIMATE_HOLD_S), then nothing.
    account.advance(at(42.75 + 60))
    first, second = account.take()
    assert first.start == START.replace(second=0, microsecond=0)
    assert first.measured_by == "meter+estimate"
    assert math.isclose(first.gap_s, 60 - STALE_S)
    assert math.isclose(first.estimated_s, HOLD_S)  # 14.25 s before the estimate: nothing
    assert math.isclose(first.grid_kwh, (20_000 * STALE_S + 18_000 * HOLD_S) / 3_600_000)
    assert second.measured_by == "none"
    assert second.gap_s == 60
    assert second.grid_kwh == 0


def test_a_restart_gap_is_one_row_per_hour_and_covers_exactly_the_outage() -> None:
    since, until = at(-17.25 + 60 * 2), at(3 * 3600 + 42.75)
    rows = gap_intervals(since.replace(second=0, microsecond=0), until)
    assert len(rows) == 4
    assert all(a.end == b.start for a, b in itertools.pairwise(rows))
    assert all(r.end.minute == 0 for r in rows[:-1])  # cut at hour boundaries
    assert rows[-1].end == until
    assert sum(r.gap_s for r in rows) == (until - rows[0].start).total_seconds()
    assert {r.measured_by for r in rows} == {"none"}


@pytest.mark.parametrize(
    ("exempt", "expected"), [(True, (10_000.0, 3_000.0)), (False, (13_000.0, 0.0))]
)
def test_exempt_generation_is_its_own_column_only_where_the_config_says(
    exempt: bool, expected: tuple[float, float]
) -> None:
    assert metered(10_000.0, 3_000.0, generation_exempt=exempt) == expected
    assert metered(10_000.0, None, generation_exempt=exempt) == (10_000.0, 0.0)


T12 = datetime(2026, 1, 1, 12, tzinfo=UTC)


def test_a_grants_own_end_is_not_graced_by_a_curtailment_running_beside_it() -> None:
    # Base 1 MW + a 3 MW grant until 12:03; the farm draws 3.5 MW throughout. A curtailment
    # to 3.5 MW (deadline 12:10) running beside it does not carry the grant past its end:
    # from 12:03 the 2.5 MW above the base is excess either way.
    end = T12 + timedelta(minutes=3)
    ends = {"G": end}

    def excess(curtailed: bool) -> float:
        deadlines = (Deadline("C#r1", T12, T12 + timedelta(minutes=10)),) if curtailed else ()
        granted = Allowance(4_000_000, 1_000_000, {"G": 3_000_000}, grant_ends=ends)
        account = Account(start=T12, allowance=granted, stale_after_s=5)
        for s in range(8 * 60):
            t = T12 + timedelta(seconds=s)
            account.sample(t, 3_500_000)
            if t < end:
                allowed = 3_500_000 if curtailed else 4_000_000
                allowance = replace(granted, allowed_w=allowed, deadlines=deadlines)
            else:
                allowance = Allowance(1_000_000, 1_000_000, {}, deadlines=deadlines)
            account.cycle(t, allowance, None)
        return sum(iv.excess_kwh for iv in account.close(T12 + timedelta(minutes=8)))

    expected = 2_500_000 * 5 * 60 / 3_600_000
    assert math.isclose(excess(curtailed=False), expected, rel_tol=1e-9)
    assert math.isclose(excess(curtailed=True), expected, rel_tol=1e-9)


def test_a_grant_given_during_a_cancelled_grants_grace_is_not_counted_twice() -> None:
    # G1 (1 MW) is cancelled at :30 (deadline :40); G2 (1 MW) is given at :32. From :32 the
    # allowance in force is G2's: the graced G1 adds nothing above it.
    def s(n: float) -> datetime:
        return T12 + timedelta(seconds=n)

    cancel = (Deadline("G1#r2", s(30), s(40)),)
    account = Account(
        start=T12, allowance=Allowance(1_000_000, 0, {"G1": 1_000_000}), stale_after_s=5
    )
    for n in range(60):
        account.sample(s(n), 1_000_000)
        if n < 30:
            allowance = Allowance(1_000_000, 0, {"G1": 1_000_000})
        elif n < 32:
            allowance = Allowance(0, 0, {}, deadlines=cancel)
        else:
            allowance = Allowance(
                1_000_000, 0, {"G2": 1_000_000}, deadlines=cancel if n < 40 else ()
            )
        account.cycle(s(n), allowance, None)
    [iv] = account.close(s(60))
    wh = 1_000_000 / 3_600_000  # kWh per second at 1 MW
    assert math.isclose(iv.allowed_kwh, 60 * wh, rel_tol=1e-9)
    assert math.isclose(iv.granted_kwh, 60 * wh, rel_tol=1e-9)
    assert math.isclose(iv.grants["G1"].granted_kwh, 32 * wh, rel_tol=1e-9)
    assert math.isclose(iv.grants["G2"].granted_kwh, 28 * wh, rel_tol=1e-9)
    assert math.isclose(iv.grants["G1"].used_kwh, 32 * wh, rel_tol=1e-9)
    assert math.isclose(iv.grants["G2"].used_kwh, 28 * wh, rel_tol=1e-9)
    assert iv.excess_kwh == 0


@pytest.mark.parametrize("graced", [True, False])
def test_a_restart_during_a_grace_keeps_it_until_the_deadline(graced: bool) -> None:
    # Restarted at 12:05 inside a curtailment's grace (12:00 -> 12:10, 4 MW -> 1 MW); the
    # farm still draws 4 MW until 12:08, then 1 MW. Given the allowance before the fall
    # (the loop reads it from the journal), nothing is excess before the deadline.
    def m(n: float) -> datetime:
        return T12 + timedelta(minutes=n)

    before = Allowance(4_000_000, 1_000_000, {"G": 3_000_000})
    after = Allowance(1_000_000, 1_000_000, {}, deadlines=(Deadline("C#r1", m(0), m(10)),))
    account = Account(
        start=m(5), allowance=after, stale_after_s=5, graced=before if graced else None
    )
    for n in range(10 * 60):
        t = m(5) + timedelta(seconds=n)
        account.sample(t, 4_000_000 if t < m(8) else 1_000_000)
        account.cycle(t, after, None)
    intervals = account.close(m(15))
    check_intervals(intervals)
    excess = sum(iv.excess_kwh for iv in intervals)
    assert math.isclose(excess, 0 if graced else 3_000_000 * 3 * 60 / 3_600_000, abs_tol=TOL_KWH)
    if graced:  # the grant the grace kept carried the draw above the base
        used = sum(iv.grants["G"].used_kwh for iv in intervals if "G" in iv.grants)
        assert math.isclose(used, 3_000_000 * 3 * 60 / 3_600_000, rel_tol=1e-9)
