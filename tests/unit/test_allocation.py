"""The allocation against brute force on small fleets, and its way from the current
settings to the target: hysteresis, bounded changes, an order that never overshoots."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from controller.core.allocation import Allocation, MinerChoice, allocate
from controller.core.curves import ASLEEP, Curve, Setting, upper_hull


def brute(miners: Sequence[MinerChoice], allowed_w: float) -> float | None:
    """The best total hashrate within `allowed_w`, every combination tried (None: none fits)."""
    options = [m.allowed if m.allowed is not None else range(len(m.curve.settings)) for m in miners]
    best: float | None = None
    for combo in itertools.product(*options):
        s = [m.curve.settings[i] for m, i in zip(miners, combo, strict=True)]
        if sum(x.power_w for x in s) <= allowed_w + 1e-9:
            ths = sum(x.hashrate_ths for x in s)
            best = ths if best is None else max(best, ths)
    return best


def bound(miners: Sequence[MinerChoice]) -> float:
    """The largest single hull upgrade of any miner: what the greedy may leave on the table."""
    worst = 0.0
    for m in miners:
        s = m.curve.settings
        hull = upper_hull(s, m.allowed)
        for a, b in itertools.pairwise(hull):
            worst = max(worst, s[b].hashrate_ths - s[a].hashrate_ths)
    return worst


def power(miners: Sequence[MinerChoice], chosen: Sequence[int]) -> float:
    return sum(m.curve.settings[i].power_w for m, i in zip(miners, chosen, strict=True))


@st.composite
def curves(draw: st.DrawFn) -> Curve:
    sleep = draw(st.integers(0, 60))
    n = draw(st.integers(1, 4))
    steps = [
        Setting(f"s{k}", draw(st.integers(100, 4000)), draw(st.floats(1, 150))) for k in range(n)
    ]
    return Curve((Setting(ASLEEP, sleep, 0.0), *steps))


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[MinerChoice], float]:
    shared = draw(st.lists(curves(), min_size=1, max_size=3))
    miners = []
    for k in range(draw(st.integers(1, 6))):
        curve = draw(st.sampled_from(shared)) if draw(st.booleans()) else draw(curves())
        size = len(curve.settings)
        current = draw(st.integers(0, size - 1))
        kind = draw(st.sampled_from(["free", "free", "pinned", "subset"]))
        allowed: tuple[int, ...] | None = None
        if kind == "pinned":
            allowed = (draw(st.integers(0, size - 1)),)
        elif kind == "subset":
            allowed = tuple(
                sorted(draw(st.sets(st.integers(0, size - 1), min_size=1, max_size=size)))
            )
        miners.append(MinerChoice(f"m{k}", curve, current, allowed))
    top = sum(max(s.power_w for s in m.curve.settings) for m in miners)
    return miners, draw(st.floats(0, top * 1.1))


@settings(max_examples=300, deadline=None)
@given(fleets())
def test_greedy_is_feasible_respects_pins_and_is_within_its_bound(
    fleet: tuple[list[MinerChoice], float],
) -> None:
    miners, allowed_w = fleet
    plan = allocate(miners, allowed_w, hysteresis=0.0)
    for m, t in zip(miners, plan.target, strict=True):
        assert m.allowed is None or t in m.allowed
    best = brute(miners, allowed_w)
    assert plan.feasible == (best is not None)
    if best is None:
        return
    assert plan.target_w == pytest.approx(power(miners, plan.target))
    assert plan.target_w <= allowed_w + 1e-6
    assert plan.target_ths <= best + 1e-6
    assert plan.target_ths >= best - bound(miners) - 1e-6


@st.composite
def unit_fleets(draw: st.DrawFn) -> tuple[list[MinerChoice], float]:
    """Concave curves whose every step, the wake included, draws the same `unit` watts:
    integer resource allocation, where the greedy walk is exact."""
    unit = draw(st.integers(100, 1000))
    miners = []
    for k in range(draw(st.integers(1, 6))):
        gains = sorted(draw(st.lists(st.floats(1, 100), min_size=1, max_size=4)), reverse=True)
        ths = list(itertools.accumulate(gains))
        steps = [Setting(f"s{j}", unit * (j + 1), h) for j, h in enumerate(ths)]
        curve = Curve((Setting(ASLEEP, 0, 0.0), *steps))
        miners.append(MinerChoice(f"m{k}", curve, draw(st.integers(0, len(steps)))))
    return miners, draw(st.floats(0, unit * 5 * len(miners)))


@settings(max_examples=300, deadline=None)
@given(unit_fleets())
@example(  # a budget a rounding short of a wake's draw: the wake still fits
    (
        [MinerChoice("m0", Curve((Setting(ASLEEP, 0, 0.0), Setting("s0", 100, 1.0))), 0)],
        99.99999999999999,
    )
)
def test_greedy_equals_brute_force_on_concave_unit_curves(
    fleet: tuple[list[MinerChoice], float],
) -> None:
    miners, allowed_w = fleet
    plan = allocate(miners, allowed_w, hysteresis=0.0)
    best = brute(miners, allowed_w)
    assert best is not None
    assert plan.target_ths == pytest.approx(best, abs=1e-6)


def apply(miners: list[MinerChoice], plan: Allocation) -> list[MinerChoice]:
    by_id = {mv.miner_id: mv for mv in plan.moves}
    return [
        m._replace(current=by_id[m.miner_id].to_index) if m.miner_id in by_id else m for m in miners
    ]


@settings(max_examples=200, deadline=None)
@given(fleets(), st.integers(1, 3))
def test_moves_never_overshoot_and_converge(
    fleet: tuple[list[MinerChoice], float], per_call: int
) -> None:
    miners, allowed_w = fleet
    first = allocate(miners, allowed_w, hysteresis=0.0)
    if not first.feasible:
        return
    for _ in range(20):  # 6 miners, at least one change a call: converged well before
        plan = allocate(miners, allowed_w, hysteresis=0.0, max_changes=per_call)
        assert len(plan.moves) <= per_call
        within = plan.current_w <= allowed_w + 1e-6
        draw = plan.current_w
        for mv in plan.moves:
            draw += mv.delta_w
            if within:  # started within the limit: every prefix stays within it
                assert draw <= allowed_w + 1e-6
            assert mv.reason.startswith("retune: ")
        if not plan.moves:
            break
        miners = apply(miners, plan)
    final = allocate(miners, allowed_w, hysteresis=0.0)
    assert final.held  # converged: the target, or a current allocation at least as good
    assert final.current_ths >= first.target_ths - 1e-6
    assert final.current_w <= allowed_w + 1e-6
    assert all(m.allowed is None or m.current in m.allowed for m in miners)


def luxos_like() -> Curve:
    return Curve(
        (
            Setting(ASLEEP, 25, 0.0),
            Setting("low", 2210, 81.6),
            Setting("mid", 2730, 96.0),
            Setting("default", 3250, 110.0),
        )
    )


def test_a_cap_runs_many_miners_low_rather_than_sleeping_some() -> None:
    curve = luxos_like()
    miners = [MinerChoice(f"m{k}", curve, 3) for k in range(100)]
    plan = allocate(miners, 0.6 * 100 * 3250)
    by_setting = [plan.target.count(i) for i in range(4)]
    assert by_setting[3] == 0  # nobody at rated under a 60 % cap
    assert by_setting[1] + by_setting[2] >= 85
    sleep_only = 60 * 110.0  # sixty at rated, forty asleep: what shedding alone keeps
    assert plan.target_ths > sleep_only * 1.08
    assert plan.feasible
    assert not plan.held


def test_hysteresis_holds_a_near_optimal_fleet_still() -> None:
    curve = luxos_like()
    miners = [MinerChoice(f"m{k}", curve, 2) for k in range(10)]  # all at mid
    plan = allocate(miners, 10 * 2730 + 600, hysteresis=0.02)  # room for one more step
    assert plan.held
    assert plan.moves == ()
    assert plan.target_ths > plan.current_ths  # the gain exists but is too small to chase
    moved = allocate(miners, 10 * 2730 + 600, hysteresis=0.0)
    assert [mv.to_index for mv in moved.moves] == [3]


def test_over_the_limit_it_lowers_first_and_pins_hold() -> None:
    curve = luxos_like()
    miners = [MinerChoice(f"m{k}", curve, 3) for k in range(4)]
    miners[0] = miners[0]._replace(allowed=(3,))  # an operator holds it at default
    plan = allocate(miners, 3250 + 3 * 2210, max_changes=2)
    assert plan.target[0] == 3
    assert [mv.delta_w < 0 for mv in plan.moves] == [True, True]
    assert all(mv.miner_id != "m0" for mv in plan.moves)


def test_infeasible_leaves_every_free_miner_at_its_lowest_draw() -> None:
    curve = luxos_like()
    miners = [MinerChoice("m0", curve, 3, (3,)), MinerChoice("m1", curve, 3)]
    plan = allocate(miners, 3000)
    assert not plan.feasible
    assert plan.target == (3, 0)


def test_bad_indices_are_named() -> None:
    curve = luxos_like()
    with pytest.raises(ValueError, match="m7: current setting 9"):
        allocate([MinerChoice("m7", curve, 9)], 1000)
    with pytest.raises(ValueError, match="m7: allowed settings"):
        allocate([MinerChoice("m7", curve, 0, (5,))], 1000)


def test_a_point_on_the_chord_by_rounding_stays_on_the_hull() -> None:
    """Found by the brute-force property: gains of 50 summed in floats leave B's s1 a hair
    under its chord. Dropped from the hull, B's last 50 TH/s came as one 2-unit upgrade
    that no longer fit, and A's 1 TH/s step took the unit instead."""
    unit = 261
    a = Curve((Setting(ASLEEP, 0, 0.0), *(
        Setting(f"s{j}", unit * (j + 1), h) for j, h in enumerate((100.0, 150.0, 200.0, 201.0))
    )))  # fmt: skip
    b_ths = list(itertools.accumulate((96.98496898509582, 50.0, 50.0, 1.0)))
    b = Curve((Setting(ASLEEP, 0, 0.0), *(
        Setting(f"s{j}", unit * (j + 1), h) for j, h in enumerate(b_ths)
    )))  # fmt: skip
    miners = [MinerChoice("a", a, 4), MinerChoice("b", b, 0)]
    plan = allocate(miners, 5 * unit, hysteresis=0.0)
    best = brute(miners, 5 * unit)
    assert best is not None
    assert plan.target_ths == pytest.approx(best, abs=1e-6)
    assert plan.target_w <= 5 * unit
