"""The allocation in the plan (core/tuning.py): deadlines first, then moves toward the most
hashrate the budget holds, bounded, within the wake rate limits, never over the budget,
and only for the miners it manages."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.allocation import sleep_only
from controller.core.curves import Curve, nominal_w, seed_curve
from controller.core.escalation import target_lost
from controller.core.model import (
    Action,
    ActionKind,
    Horizon,
    Limit,
    MinerSpec,
    MinerView,
    Plan,
    PlanRules,
    Snapshot,
    Tuning,
    estimate_w,
)
from controller.core.operator import Automation, operator_steps
from controller.core.planner import over_the_limit, plan
from controller.core.planning import Fleet
from controller.core.safety import ColdRules, Safety
from controller.core.tuning import (
    FREE,
    HELD_AFTER_SHED,
    Shapes,
    _choices,
    _Judge,
    current_index,
    expected_ths,
)
from drivers.miners.braiins_os.driver import TRAITS as BRAIINS
from drivers.miners.luxos import TRAITS as LUXOS
from drivers.miners.whatsminer.dialect import TRAITS as WHATSMINER
from drivers.types import DriverTraits, MinerReading, Mode

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(hours=1)
TUNING = Tuning(hysteresis=0.01, max_changes=1000, dwell=timedelta(minutes=5))
RULES = PlanRules(
    margin_w=0,
    wake_headroom_w=0,
    wake_max_per_window=1000,
    wake_max_w_per_window=10_000_000,
    tuning=TUNING,
)
STALE = timedelta(seconds=15)


def spec(
    i: int, traits: DriverTraits = LUXOS, eff: float = 21.5, container: str = "c1"
) -> MinerSpec:
    driver = {id(LUXOS): "luxos", id(BRAIINS): "braiins-os"}.get(id(traits), "whatsminer")
    return MinerSpec(f"m{i:03d}", driver, container, 3250, eff, traits)


def seeded(specs: list[MinerSpec]) -> dict[str, Curve]:
    """One curve per model, shared, as the loop's CurveBook keeps them."""
    by_model: dict[tuple[str, float], Curve] = {}
    found = {}
    for s in specs:
        key = (s.driver, s.efficiency_j_th)
        if key not in by_model:
            by_model[key] = seed_curve(s)
        found[s.id] = by_model[key]
    return found


def at_setting(s: MinerSpec, curve: Curve, index: int, *, since: datetime = LONG_AGO) -> MinerView:
    """A miner read just now at one of its curve's settings, settled there."""
    setting = curve.settings[index]
    mode = Mode.SLEEPING if index == 0 else Mode.MINING
    reading = MinerReading(mode, round(setting.power_w), setting.hashrate_ths, (60.0,))
    top = len(curve.settings) - 1
    target = None if index in (0, top) else nominal_w(setting)
    return MinerView(
        s, reading, NOW - timedelta(seconds=1), mode_since=since, target_w=target, tuned_at=None
    )


def fleet_at(specs: list[MinerSpec], curves: dict[str, Curve], index: int) -> list[MinerView]:
    return [at_setting(s, curves[s.id], index) for s in specs]


def snapshot(views: list[MinerView], curves: dict[str, Curve] | None, **kw: object) -> Snapshot:
    return Snapshot(NOW, tuple(views), curves=curves, **kw)  # type: ignore[arg-type]


def land(views: list[MinerView], result: Plan, curves: dict[str, Curve]) -> list[MinerView]:
    """Every action landed and settled: each miner read at its new setting."""
    by_id = {a.miner_id: a for a in result.actions}
    landed = []
    for view in views:
        action = by_id.get(view.spec.id)
        if action is None:
            landed.append(view)
            continue
        curve = curves[view.spec.id]
        if action.kind is ActionKind.SLEEP:
            landed.append(replace(at_setting(view.spec, curve, 0), target_w=view.target_w))
            continue
        if action.kind is ActionKind.WAKE:
            landed.append(at_setting(view.spec, curve, len(curve.settings) - 1))
            continue
        assert action.kind is ActionKind.TUNE
        assert action.target_w is not None
        index = next(i for i, s in enumerate(curve.settings) if nominal_w(s) == action.target_w)
        moved = at_setting(view.spec, curve, index)
        landed.append(replace(moved, target_w=action.target_w))
    return landed


def total_ths(views: list[MinerView], curves: dict[str, Curve]) -> float:
    return sum(curves[v.spec.id].settings[current_index(v, curves[v.spec.id])].hashrate_ths
               for v in views)  # fmt: skip


def test_a_capped_fleet_is_retuned_below_rated_for_more_hashrate_than_sleeping() -> None:
    """After a shed left some asleep and the rest at rated, the allocation wakes sleepers
    at lower targets and lowers the rest; converged, it holds more than sleep-only."""
    specs = [spec(i) for i in range(20)]
    curves = seeded(specs)
    rated = sum(s.rated_power_w for s in specs)
    limit_w = round(rated * 0.6)
    top = len(curves["m000"].settings) - 1
    # Sleep-only: the least efficient asleep, the rest at rated, within the cap.
    views = [at_setting(s, curves[s.id], 0 if i < 9 else top) for i, s in enumerate(specs)]
    sleep_w = sum(estimate_w(v, NOW, STALE) for v in views)
    assert sleep_w <= limit_w
    start_ths = total_ths(views, curves)
    for _ in range(10):
        result = plan(snapshot(views, curves), Limit(limit_w, ("cap",)), RULES)
        assert result.expected_w <= limit_w
        if not result.actions:
            break
        assert {a.kind for a in result.actions} <= {ActionKind.TUNE, ActionKind.SLEEP}
        tunes = [a for a in result.actions if a.kind is ActionKind.TUNE]
        assert all(a.reason.startswith(f"retune to {a.target_w} W: ") for a in tunes)
        assert result.tuned == {a.miner_id for a in result.actions}
        views = land(views, result, curves)
        assert sum(estimate_w(v, NOW, STALE) for v in views) <= limit_w
    else:
        raise AssertionError("did not converge in 10 plans")
    held = total_ths(views, curves)
    assert held > start_ths * 1.05
    _, only_ths = sleep_only([curves[s.id] for s in specs], limit_w)
    assert held > only_ths
    awake = sum(current_index(v, curves[v.spec.id]) > 0 for v in views)
    assert awake > 11  # more miners mining, each below rated


def test_deadlines_come_first_no_retune_while_one_runs() -> None:
    specs = [spec(i) for i in range(6)]
    curves = seeded(specs)
    views = [at_setting(s, curves[s.id], 0 if i < 2 else 5) for i, s in enumerate(specs)]
    limit = Limit(15_000, ("cap",), due_at=NOW + timedelta(seconds=30))
    assert not plan(snapshot(views, curves), limit, RULES).actions
    free = plan(snapshot(views, curves), replace(limit, due_at=None), RULES)
    assert free.actions
    assert {a.kind for a in free.actions} == {ActionKind.TUNE}


def test_without_tuning_or_curves_the_plan_is_the_ladders() -> None:
    specs = [spec(i) for i in range(6)]
    curves = seeded(specs)
    views = [at_setting(s, curves[s.id], 0 if i < 2 else 5) for i, s in enumerate(specs)]
    limit = Limit(15_000, ("cap",))
    off = replace(RULES, tuning=None)
    ladder = plan(snapshot(views, None), limit, off)
    assert plan(snapshot(views, curves), limit, off) == ladder
    assert plan(snapshot(views, None), limit, RULES) == ladder
    assert all(a.kind is not ActionKind.TUNE for a in ladder.actions)


def test_over_budget_the_ladder_sheds_tuned_miners_as_before() -> None:
    specs = [spec(i) for i in range(6)]
    curves = seeded(specs)
    views = fleet_at(specs, curves, 3)  # all tuned to the middle step
    result = plan(snapshot(views, curves), Limit(8_000, ("cap",)), RULES)
    kinds = {a.kind for a in result.actions}
    assert ActionKind.TUNE not in kinds
    assert kinds <= {ActionKind.LOWER, ActionKind.SLEEP}
    assert result.expected_w <= 8_000


def test_a_miner_within_its_dwell_or_busy_is_not_moved() -> None:
    """A sleeper that fits only if the others make room: free, they do; each held by its
    dwell, its ramp or a command in flight, they cannot, and nothing moves."""
    specs = [spec(i) for i in range(4)]
    curves = seeded(specs)
    views = [*fleet_at(specs[:3], curves, 3), at_setting(specs[3], curves["m003"], 0)]
    views[0] = replace(views[0], tuned_at=NOW - timedelta(minutes=2))
    views[1] = replace(views[1], mode_since=NOW - timedelta(minutes=1))
    views[2] = replace(views[2], pending=ActionKind.LOWER)
    free = [replace(v, tuned_at=None, mode_since=LONG_AGO, pending=None) for v in views]
    limit = Limit(sum(estimate_w(v, NOW, STALE) for v in free) + 1_500, ("cap",))
    # Too little room to wake the sleeper at any step: free, the others make room for it
    # first, and once that shows, it is woken (a raise is paid from power spare now).
    moved = plan(snapshot(free, curves), limit, RULES)
    assert moved.actions
    assert "m003" not in {a.miner_id for a in moved.actions}
    assert {a.kind for a in moved.actions} == {ActionKind.TUNE}
    then = plan(snapshot(land(free, moved, curves), curves), limit, RULES)
    assert "m003" in {a.miner_id for a in then.actions}
    # Held, they cannot: nothing fits, nothing moves.
    assert not plan(snapshot(views, curves), limit, RULES).actions


def test_after_a_shed_retunes_wait_for_the_draw_to_settle() -> None:
    specs = [spec(i) for i in range(6)]
    curves = seeded(specs)
    views = [at_setting(s, curves[s.id], 0 if i < 2 else 5) for i, s in enumerate(specs)]
    shed = NOW - timedelta(seconds=5)
    result = plan(snapshot(views, curves, last_shed_at=shed), Limit(15_000, ("cap",)), RULES)
    assert not result.actions
    assert HELD_AFTER_SHED in result.notes


def test_cold_containers_held_asleep_and_other_families_stay_with_the_ladder() -> None:
    specs = [spec(0, container="cold"), spec(1), spec(2, WHATSMINER), spec(3), spec(4)]
    curves = seeded(specs)
    curves[specs[2].id] = Curve(seed_curve(specs[2], fractions=(0.6, 0.8, 1.0)).settings)
    views = [at_setting(s, curves[s.id], 5 if s.driver != "whatsminer" else 3) for s in specs]
    views[1] = at_setting(specs[1], curves["m001"], 0)
    views[4] = at_setting(specs[4], curves["m004"], 0)
    views[3] = replace(views[3], held_asleep=True)
    safety = Safety(ColdRules(), {"cold": ColdRules(floor_below_c=50.0)})
    rules = replace(RULES, safety=safety)
    ambient = {"cold": (-30.0, NOW), "c1": (5.0, NOW)}
    here = sum(estimate_w(v, NOW, STALE) for v in views)
    limit = Limit(here + 5_000, ("cap",))
    result = plan(snapshot(views, curves, ambient=ambient), limit, rules)
    assert {a.miner_id for a in result.actions} == {"m001", "m004"}
    assert {a.kind for a in result.actions} == {ActionKind.TUNE}
    assert result.expected_w <= limit.limit_w


def test_the_wake_rate_limit_bounds_wakes_at_a_target() -> None:
    specs = [spec(i) for i in range(12)]
    curves = seeded(specs)
    views = fleet_at(specs, curves, 0)
    rules = replace(RULES, wake_max_per_window=3)
    result = plan(snapshot(views, curves), Limit(30_000, ("cap",)), rules)
    assert len(result.actions) == 3
    assert all(a.reason.endswith("(woken at it)") for a in result.actions)


def test_a_small_change_of_budget_moves_nothing() -> None:
    specs = [spec(i) for i in range(10)]
    curves = seeded(specs)
    views = fleet_at(specs, curves, 1)
    here = sum(estimate_w(v, NOW, STALE) for v in views)
    for extra in (0, 100, 250):
        assert not plan(snapshot(views, curves), Limit(here + extra, ("cap",)), RULES).actions


def test_expected_hashrate_follows_the_actions() -> None:
    specs = [spec(i) for i in range(4)]
    curves = seeded(specs)
    views = fleet_at(specs, curves, 5)
    snap = snapshot(views, curves)
    rated = expected_ths(snap, ())
    assert rated == sum(curves[s.id].settings[5].hashrate_ths for s in specs)
    result = plan(snap, Limit(9_000, ("cap",)), RULES)  # over: the ladder sheds
    after = expected_ths(snap, result.actions)
    assert after is not None
    assert after < rated
    assert expected_ths(snapshot(views, None), ()) is None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=12),
    st.floats(0.3, 1.05),
    st.sampled_from([LUXOS, BRAIINS]),
)
def test_a_retune_never_plans_above_the_budget_even_before_its_lowerings_land(
    settings_at: list[int], cap: float, traits: DriverTraits
) -> None:
    specs = [spec(i, traits) for i in range(len(settings_at))]
    curves = seeded(specs)
    views = [at_setting(s, curves[s.id], k) for s, k in zip(specs, settings_at, strict=True)]
    here = sum(estimate_w(v, NOW, STALE) for v in views)
    limit_w = round(sum(s.rated_power_w for s in specs) * cap)
    result = plan(snapshot(views, curves), Limit(limit_w, ("cap",)), RULES)
    if here > limit_w:
        assert all(a.kind is not ActionKind.TUNE for a in result.actions)
        return
    assert result.expected_w <= limit_w
    running = {v.spec.id for v in views if v.reading and v.reading.mode is Mode.MINING}
    for action in result.actions:
        assert action.kind in {ActionKind.TUNE, ActionKind.SLEEP}
        if action.kind is ActionKind.SLEEP:
            assert action.miner_id in running
        else:
            assert action.target_w is not None
    # Raises are paid from what is spare now: the plan's raises alone fit.
    raised = sum(
        max(0, estimate_w(v, NOW, STALE) - estimate_w(w, NOW, STALE))
        for v, w in zip(land(views, result, curves), views, strict=True)
    )
    assert here + raised <= limit_w
    # Landed, the fleet is where the plan expected it, within the budget.
    assert sum(estimate_w(v, NOW, STALE) for v in land(views, result, curves)) <= limit_w


def test_a_paused_automation_withholds_every_retune() -> None:
    """A pause holds the fleet where it is: no wake at a target, no retune either way."""
    specs = [spec(i) for i in range(6)]
    curves = seeded(specs)
    views = [at_setting(s, curves[s.id], 0 if i < 2 else 5) for i, s in enumerate(specs)]
    result = plan(snapshot(views, curves), Limit(15_000, ("cap",)), RULES)
    assert result.actions
    paused = Automation(paused=True, by="operator-1")
    held, _ = operator_steps(result, tuple(views), {}, paused, NOW)
    assert not held.actions
    assert any("automation paused by operator-1" in n for n in held.notes)


def test_nothing_comes_back_while_the_draw_is_measured_over_the_limit() -> None:
    """Readings lag a site power blip: the allocation, still seeing the fleet as it was,
    woke 30 units at a target in the second after one (chaos 'blip'). While the meter
    says over, steps back and the allocation's moves wait; grid sheds stand."""
    specs = [spec(i) for i in range(6)]
    curves = seeded(specs)
    views = [at_setting(s, curves[s.id], 0 if i < 2 else 5) for i, s in enumerate(specs)]
    result = plan(snapshot(views, curves), Limit(15_000, ("cap",)), RULES)
    assert result.actions
    assert result.tuned
    held = over_the_limit(result, 15_400, 15_000)
    assert not held.actions
    assert not held.tuned
    assert any("15.4 kW, over the 15 kW limit" in n for n in held.notes)
    ladder = Plan(
        (
            Action("m000", ActionKind.SLEEP, "shed"),
            Action("m001", ActionKind.WAKE, "back"),
            Action("m002", ActionKind.RAISE, "back"),
            Action("m003", ActionKind.RESTORE, "back"),
            Action("m004", ActionKind.LOWER, "shed"),
        ),
        budget_w=15_000,
        expected_w=14_000,
        feasible=True,
    )
    kept = over_the_limit(ladder, 15_400, 15_000)
    assert [(a.miner_id, a.kind) for a in kept.actions] == [
        ("m000", ActionKind.SLEEP),
        ("m004", ActionKind.LOWER),
    ]
    assert over_the_limit(kept, 15_400, 15_000) is kept  # nothing to withhold: as it was


def test_a_raise_is_never_paid_with_watts_a_slow_retarget_frees_later() -> None:
    """Braiins units retarget over two minutes; a woken one is up in seconds. Found by the
    soak bench: the wakes were paid with the lowerings' watts at once, and the next plan,
    seeing the lowered units still at their old draw, was over budget and shed."""
    specs = [spec(i, BRAIINS) for i in range(30)]
    curves = seeded(specs)
    top = len(curves["m000"].settings) - 1
    views = [at_setting(s, curves[s.id], top if i < 20 else 0) for i, s in enumerate(specs)]
    limit_w = sum(estimate_w(v, NOW, STALE) for v in views) + 5_010
    first = plan(snapshot(views, curves), Limit(limit_w, ("cap",)), RULES)
    assert first.actions
    # The wakes land at once; the lowerings are sent, landed, and not yet shown.
    by_id = {a.miner_id: a for a in first.actions}
    after = []
    for v in views:
        action = by_id.get(v.spec.id)
        if action is None:
            after.append(v)
        elif v.reading is not None and v.reading.mode is Mode.SLEEPING:
            after.extend(land([v], replace(first, actions=(action,)), curves))
        else:
            after.append(replace(v, target_w=action.target_w, tuned_at=NOW))
    assert sum(estimate_w(v, NOW, STALE) for v in after) <= limit_w
    second = plan(snapshot(after, curves), Limit(limit_w, ("cap",)), RULES)
    assert not [a for a in second.actions if a.kind in {ActionKind.LOWER, ActionKind.SLEEP}]


def test_after_a_fast_deadline_efficient_sleepers_are_swapped_in_for_slow_runners() -> None:
    """A 10 s deadline slept the fast LuxOS units and kept slow, less efficient ones
    running (on-off Whatsminers). With the deadline met, the allocation sleeps the slow
    ones and, once that shows, wakes the efficient ones: more hashrate, same budget."""
    fast = [spec(i, LUXOS, eff=17.5) for i in range(4)]
    slow = [spec(i, WHATSMINER, eff=34.0) for i in range(4, 8)]
    curves = seeded([*fast, *slow])
    views = [
        *(at_setting(s, curves[s.id], 0) for s in fast),
        *(at_setting(s, curves[s.id], len(curves[s.id].settings) - 1) for s in slow),
    ]
    limit = Limit(sum(estimate_w(v, NOW, STALE) for v in views) + 500, ("cap",))
    before = total_ths(views, curves)
    first = plan(snapshot(views, curves), limit, RULES)
    slept = {a.miner_id for a in first.actions if a.kind is ActionKind.SLEEP}
    assert slept
    assert slept <= {s.id for s in slow}
    assert first.tuned >= slept  # not grid sheds
    # In rounds: no plan takes away more than a quarter of the hashrate it moves (one
    # miner at least, or a swap could never start).
    assert len(slept) == 1
    now = land(views, first, curves)
    for _ in range(20):
        result = plan(snapshot(now, curves), limit, RULES)
        if not result.actions:
            break
        now = land(now, result, curves)
        assert sum(estimate_w(v, NOW, STALE) for v in now) <= limit.limit_w
    assert total_ths(now, curves) > before * 1.2
    assert all(current_index(v, curves[v.spec.id]) > 0 for v in now[:4])  # fast ones run


def test_a_retuned_miner_read_well_above_its_target_has_lost_it() -> None:
    """A hand on the web UI puts a retuned unit back at its default: the loop must not
    go on believing the target (the meter-loop test found it believed one)."""
    s = spec(0)
    curve = seeded([s])[s.id]
    view = replace(at_setting(s, curve, 5), target_w=2519, tuned_at=LONG_AGO)
    why = target_lost(view)
    assert why is not None
    assert "2519 W power target it was retuned to" in why
    settled = replace(at_setting(s, curve, 2), target_w=2519, tuned_at=LONG_AGO)
    assert target_lost(settled) is None
    landing = replace(view, tuned_at=NOW - timedelta(seconds=1))
    assert target_lost(landing) is None  # not yet landed


def test_a_sleeper_with_cold_boards_is_left_to_the_ladders_warm_wake() -> None:
    """Found in review: managed but never free, a cold sleeper was woken by no one."""
    specs = [spec(i) for i in range(3)]
    curves = seeded(specs)
    views = [
        replace(
            at_setting(s, curves[s.id], 0), reading=MinerReading(Mode.SLEEPING, 25, 0.0, (5.0,))
        )
        for s in specs
    ]
    safety = Safety(ColdRules(floor_below_c=0.0, warm_below_c=10.0))
    rules = replace(RULES, safety=safety)
    snap = snapshot(views, curves, ambient={"c1": (5.0, NOW)})
    result = plan(snap, Limit(30_000, ("grant",)), rules)
    assert [a.kind for a in result.actions] == [ActionKind.WARM] * 3


def test_raises_are_charged_at_what_the_estimate_counts_not_the_learned_step() -> None:
    """Found in review: a LuxOS unit runs the largest profile under its target, so its
    learned steps draw less than their targets; raises paid at the learned watts put the
    in-flight estimate over the budget, and the ladder shed."""
    specs = [spec(i) for i in range(40)]
    seed = seed_curve(specs[0])
    learned = Curve(
        (seed.settings[0], *(st._replace(power_w=st.power_w * 0.97) for st in seed.settings[1:]))
    )
    curves = dict.fromkeys((s.id for s in specs), learned)
    views = [at_setting(s, learned, 1) for s in specs]
    limit_w = round(sum(estimate_w(v, NOW, STALE) for v in views) * 1.1)
    result = plan(snapshot(views, curves), Limit(limit_w, ("cap",)), RULES)
    assert result.actions
    by_id = {a.miner_id: a for a in result.actions}
    in_flight = [
        replace(v, pending=ActionKind.TUNE, target_w=by_id[v.spec.id].target_w)
        if v.spec.id in by_id
        else v
        for v in views
    ]
    assert sum(estimate_w(v, NOW, STALE) for v in in_flight) <= limit_w


def test_retuned_miners_go_back_to_default_when_tuning_is_off() -> None:
    """Found in review: a target restored from the journal, with tuning now off, held the
    miners below rated for good: the ladder walks a retuned target back like a lowered one."""
    specs = [spec(i) for i in range(3)]
    curves = seeded(specs)
    views = [replace(at_setting(s, curves[s.id], 2), tuned_at=LONG_AGO) for s in specs]
    off = replace(RULES, tuning=None)
    result = plan(snapshot(views, None), Limit(100_000, ("cap",)), off)
    assert [a.kind for a in result.actions] == [ActionKind.RAISE] * 3


def test_miners_held_running_are_neither_slept_nor_retuned() -> None:
    """Found in review: the allocation's swap put a miner held running to sleep."""
    fast = [spec(i, LUXOS, eff=17.5) for i in range(4)]
    slow = [spec(i, WHATSMINER, eff=34.0) for i in range(4, 8)]
    curves = seeded([*fast, *slow])
    views = [
        *(at_setting(s, curves[s.id], 0) for s in fast),
        *(at_setting(s, curves[s.id], 1) for s in slow),
    ]
    limit = Limit(sum(estimate_w(v, NOW, STALE) for v in views) + 500, ("cap",))
    held = frozenset(s.id for s in slow)
    result = plan(snapshot(views, curves, held_running=held), limit, RULES)
    assert not {a.miner_id for a in result.actions} & held


def test_retunes_up_stay_within_the_restart_rate() -> None:
    """Found in review: raises of running miners bypassed the kW-per-window limit."""
    specs = [spec(i) for i in range(100)]
    curves = seeded(specs)
    views = fleet_at(specs, curves, 1)
    rules = replace(RULES, wake_max_w_per_window=20_000)
    result = plan(snapshot(views, curves), Limit(1_000_000, ("grant",)), rules)
    assert result.actions
    floor = nominal_w(curves["m000"].settings[1])
    rise = sum((a.target_w or 0) - floor for a in result.actions)
    assert rise <= 20_000


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.sampled_from([None, 1, 30, 200, 400, 3600]),  # mode changed, seconds ago
            st.sampled_from([None, 1, 100, 300, 450, 3600]),  # retuned, seconds ago
            st.sampled_from([None, 1, 200, 3600]),  # lowered, seconds ago
            st.booleans(),  # a command in flight
        ),
        min_size=1,
        max_size=8,
    ),
    st.lists(st.sampled_from([LUXOS, BRAIINS]), min_size=8, max_size=8),
)
def test_the_inline_judgement_of_a_free_miner_agrees_with_the_full_one(
    states: list[tuple[int, int | None, int | None, int | None, bool]],
    families: list[DriverTraits],
) -> None:
    """_choices judges the common case inline for speed; it must free exactly the miners
    _Judge.free would, in a fleet of families with different retarget times."""
    specs = [spec(i, families[i]) for i in range(len(states))]
    curves = seeded(specs)

    def ago(s: int | None) -> datetime | None:
        return None if s is None else NOW - timedelta(seconds=s)

    views = [
        replace(
            at_setting(sp, curves[sp.id], k),
            mode_since=ago(since),
            tuned_at=ago(tuned),
            lowered_at=ago(lowered),
            pending=ActionKind.TUNE if busy else None,
        )
        for sp, (k, since, tuned, lowered, busy) in zip(specs, states, strict=True)
    ]
    snap = snapshot(views, curves)
    costs = [estimate_w(v, NOW, STALE) for v in views]
    fleet = Fleet(
        snap, Horizon(NOW, STALE), costs, list(range(len(views))), None, specs,
        [True] * len(views), [True] * len(views),
    )  # fmt: skip
    judge = _Judge(fleet, TUNING)
    _, choices, _, _ = _choices(fleet, curves, TUNING, Shapes())
    assert {c.miner_id for c in choices} == {v.spec.id for v in views if judge.free(v) == FREE}


def test_while_a_deadline_runs_retuned_miners_are_not_raised_to_rated() -> None:
    """Found in re-review: walking retuned targets back (for tuning off) raised every
    retuned miner while a met deadline's window still ran, for the allocation to retune
    them down again after it."""
    specs = [spec(i) for i in range(6)]
    curves = seeded(specs)
    views = [replace(at_setting(s, curves[s.id], 3), tuned_at=LONG_AGO) for s in specs]
    limit = Limit(100_000, ("cap",), due_at=NOW + timedelta(seconds=5))
    assert not plan(snapshot(views, curves), limit, RULES).actions


def test_a_miner_held_running_below_its_default_is_raised_by_the_ladder() -> None:
    """Found in re-review: held running and lowered (or retuned), it was moved by no one."""
    specs = [spec(i) for i in range(3)]
    curves = seeded(specs)
    views = [
        replace(at_setting(specs[0], curves["m000"], 1), lowered_at=LONG_AGO, target_w=None),
        replace(at_setting(specs[1], curves["m001"], 2), tuned_at=LONG_AGO),
        at_setting(specs[2], curves["m002"], 5),
    ]
    held = frozenset({"m000", "m001", "m002"})
    result = plan(snapshot(views, curves, held_running=held), Limit(100_000, ("cap",)), RULES)
    assert sorted((a.miner_id, a.kind) for a in result.actions) == [
        ("m000", ActionKind.RAISE),
        ("m001", ActionKind.RAISE),
    ]
