"""The escalation ladder in the pure planner: lower power target -> sleep -> cut the outlet,
each step only when the one before failed or will not land in time; the way back; the
cold's refusal to cut; and what a PDU outlet's measurement does to the estimates."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.escalation import lie, target_lost
from controller.core.model import (
    ActionKind,
    Limit,
    MinerSpec,
    MinerView,
    OutletReading,
    Plan,
    PlanRules,
    Snapshot,
    estimate_w,
    measured_w,
)
from controller.core.planner import plan
from controller.core.safety import ColdRules, Safety
from drivers.types import DriverTraits, MinerReading, Mode

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
STALE = timedelta(seconds=15)
LOWERABLE = DriverTraits(
    sleep_power_w=25, ramp_down_s=5.0, ramp_up_s=10.0, power_floor_fraction=0.7, retarget_s=5.0
)
SLEEP_ONLY = DriverTraits(sleep_power_w=25, ramp_down_s=5.0, ramp_up_s=10.0)
RULES = PlanRules(margin_w=0, stale_after=STALE, wake_hold_after_shed=timedelta(0))
SETTLED = NOW - timedelta(minutes=5)
SEEN = NOW - timedelta(seconds=1)


def plug(power_w: float, at: datetime = SEEN, *, on: bool = True) -> OutletReading:
    return OutletReading(on, power_w, at)


def view(
    i: int,
    eff: float,
    *,
    traits: DriverTraits = LOWERABLE,
    mode: Mode = Mode.MINING,
    outlet: bool = True,
    **changes: object,
) -> MinerView:
    spec = MinerSpec(
        f"m{i:02d}", "luxos", "c1", 3000, eff, traits, outlet=f"pdu#{i}" if outlet else None
    )
    power = 3000 if mode is Mode.MINING else 25
    base = MinerView(
        spec,
        MinerReading(mode, power, 100.0 if mode is Mode.MINING else 0.0, (50.0,)),
        SEEN,
        mode_since=SETTLED,
        outlet=plug(float(power), SEEN) if outlet else None,
    )
    base = replace(base, outlet_at_read=base.outlet)
    return replace(base, **changes)  # type: ignore[arg-type]


def run(
    views: list[MinerView],
    limit_w: int,
    *,
    due_in_s: float | None = 10,
    rules: PlanRules = RULES,
    emergency: bool = False,
    ambient: dict[str, tuple[float, datetime]] | None = None,
) -> Plan:
    due = None if due_in_s is None else NOW + timedelta(seconds=due_in_s)
    return plan(
        Snapshot(NOW, tuple(views), ambient=ambient or {}),
        Limit(limit_w, ("test",), due, emergency=emergency),
        rules,
    )


def kinds(result: Plan) -> dict[str, ActionKind]:
    return {a.miner_id: a.kind for a in result.actions}


def test_a_small_cut_lowers_power_targets_and_sleeps_nothing() -> None:
    views = [view(i, eff) for i, eff in enumerate((34.0, 29.5, 21.5))]
    # 9 kW drawn; 7.5 kW allowed: lowering two miners (900 W each) is enough.
    result = run(views, 7_500)
    assert kinds(result) == {"m00": ActionKind.LOWER, "m01": ActionKind.LOWER}
    assert result.feasible


def test_a_deep_cut_sleeps_the_fewest_and_lowers_the_rest() -> None:
    views = [view(i, eff) for i, eff in enumerate((34.0, 29.5, 21.5, 17.5))]
    # 12 kW drawn, 6.4 kW allowed: lowering all four saves 3.6 kW, not enough; sleeping the
    # least efficient saves ~3 kW and lowering the next ones covers the rest.
    result = run(views, 6_400)
    got = kinds(result)
    assert got["m00"] is ActionKind.SLEEP
    assert ActionKind.LOWER in got.values()
    assert sum(k is ActionKind.SLEEP for k in got.values()) == 1
    assert result.expected_w <= 6_400


def test_lowering_that_lands_after_the_deadline_is_skipped_for_sleep() -> None:
    slow_retune = replace(LOWERABLE, retarget_s=120.0)
    views = [view(i, 30.0 - i, traits=slow_retune) for i in range(3)]
    result = run(views, 7_500, due_in_s=10)
    assert set(kinds(result).values()) == {ActionKind.SLEEP}


def test_without_a_power_target_the_ladder_starts_at_sleep() -> None:
    views = [view(i, 30.0 - i, traits=SLEEP_ONLY) for i in range(3)]
    assert set(kinds(run(views, 7_500)).values()) == {ActionKind.SLEEP}


def test_a_miner_the_outlet_caught_lying_is_cut() -> None:
    liar = view(0, 34.0, mode=Mode.SLEEPING, lying="reports asleep; its outlet measures 3000 W")
    liar = replace(liar, outlet=plug(3000.0, SEEN))
    others = [view(i, 20.0) for i in (1, 2)]
    result = run([liar, *others], 6_500)
    assert kinds(result)["m00"] is ActionKind.CUT
    assert "lying" not in result.actions[0].reason  # it says what was measured
    assert "3000 W" in result.actions[0].reason


def test_a_stalled_api_is_cut_and_without_an_outlet_it_is_left() -> None:
    stalled = view(
        0,
        34.0,
        retry_after=NOW + timedelta(seconds=5),
        healthy=False,
        health_reason="timeout: no verified result within 5 s",
    )
    assert kinds(run([stalled, view(1, 20.0)], 3_500))["m00"] is ActionKind.CUT
    unplugged = replace(stalled, spec=replace(stalled.spec, outlet=None), outlet=None)
    assert "m00" not in kinds(run([unplugged, view(1, 20.0)], 3_500))


def test_a_sleep_that_would_land_late_is_a_cut_where_there_is_an_outlet() -> None:
    views = [view(0, 34.0), view(1, 20.0, outlet=False)]
    result = run(views, 3_500, due_in_s=2, rules=replace(RULES, lower_first=False))
    assert kinds(result) == {"m00": ActionKind.CUT}
    result = run(views[1:], 100, due_in_s=2, rules=replace(RULES, lower_first=False))
    assert kinds(result) == {"m01": ActionKind.SLEEP}  # no outlet: sleep, late
    assert any("deadline at risk" in n for n in result.notes)


def test_a_cold_container_refuses_a_cut_unless_an_emergency_needs_it() -> None:
    cold = Safety(ColdRules(hard_off_below_c=-20.0))
    rules = replace(RULES, lower_first=False, safety=cold)
    liar = view(0, 34.0, mode=Mode.SLEEPING, lying="measured 3000 W while asleep")
    liar = replace(liar, outlet=plug(3000.0, SEEN))
    frozen = {"c1": (-35.0, SEEN)}
    refused = run([liar, view(1, 20.0)], 3_500, rules=rules, ambient=frozen)
    assert "m00" not in kinds(refused)
    assert any("vetoed" in n for n in refused.notes)
    assert not refused.alarms
    # An emergency that sleeping m01 meets in time: still no cut.
    spared = run([liar, view(1, 20.0)], 3_500, rules=rules, emergency=True, ambient=frozen)
    assert kinds(spared) == {"m01": ActionKind.SLEEP}
    # One nothing else meets: the cold gives way, with an alarm.
    allowed = run([liar, view(1, 20.0)], 3_000, rules=rules, emergency=True, ambient=frozen)
    assert kinds(allowed)["m00"] is ActionKind.CUT
    assert [a.kind for a in allowed.alarms] == ["cold-cut"]
    warm = run([liar, view(1, 20.0)], 3_500, rules=rules, ambient={"c1": (-5.0, SEEN)})
    assert kinds(warm)["m00"] is ActionKind.CUT
    assert not warm.alarms


def test_the_way_back_raises_then_wakes_then_restores_after_the_minimum_off_time() -> None:
    lowered = view(0, 20.0, lowered_at=SETTLED)
    lowered = replace(lowered, reading=replace(lowered.reading, power_w=2100))  # type: ignore[type-var]
    lowered = replace(lowered, outlet=plug(2100.0, SEEN))
    sleeper = view(1, 21.0, mode=Mode.SLEEPING)
    cut_long_ago = replace(
        view(2, 22.0), cut_at=NOW - timedelta(minutes=10), outlet=plug(0.0, on=False, at=SEEN)
    )
    cut_just_now = replace(
        view(3, 23.0), cut_at=NOW - timedelta(seconds=30), outlet=plug(0.0, on=False, at=SEEN)
    )
    result = run([lowered, sleeper, cut_long_ago, cut_just_now], 100_000, due_in_s=None)
    assert [a.kind for a in result.actions] == [
        ActionKind.RAISE,
        ActionKind.WAKE,
        ActionKind.RESTORE,
    ]
    assert [a.miner_id for a in result.actions] == ["m00", "m01", "m02"]


def test_outlet_measurements_decide_the_estimates() -> None:
    # A sleeping miner's outlet says it still draws: after its ramp it counts at that.
    liar = replace(view(0, 30.0, mode=Mode.SLEEPING), outlet=plug(2900.0, SEEN))
    assert estimate_w(liar, NOW, STALE) == 2900
    assert measured_w((liar,), NOW, STALE) == 2900
    # ... but not before its ramp could have ended.
    ramping = replace(liar, mode_since=NOW - timedelta(seconds=2))
    assert estimate_w(ramping, NOW, STALE) == 25
    # A cut outlet draws nothing; a cut in flight counts as landed.
    cut = replace(view(1, 30.0), outlet=plug(0.0, on=False, at=SEEN))
    assert estimate_w(cut, NOW, STALE) == 0
    assert estimate_w(replace(view(2, 30.0), pending=ActionKind.CUT), NOW, STALE) == 0
    # A stale outlet reading falls back to the firmware.
    old = replace(view(3, 30.0), outlet=plug(10.0, NOW - timedelta(minutes=1)))
    assert estimate_w(old, NOW, STALE) == 3000


def claiming(v: MinerView, power_w: int) -> MinerView:
    """`v` with its firmware reporting `power_w`."""
    assert v.reading is not None
    return replace(v, reading=replace(v.reading, power_w=power_w))


def test_a_lie_is_judged_only_after_the_ramp() -> None:
    grace = timedelta(0)
    measured = plug(3000.0, SEEN)
    asleep = replace(view(0, 30.0, mode=Mode.SLEEPING), outlet=measured, outlet_at_read=measured)
    assert lie(asleep, NOW, STALE, grace) is not None
    # A power blip: the outlet measures the unit mining only since the firmware last said
    # it was asleep. Not a lie: the firmware has not been asked since.
    blip = replace(asleep, outlet_at_read=plug(25.0, SEEN - timedelta(seconds=0.5)))
    assert lie(blip, NOW, STALE, grace) is None
    # An outlet read well before the firmware spoke still counts once the ramp had landed
    # (a PDU polled every 5 s must not hide a liar).
    old = replace(asleep, outlet_at_read=plug(3000.0, SEEN - timedelta(seconds=10)))
    assert lie(old, NOW, STALE, grace) is not None
    fresh_sleep = replace(asleep, mode_since=NOW - timedelta(seconds=3))
    assert lie(fresh_sleep, NOW, STALE, grace) is None
    honest = replace(asleep, outlet=plug(60.0, SEEN), outlet_at_read=plug(60.0, SEEN))
    assert lie(honest, NOW, STALE, grace) is None  # a residual within the slack
    lowered = replace(view(1, 30.0), lowered_at=NOW - timedelta(seconds=30))
    claims_target = claiming(lowered, 2100)
    assert lie(claims_target, NOW, STALE, grace) is not None  # says 2100 W, measured 3000 W
    # It says 3000 W itself: not a lie but a lost target, lowered again.
    assert lie(lowered, NOW, STALE, grace) is None
    assert target_lost(lowered) is not None


def test_a_blip_at_the_end_of_a_ramp_is_not_a_lie_but_a_claim_of_it_is() -> None:
    # Sleep sent 5.8 s ago, a 5 s ramp: landed 0.8 s ago. The firmware, read 1.2 s ago,
    # said asleep and still ramping (1500 W); the outlet then read 1500 W; the blip came
    # after, and the outlet now reads 3000 W.
    grace = timedelta(0)
    ramping = replace(
        view(0, 30.0, mode=Mode.SLEEPING),
        mode_since=NOW - timedelta(seconds=5.8),
        read_at=NOW - timedelta(seconds=1.2),
        outlet_at_read=plug(1500.0, NOW - timedelta(seconds=1.6)),
        outlet=plug(3000.0, NOW - timedelta(seconds=0.2)),
    )
    ramping = claiming(ramping, 1500)
    assert lie(ramping, NOW, STALE, grace) is None
    # A firmware that claimed its residual while its outlet measured the full draw lies.
    deceiving = replace(
        claiming(ramping, 25), outlet_at_read=plug(3000.0, NOW - timedelta(seconds=1.6))
    )
    assert lie(deceiving, NOW, STALE, grace) is not None


def test_a_lost_power_target_is_judged_only_after_it_had_time_to_land() -> None:
    lowered = replace(view(1, 30.0), lowered_at=SEEN - timedelta(seconds=30))
    assert target_lost(lowered) == (
        "reports 3000 W, above the 2100 W power target it was lowered to"
    )
    assert target_lost(replace(lowered, lowered_at=SEEN - timedelta(seconds=4))) is None
    held = claiming(lowered, 2200)
    assert target_lost(held) is None  # within the slack of its target
    assert target_lost(replace(lowered, pending=ActionKind.LOWER)) is None
    assert target_lost(view(2, 30.0)) is None  # never lowered
    estimated = replace(LOWERABLE, reports_power=False)
    assert target_lost(replace(lowered, spec=replace(lowered.spec, traits=estimated))) is None


@settings(max_examples=150, deadline=None)
@given(
    effs=st.lists(st.sampled_from([17.5, 21.5, 29.5, 34.0]), min_size=1, max_size=12),
    high=st.integers(min_value=0, max_value=40_000),
    drop=st.integers(min_value=0, max_value=40_000),
    due=st.sampled_from([None, 2.0, 10.0, 600.0]),
)
def test_a_lower_limit_never_raises_wakes_or_restores(
    effs: list[float], high: int, drop: int, due: float | None
) -> None:
    views = [view(i, eff) for i, eff in enumerate(effs)]
    tight = run(views, max(0, high - drop), due_in_s=due)
    loose = run(views, high, due_in_s=due)
    backwards = {ActionKind.RAISE, ActionKind.WAKE, ActionKind.RESTORE}
    if any(a.kind in backwards for a in tight.actions):
        # Only when the fleet already fits: then the looser limit wakes at least as much.
        assert not loose.actions or all(a.kind in backwards for a in loose.actions)
    # A tighter limit never sheds less (by expected draw).
    assert tight.expected_w <= loose.expected_w or not tight.feasible


def test_outlets_that_can_be_cut_in_time_come_before_sleeps_that_land_late() -> None:
    # A 2 s deadline: no sleep lands. The least efficient miner has no outlet; cutting the
    # next one is what meets the deadline, not counting a late sleep.
    slow = replace(SLEEP_ONLY, ramp_down_s=15.0)
    unplugged = view(0, 34.0, traits=slow, outlet=False)
    plugged = view(1, 29.5, traits=slow)
    result = run([unplugged, plugged], 3_500, due_in_s=2, rules=replace(RULES, lower_first=False))
    assert kinds(result) == {"m01": ActionKind.CUT}
    # With time to sleep, nothing is cut: the ladder sleeps the least efficient first.
    result = run([unplugged, plugged], 3_500, due_in_s=60, rules=replace(RULES, lower_first=False))
    assert kinds(result) == {"m00": ActionKind.SLEEP}


def test_a_miner_whose_power_target_failed_is_slept_not_cut() -> None:
    # A failed LOWER says nothing against sleeping it: the ladder skips that step.
    refused = view(0, 34.0, no_lower=True)
    result = run([refused, view(1, 20.0)], 5_500, due_in_s=60)
    assert kinds(result) == {"m00": ActionKind.SLEEP}


def test_a_restored_miner_counts_at_rated_while_it_boots_and_is_not_cut_again() -> None:
    rules = replace(RULES, lower_first=False, restore_boot=timedelta(minutes=10))
    booting = replace(
        view(0, 34.0),
        restored_at=NOW - timedelta(minutes=2),
        read_at=None,
        healthy=False,
        health_reason="unreachable: connection reset",
        outlet=plug(25.0),
    )
    snapshot = Snapshot(NOW, (booting, view(1, 20.0)))
    limit = Limit(3_500, ("test",), NOW + timedelta(seconds=60))
    result = plan(snapshot, limit, rules)
    assert result.expected_w >= 3000  # counted at rated, not at the 25 W it draws now
    assert "m00" not in kinds(result)  # dark while booting is not stuck
    assert kinds(result) == {"m01": ActionKind.SLEEP}
    # Only an emergency that no sleep can meet cuts it again.
    urgent = plan(
        snapshot, Limit(3_500, ("test",), NOW + timedelta(seconds=1), emergency=True), rules
    )
    assert kinds(urgent)["m00"] is ActionKind.CUT


def test_a_lie_needs_readings_of_the_same_moment() -> None:
    # Firmware read asleep 10 s ago; the outlet now measures full draw: someone may have
    # woken it since. Not a lie until the firmware is read again.
    stale = replace(
        view(0, 30.0, mode=Mode.SLEEPING),
        read_at=NOW - timedelta(seconds=10),
        outlet=plug(3000.0, SEEN),
    )
    assert lie(stale, NOW, STALE, timedelta(0)) is None
