"""Cold-weather protection in the pure planner: hard-off, heater floors, warm restarts,
staggered restarts and dwell times, as tables and as Hypothesis properties."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.model import (
    SHEDS,
    ActionKind,
    Limit,
    MinerSpec,
    MinerView,
    OutletReading,
    Plan,
    PlanRules,
    Snapshot,
    coming_back_w,
    estimate_w,
)
from controller.core.planner import plan
from controller.core.safety import ColdRules, Safety
from drivers.types import DriverTraits, MinerReading, Mode

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
STALE = timedelta(seconds=15)
SEEN = NOW - timedelta(seconds=1)
SETTLED = NOW - timedelta(minutes=30)
LUX = DriverTraits(
    sleep_power_w=25,
    ramp_down_s=5.0,
    ramp_up_s=10.0,
    power_floor_fraction=0.7,
    retarget_s=5.0,
    gentle_fraction=0.7,
)
SLOW = DriverTraits(sleep_power_w=20, ramp_down_s=30.0, ramp_up_s=90.0, gentle_fraction=0.7)
WM = DriverTraits(sleep_power_w=15, ramp_down_s=15.0, ramp_up_s=60.0, gentle_extra_s=75)
COLD = ColdRules(
    hard_off_below_c=-10.0,
    floor_below_c=0.0,
    floor_w=6_000,
    warm_below_c=10.0,
    warm_up=timedelta(minutes=2),
    min_on=timedelta(minutes=5),
    min_off=timedelta(minutes=2),
)
RULES = PlanRules(
    stale_after=STALE,
    wake_hold_after_shed=timedelta(0),
    lower_first=False,
    safety=Safety(COLD),
    wake_max_per_window=100,
    wake_max_w_per_window=1_000_000,
)
FROZEN = {"c1": (-35.0, SEEN), "c2": (-35.0, SEEN)}


def miner(
    i: int,
    eff: float,
    *,
    container: str = "c1",
    traits: DriverTraits = LUX,
    mode: Mode = Mode.MINING,
    boards_c: float = 60.0,
    outlet: bool = True,
    since: datetime = SETTLED,
    **changes: object,
) -> MinerView:
    spec = MinerSpec(
        f"m{i:02d}", "luxos", container, 3000, eff, traits, outlet=f"pdu#{i}" if outlet else None
    )
    power = 3000 if mode is Mode.MINING else traits.sleep_power_w
    base = MinerView(
        spec,
        MinerReading(mode, power, 100.0 if mode is Mode.MINING else 0.0, (boards_c, boards_c)),
        SEEN,
        mode_since=since,
        outlet=OutletReading(on=True, power_w=float(power), read_at=SEEN) if outlet else None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def run(
    views: list[MinerView],
    limit_w: int,
    *,
    rules: PlanRules = RULES,
    ambient: dict[str, tuple[float, datetime]] | None = None,
    due_in_s: float | None = 10,
    emergency: bool = False,
    recent: tuple[tuple[datetime, int], ...] = (),
) -> Plan:
    due = None if due_in_s is None else NOW + timedelta(seconds=due_in_s)
    snapshot = Snapshot(NOW, tuple(views), recent, ambient=FROZEN if ambient is None else ambient)
    return plan(snapshot, Limit(limit_w, ("test",), due, emergency=emergency), rules)


def kinds(result: Plan) -> dict[str, ActionKind]:
    return {a.miner_id: a.kind for a in result.actions}


# -- tables ----------------------------------------------------------------------------------


def test_a_missing_or_stale_temperature_counts_as_cold() -> None:
    liar = miner(0, 34.0, mode=Mode.SLEEPING, lying="measures 3000 W asleep")
    liar = replace(liar, outlet=OutletReading(on=True, power_w=3000.0, read_at=SEEN))
    views = [liar, miner(1, 20.0, container="c2")]
    warm = {"c1": (5.0, SEEN), "c2": (5.0, SEEN)}
    assert kinds(run(views, 3_500, ambient=warm))["m00"] is ActionKind.CUT
    assert "m00" not in kinds(run(views, 3_500, ambient={}))  # never measured
    stale = {"c1": (5.0, NOW - timedelta(minutes=10)), "c2": (5.0, SEEN)}
    assert "m00" not in kinds(run(views, 3_500, ambient=stale))


NO_FLOOR = replace(RULES, safety=Safety(replace(COLD, floor_w=0)))


def test_a_slow_plugged_miner_sleeps_late_in_the_cold_rather_than_being_cut() -> None:
    slow = miner(0, 34.0, traits=SLOW)
    warm = run([slow], 1_000, ambient={"c1": (5.0, SEEN)}, rules=NO_FLOOR)
    assert kinds(warm) == {"m00": ActionKind.CUT}
    cold = run([slow], 1_000, rules=NO_FLOOR)
    assert kinds(cold) == {"m00": ActionKind.SLEEP}
    assert any("deadline at risk" in n for n in cold.notes)
    assert not cold.alarms  # no emergency: the deadline is at risk, the hardware is not


def test_an_emergency_cold_cut_is_an_alarm_naming_the_temperature() -> None:
    slow = miner(0, 34.0, traits=SLOW)
    result = run([slow], 1_000, emergency=True, rules=NO_FLOOR)
    assert kinds(result) == {"m00": ActionKind.CUT}
    (alarm,) = result.alarms
    assert alarm.kind == "cold-cut"
    assert alarm.subject == "m00"
    assert "-35" in alarm.detail
    assert "-10" in alarm.detail


def test_an_emergency_cuts_a_slow_floor_keeper_only_when_nothing_else_meets_it() -> None:
    keeper = miner(0, 20.0, traits=SLOW)  # the floor's only candidate: sleeps in 30 s
    calm = run([keeper], 1_000)
    assert kinds(calm) == {"m00": ActionKind.SLEEP}
    assert [a.kind for a in calm.alarms] == ["heater-floor"]
    urgent = run([keeper], 1_000, emergency=True)
    assert kinds(urgent) == {"m00": ActionKind.CUT}
    assert {a.kind for a in urgent.alarms} == {"heater-floor", "cold-cut"}


def test_the_heater_floor_keeps_the_most_efficient_miners_at_their_lowest_profile() -> None:
    views = [miner(i, 30.0 - i) for i in range(6)]  # m05 is the most efficient
    # Floor 6 kW at 2.1 kW lowered: three keepers (m05, m04, m03); the rest sleep.
    result = run(views, 7_000)
    got = kinds(result)
    assert {m for m, k in got.items() if k is ActionKind.SLEEP} == {"m00", "m01", "m02"}
    assert {m for m, k in got.items() if k is ActionKind.LOWER} == {"m03", "m04", "m05"}
    assert result.feasible
    assert not result.alarms


def test_a_limit_below_the_heater_floor_wins_by_sleep_not_cut_with_an_alarm() -> None:
    views = [miner(i, 30.0 - i) for i in range(6)]
    result = run(views, 2_500)
    got = kinds(result)
    assert set(got.values()) <= {ActionKind.SLEEP, ActionKind.LOWER}
    assert result.feasible
    assert [a.kind for a in result.alarms] == ["heater-floor"]
    assert "c1" in result.alarms[0].subject


def test_a_warm_container_has_no_floor() -> None:
    views = [miner(i, 30.0 - i) for i in range(6)]
    result = run(views, 2_500, ambient={"c1": (15.0, SEEN)})
    assert len([k for k in kinds(result).values() if k is ActionKind.SLEEP]) >= 5
    assert not result.alarms


def test_cold_boards_wake_gently_and_are_raised_only_after_the_warm_up() -> None:
    cold = miner(0, 20.0, mode=Mode.SLEEPING, boards_c=-30.0)
    warm = miner(1, 21.0, mode=Mode.SLEEPING, boards_c=25.0)
    result = run([cold, warm], 100_000, due_in_s=None)
    assert kinds(result) == {"m00": ActionKind.WARM, "m01": ActionKind.WAKE}
    warming = miner(
        0,
        20.0,
        lowered_at=NOW - timedelta(seconds=60),
        warming_until=NOW + timedelta(seconds=60),
        since=NOW - timedelta(seconds=60),
    )
    assert kinds(run([warming], 100_000, due_in_s=None)) == {}
    warmed = replace(warming, warming_until=NOW - timedelta(seconds=1))
    assert kinds(run([warmed], 100_000, due_in_s=None)) == {"m00": ActionKind.RAISE}


def test_a_whatsminer_pre_heats_and_counts_at_full_power() -> None:
    cold = miner(0, 20.0, traits=WM, mode=Mode.SLEEPING, boards_c=-30.0)
    result = run([cold], 100_000, due_in_s=None)
    assert kinds(result) == {"m00": ActionKind.WARM}
    assert result.expected_w == 3000


def test_a_cold_container_below_its_floor_wakes_first() -> None:
    asleep_c1 = [miner(i, 25.0, mode=Mode.SLEEPING, boards_c=-30.0) for i in range(4)]
    asleep_c2 = [miner(10 + i, 20.0, container="c2", mode=Mode.SLEEPING) for i in range(4)]
    ambient = {"c1": (-35.0, SEEN), "c2": (15.0, SEEN)}
    # Room for three gentle wakes: c1's floor (6 kW) takes them though c2 is more efficient.
    result = run([*asleep_c1, *asleep_c2], 3 * 2_100 + 8 * 25, ambient=ambient, due_in_s=None)
    woken = {m for m, k in kinds(result).items() if k in (ActionKind.WARM, ActionKind.WAKE)}
    assert woken <= {v.spec.id for v in asleep_c1}
    assert len(woken) == 3


def test_a_floor_the_limit_has_no_room_for_is_an_alarm_even_while_wakes_are_held() -> None:
    asleep = [miner(i, 25.0, mode=Mode.SLEEPING, boards_c=-30.0) for i in range(4)]
    rules = replace(RULES, wake_hold_after_shed=timedelta(minutes=1))
    snapshot = Snapshot(NOW, tuple(asleep), last_shed_at=NOW, ambient=FROZEN)
    held = plan(snapshot, Limit(500, ("test",)), rules)
    assert not held.actions
    assert [a.kind for a in held.alarms] == ["heater-floor"]


def test_a_shed_miner_rests_its_minimum_off_time() -> None:
    just_slept = miner(
        0, 20.0, mode=Mode.SLEEPING, boards_c=-30.0, since=NOW - timedelta(seconds=30)
    )
    assert kinds(run([just_slept], 100_000, due_in_s=None)) == {}
    rested = replace(just_slept, mode_since=NOW - timedelta(minutes=3))
    assert kinds(run([rested], 100_000, due_in_s=None)) == {"m00": ActionKind.WARM}
    cut = miner(1, 20.0, cut_at=NOW - timedelta(minutes=1))
    assert (
        kinds(
            run([cut], 100_000, due_in_s=None, rules=replace(RULES, restore_min_off=timedelta(0)))
        )
        == {}
    )


def test_a_young_miner_is_shed_after_the_others() -> None:
    young = miner(0, 34.0, since=NOW - timedelta(minutes=1))  # least efficient, just woken
    old = miner(1, 20.0)
    warm = {"c1": (15.0, SEEN)}
    assert kinds(run([young, old], 3_100, ambient=warm)) == {"m01": ActionKind.SLEEP}
    both = kinds(run([young, old], 100, ambient=warm))
    assert both == {"m00": ActionKind.SLEEP, "m01": ActionKind.SLEEP}  # the limit wins


# -- properties ------------------------------------------------------------------------------

FAMILIES = (LUX, SLOW, WM)


@st.composite
def fleets(draw: st.DrawFn) -> list[MinerView]:
    n = draw(st.integers(min_value=1, max_value=14))
    views = []
    for i in range(n):
        traits = draw(st.sampled_from(FAMILIES))
        mode = draw(st.sampled_from([Mode.MINING, Mode.MINING, Mode.SLEEPING]))
        changes: dict[str, object] = {}
        state = draw(st.sampled_from(["ok", "ok", "ok", "liar", "failed", "young", "cut"]))
        if state == "liar":
            changes["lying"] = "measures more than it reports"
        elif state == "failed":
            changes["retry_after"] = NOW + timedelta(seconds=30)
            changes["health_reason"] = "timeout"
        elif state == "cut":
            changes["cut_at"] = NOW - timedelta(seconds=draw(st.integers(0, 900)))
            changes["outlet"] = OutletReading(on=False, power_w=0.0, read_at=SEEN)
        since = NOW - timedelta(seconds=draw(st.integers(0, 1800)))
        view = miner(
            i,
            draw(st.sampled_from([20.0, 25.0, 30.0, 34.0])),
            container=draw(st.sampled_from(["c1", "c2"])),
            traits=traits,
            mode=mode,
            boards_c=draw(st.sampled_from([-30.0, 5.0, 40.0])),
            outlet=draw(st.booleans()) or state == "cut",
            since=since,
        )
        views.append(replace(view, **changes))  # type: ignore[arg-type]
    return views


ambients = st.fixed_dictionaries(
    {},
    optional={
        "c1": st.tuples(st.sampled_from([-35.0, -5.0, 15.0]), st.just(SEEN)),
        "c2": st.tuples(st.sampled_from([-35.0, -5.0, 15.0]), st.just(SEEN)),
    },
)


def _below_hard_off(view: MinerView, ambient: dict[str, tuple[float, datetime]]) -> bool:
    seen = ambient.get(view.spec.container)
    return seen is None or seen[0] < -10.0


@settings(max_examples=300, deadline=None)
@given(fleets(), st.integers(0, 45_000), ambients, st.sampled_from([None, 2, 10, 60]))
def test_no_cut_below_hard_off_without_an_emergency(
    views: list[MinerView],
    limit_w: int,
    ambient: dict[str, tuple[float, datetime]],
    due_in_s: int | None,
) -> None:
    result = run(views, limit_w, ambient=ambient, due_in_s=due_in_s, emergency=False)
    by_id = {v.spec.id: v for v in views}
    for action in result.actions:
        if action.kind is ActionKind.CUT:
            assert not _below_hard_off(by_id[action.miner_id], ambient), action


@settings(max_examples=300, deadline=None)
@given(fleets(), st.integers(0, 45_000), ambients)
def test_an_emergency_cold_cut_always_comes_with_an_alarm(
    views: list[MinerView], limit_w: int, ambient: dict[str, tuple[float, datetime]]
) -> None:
    result = run(views, limit_w, ambient=ambient, due_in_s=2, emergency=True)
    by_id = {v.spec.id: v for v in views}
    cold_cuts = {
        a.miner_id
        for a in result.actions
        if a.kind is ActionKind.CUT and _below_hard_off(by_id[a.miner_id], ambient)
    }
    assert cold_cuts == {a.subject for a in result.alarms if a.kind == "cold-cut"}


@st.composite
def running_fleets(draw: st.DrawFn) -> list[MinerView]:
    """Running, obeying miners (the floor's candidates) in two containers."""
    n = draw(st.integers(min_value=1, max_value=16))
    return [
        miner(
            i,
            draw(st.sampled_from([20.0, 25.0, 30.0, 34.0])),
            container=draw(st.sampled_from(["c1", "c2"])),
            traits=draw(st.sampled_from(FAMILIES)),
            outlet=draw(st.booleans()),
        )
        for i in range(n)
    ]


@settings(max_examples=300, deadline=None)
@given(running_fleets(), st.integers(0, 60_000), st.sampled_from([None, 10, 300]))
def test_the_heater_floor_is_held_whenever_the_limit_allows_it(
    views: list[MinerView], limit_w: int, due_in_s: int | None
) -> None:
    result = run(views, limit_w, due_in_s=due_in_s)
    got = kinds(result)
    # What each container keeps: lowered miners at their floor, untouched at their draw.
    for container in ("c1", "c2"):
        members = [v for v in views if v.spec.container == container]
        can_hold = sum((v.spec.floor_w() or 3000) for v in members) >= COLD.floor_w
        # The most a floor can need: its watts plus one more miner's (keepers are whole),
        # plus every other miner asleep.
        most = 2 * (COLD.floor_w + 3000) + sum(v.spec.traits.sleep_power_w for v in views)
        if not can_hold or limit_w < most:
            continue
        kept = 0
        for v in members:
            kind = got.get(v.spec.id)
            if kind is None:
                kept += estimate_w(v, NOW, STALE)
            elif kind is ActionKind.LOWER:
                kept += v.spec.floor_w() or 0
        assert kept >= COLD.floor_w, (container, got)
    assert not [a for a in result.alarms if a.kind == "heater-floor"] or limit_w < most


@st.composite
def sleeping_fleets(draw: st.DrawFn) -> list[MinerView]:
    n = draw(st.integers(min_value=1, max_value=30))
    views = []
    for i in range(n):
        view = miner(
            i,
            draw(st.sampled_from([20.0, 25.0, 30.0])),
            container=draw(st.sampled_from(["c1", "c2"])),
            traits=draw(st.sampled_from(FAMILIES)),
            mode=Mode.SLEEPING,
            boards_c=draw(st.sampled_from([-30.0, 40.0])),
            since=NOW - timedelta(seconds=draw(st.integers(0, 600))),
        )
        if draw(st.booleans()):
            view = replace(view, cut_at=NOW - timedelta(seconds=draw(st.integers(0, 900))))
        views.append(view)
    return views


@settings(max_examples=300, deadline=None)
@given(
    sleeping_fleets(),
    st.integers(1, 8),
    st.integers(2_000, 20_000),
    st.lists(st.integers(1_000, 3_000), max_size=4),
)
def test_the_restart_rate_and_the_minimum_off_time_are_never_exceeded(
    views: list[MinerView], per_s: int, w_per_s: int, recent_w: list[int]
) -> None:
    rules = replace(
        RULES,
        wake_max_per_window=per_s,
        wake_max_w_per_window=w_per_s,
        restore_min_off=timedelta(minutes=5),
    )
    recent = tuple((NOW - timedelta(milliseconds=500), w) for w in recent_w)
    result = run(views, 1_000_000, rules=rules, due_in_s=None, ambient={}, recent=recent)
    by_id = {v.spec.id: v for v in views}
    assert len(result.actions) + len(recent) <= max(per_s, len(recent))
    coming = sum(coming_back_w(by_id[a.miner_id].spec, a.kind) for a in result.actions)
    assert not result.actions or coming + sum(recent_w) <= w_per_s
    for action in result.actions:
        view = by_id[action.miner_id]
        if action.kind is ActionKind.RESTORE:
            assert view.cut_at is not None
            assert NOW - view.cut_at >= max(COLD.min_off, rules.restore_min_off)
        else:
            assert view.mode_since is not None
            assert NOW - view.mode_since >= COLD.min_off
            # Every board is cold here or warm: cold ones wake gently.
            cold = min(view.reading.board_temps_c) < 10.0 if view.reading else True
            assert action.kind is (ActionKind.WARM if cold else ActionKind.WAKE)


@settings(max_examples=300, deadline=None)
@given(fleets(), st.integers(0, 45_000), st.integers(0, 45_000), ambients)
def test_lowering_the_limit_never_wakes_a_miner(
    views: list[MinerView], a: int, b: int, ambient: dict[str, tuple[float, datetime]]
) -> None:
    low, high = sorted((a, b))
    woken_low = {
        x.miner_id for x in run(views, low, ambient=ambient).actions if x.kind not in SHEDS
    }
    woken_high = {
        x.miner_id for x in run(views, high, ambient=ambient).actions if x.kind not in SHEDS
    }
    assert woken_low <= woken_high
    over = run(views, low, ambient=ambient)
    if any(x.kind in SHEDS for x in over.actions):
        assert all(x.kind in SHEDS for x in over.actions)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1800), min_size=2, max_size=12), st.integers(0, 40_000))
def test_a_young_miner_is_shed_only_when_every_older_one_is(
    ages_s: list[int], limit_w: int
) -> None:
    sleep_only = DriverTraits(sleep_power_w=25, ramp_down_s=5.0, ramp_up_s=10.0)
    views = [
        miner(i, 20.0 + i, traits=sleep_only, since=NOW - timedelta(seconds=age))
        for i, age in enumerate(ages_s)
    ]
    result = run(views, limit_w, ambient={"c1": (15.0, SEEN)}, due_in_s=None)
    slept = set(kinds(result))
    young = {v.spec.id for v in views if NOW - v.mode_since < COLD.min_on}  # type: ignore[operator]
    if slept & young:
        assert {v.spec.id for v in views} - young <= slept


def test_a_miner_still_pre_heating_can_be_shed_and_counts_at_full_power_till_then() -> None:
    preheating = miner(0, 25.0, traits=WM, mode=Mode.SLEEPING, pending=ActionKind.WARM)
    preheating = replace(preheating, read_at=NOW - timedelta(seconds=40))  # not polled
    assert estimate_w(preheating, NOW, STALE) == 3000
    result = run([preheating], 1_000, ambient={"c1": (15.0, SEEN)})
    assert kinds(result) == {"m00": ActionKind.SLEEP}
    assert result.feasible
    lux = miner(1, 25.0, mode=Mode.SLEEPING, pending=ActionKind.WARM)  # lands in a second
    assert kinds(run([lux], 1_000, ambient={"c1": (15.0, SEEN)})) == {}
