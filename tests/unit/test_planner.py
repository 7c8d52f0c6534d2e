"""plan(): table tests and Hypothesis properties of the pure planner."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.model import (
    Action,
    ActionKind,
    Limit,
    MinerSpec,
    MinerView,
    Plan,
    PlanRules,
    Snapshot,
    estimate_w,
    measured_w,
)
from controller.core.planner import plan, shed_order
from drivers.types import DriverTraits, MinerReading, Mode

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
TRAITS = DriverTraits(sleep_power_w=25, ramp_down_s=5.0, ramp_up_s=10.0)
RULES = PlanRules(
    margin_w=1000,
    stale_after=timedelta(seconds=15),
    wake_headroom_w=500,
    wake_max_per_window=5,
    wake_max_w_per_window=20_000,
    wake_hold_after_shed=timedelta(seconds=30),
)
SETTLED = NOW - timedelta(minutes=5)


def spec(i: int, eff: float, rated: int = 3000) -> MinerSpec:
    return MinerSpec(f"m{i:02d}", "luxos", "c1", rated, eff, TRAITS)


def mining(i: int, eff: float, power: int = 3000) -> MinerView:
    return MinerView(
        spec(i, eff, power),
        MinerReading(Mode.MINING, power, 100.0, (60.0,)),
        NOW - timedelta(seconds=2),
        mode_since=SETTLED,
    )


def asleep(i: int, eff: float, rated: int = 3000) -> MinerView:
    return MinerView(
        spec(i, eff, rated),
        MinerReading(Mode.SLEEPING, 25, 0.0, (5.0,)),
        NOW - timedelta(seconds=2),
        mode_since=SETTLED,
    )


def unknown(i: int, eff: float, rated: int = 3000) -> MinerView:
    return MinerView(spec(i, eff, rated))


def run(views: list[MinerView], limit_w: int, last_shed_at: datetime | None = None) -> Plan:
    snapshot = Snapshot(NOW, tuple(views), last_shed_at=last_shed_at)
    return plan(snapshot, Limit(limit_w, ("test",)), RULES)


def ids(actions: tuple[Action, ...], kind: ActionKind) -> set[str]:
    return {a.miner_id for a in actions if a.kind is kind}


def test_planner_sheds_least_efficient_first() -> None:
    views = [mining(0, 17.5), mining(1, 29.5), mining(2, 21.5), mining(3, 34.0)]
    result = run(views, 7_100)  # budget 6.1 kW: two of four must sleep
    assert ids(result.actions, ActionKind.SLEEP) == {"m03", "m01"}
    assert result.expected_w == 6_050
    assert result.feasible
    assert all("least efficient" in a.reason for a in result.actions)


def test_planner_within_budget_does_nothing_to_running_miners() -> None:
    views = [mining(i, 20.0) for i in range(4)]
    assert run(views, 20_000).actions == ()


def test_planner_counts_unknown_miner_at_rated_power() -> None:
    views = [mining(0, 17.5, power=2000), unknown(1, 34.0, rated=3500)]
    assert estimate_w(views[1], NOW, RULES.stale_after) == 3500
    result = run(views, 5_000)  # 2000 + 3500 > 4000 budget
    # The unknown miner is commanded to sleep, but it still counts at rated: the known
    # one must go too.
    assert ids(result.actions, ActionKind.SLEEP) == {"m00", "m01"}
    assert result.expected_w == 3_525
    assert result.feasible
    tighter = run(views, 4_000)  # even with both asleep the unknown one counts 3.5 kW
    assert not tighter.feasible
    assert "infeasible" in tighter.notes[-1]


def test_planner_stale_reading_counts_at_rated() -> None:
    old = replace(mining(0, 20.0, power=1000), read_at=NOW - timedelta(seconds=60))
    assert estimate_w(old, NOW, RULES.stale_after) == old.spec.rated_power_w


def test_planner_wakes_most_efficient_first_within_rate_limit() -> None:
    views = [asleep(i, eff) for i, eff in enumerate((34.0, 17.5, 29.5, 21.5, 25.0, 19.0, 22.0))]
    result = run(views, 1_000_000)
    woken = [a.miner_id for a in result.actions]
    assert woken == ["m01", "m05", "m03", "m06", "m04"]  # five per window, best first
    assert "wake rate limit reached" in result.notes


def test_planner_wake_respects_kw_rate() -> None:
    views = [asleep(i, 20.0, rated=8_000) for i in range(5)]
    assert len(run(views, 1_000_000).actions) == 2  # 20 kW per window / 8 kW each


def test_planner_holds_wakes_after_a_shed() -> None:
    views = [asleep(0, 17.5)]
    held = run(views, 1_000_000, last_shed_at=NOW - timedelta(seconds=10))
    assert held.actions == ()
    assert "wake held" in held.notes[0]
    assert run(views, 1_000_000, last_shed_at=NOW - timedelta(seconds=31)).actions


def test_planner_wakes_only_with_headroom() -> None:
    views = [mining(0, 17.5), asleep(1, 20.0)]
    # 3000 + 25 now; waking adds 2975; budget 6000 - 500 headroom = 5500 -> no.
    assert run(views, 7_000).actions == ()
    assert ids(run(views, 7_600).actions, ActionKind.WAKE) == {"m01"}


def test_planner_counts_falling_miner_at_residual() -> None:
    # Acknowledged sleep one second ago: the reading still shows 2 kW, falling.
    falling = MinerView(
        spec(0, 30.0),
        MinerReading(Mode.SLEEPING, 2000, 0.0, (60.0,)),
        NOW,
        mode_since=NOW - timedelta(seconds=1),
    )
    assert estimate_w(falling, NOW, RULES.stale_after) == 25
    # Once the ramp should be over, the measurement is trusted again (a lying miner).
    late = replace(falling, mode_since=NOW - timedelta(seconds=30))
    assert estimate_w(late, NOW, RULES.stale_after) == 2000


def test_planner_counts_waking_miner_at_rated() -> None:
    rising = MinerView(
        spec(0, 30.0, 3200),
        MinerReading(Mode.MINING, 400, 10.0, (5.0,)),
        NOW,
        mode_since=NOW - timedelta(seconds=2),
    )
    assert estimate_w(rising, NOW, RULES.stale_after) == 3200


def test_planner_counts_estimated_watts_at_no_less_than_rated() -> None:
    # Stock Antminer firmware has no watts: the driver's nameplate estimate may be low, so a
    # running unit counts at its configured rating, in the plan and in the measured draw.
    traits = DriverTraits(sleep_power_w=20, ramp_down_s=30.0, ramp_up_s=90.0, reports_power=False)
    guessed = MinerView(
        MinerSpec("am1", "antminer-stock", "c1", 3400, 35.0, traits),
        MinerReading(Mode.MINING, 2864, 97.1, (60.0,)),
        NOW,
        mode_since=SETTLED,
    )
    assert estimate_w(guessed, NOW, RULES.stale_after) == 3400
    assert measured_w((guessed,), NOW, RULES.stale_after) == 3400
    above = replace(guessed, reading=MinerReading(Mode.MINING, 3600, 97.1, (60.0,)))
    assert estimate_w(above, NOW, RULES.stale_after) == 3600
    resting = replace(guessed, reading=MinerReading(Mode.SLEEPING, 20, 0.0, (10.0,)))
    assert estimate_w(resting, NOW, RULES.stale_after) == 20
    assert measured_w((resting,), NOW, RULES.stale_after) == 20
    # A family that reports its own watts is taken at its word.
    reported = replace(guessed, spec=replace(guessed.spec, traits=TRAITS))
    assert estimate_w(reported, NOW, RULES.stale_after) == 2864
    assert measured_w((reported,), NOW, RULES.stale_after) == 2864


def test_measured_counts_a_sleeping_wattless_miner_at_rated_until_its_ramp_down_ends() -> None:
    # A stock Antminer reads "sleep" once its mining process has restarted; its firmware
    # says nothing of how far the draw has fallen, so "reached" waits for the family's own
    # ramp-down, counted from when the command began.
    traits = DriverTraits(sleep_power_w=60, ramp_down_s=30.0, ramp_up_s=90.0, reports_power=False)
    asleep = MinerView(
        MinerSpec("am1", "antminer-stock", "c1", 3400, 35.0, traits),
        MinerReading(Mode.SLEEPING, 60, 0.0, (30.0,)),
        NOW,
        mode_since=NOW - timedelta(seconds=12),
    )
    assert measured_w((asleep,), NOW, RULES.stale_after) == 3400
    later = NOW + timedelta(seconds=18)
    assert measured_w((replace(asleep, read_at=later),), later, RULES.stale_after) == 60
    # A family that reports its own watts is believed at once.
    reported = replace(asleep, spec=replace(asleep.spec, traits=TRAITS))
    assert measured_w((reported,), NOW, RULES.stale_after) == 60


def test_planner_sheds_what_lands_before_the_deadline_first() -> None:
    slow_traits = DriverTraits(sleep_power_w=20, ramp_down_s=30.0, ramp_up_s=120.0)
    slow = [
        replace(mining(i, 34.0), spec=replace(spec(i, 34.0), traits=slow_traits)) for i in (0, 1)
    ]
    fast = [mining(2, 25.0), mining(3, 26.0)]
    views = slow + fast
    # Without a deadline the least efficient go first, however slow they are.
    assert ids(run(views, 7_100).actions, ActionKind.SLEEP) == {"m00", "m01"}
    # With ten seconds to go, the ones that can ramp down in time go first.
    due = Limit(7_100, ("test",), due_at=NOW + timedelta(seconds=10))
    result = plan(Snapshot(NOW, tuple(views)), due, RULES)
    assert ids(result.actions, ActionKind.SLEEP) == {"m02", "m03"}
    # A deeper cut needs the slow ones too, and says the deadline is at risk.
    deep = plan(Snapshot(NOW, tuple(views)), replace(due, limit_w=4_100), RULES)
    assert ids(deep.actions, ActionKind.SLEEP) == {"m00", "m02", "m03"}
    assert any("deadline at risk: 1" in n for n in deep.notes)
    assert [a.reason for a in deep.actions if a.miner_id == "m00"] == [
        "shed: 34 J/TH, least efficient running (ramps down after the deadline)"
    ]


def test_planner_skips_pending_and_backing_off_miners() -> None:
    views = [
        replace(mining(0, 34.0), pending=ActionKind.SLEEP),
        replace(mining(1, 30.0), retry_after=NOW + timedelta(seconds=5)),
        mining(2, 20.0),
    ]
    result = run(views, 4_000)
    assert ids(result.actions, ActionKind.SLEEP) == {"m02"}


# -- properties ---------------------------------------------------------------------------

STATES = (
    "unknown",
    "stale",
    "mining",
    "sleeping",
    "waking",
    "falling",
    "pending_sleep",
    "pending_wake",
    "backoff",
    "lying",
)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    views = []
    for i in range(draw(st.integers(1, 24))):
        rated = draw(st.integers(500, 5000))
        eff = draw(st.sampled_from([17.5, 19.0, 21.5, 25.0, 29.5, 34.0]))
        traits = DriverTraits(
            draw(st.integers(0, 80)), draw(st.sampled_from([3.0, 5.0, 30.0])), 10.0
        )
        s = MinerSpec(f"m{i:02d}", "luxos", "c1", rated, eff, traits)
        state = draw(st.sampled_from(STATES))
        power = draw(st.integers(rated * 7 // 10, rated * 11 // 10))
        run_reading = MinerReading(Mode.MINING, power, 90.0, (60.0,))
        sleep_reading = MinerReading(Mode.SLEEPING, traits.sleep_power_w, 0.0, (10.0,))
        fresh = NOW - timedelta(seconds=draw(st.integers(0, 10)))
        view = {
            "unknown": MinerView(s),
            "stale": MinerView(s, run_reading, NOW - timedelta(seconds=40), mode_since=SETTLED),
            "mining": MinerView(s, run_reading, fresh, mode_since=SETTLED),
            "sleeping": MinerView(s, sleep_reading, fresh, mode_since=SETTLED),
            "waking": MinerView(
                s,
                replace(run_reading, power_w=rated // 5),
                fresh,
                mode_since=NOW - timedelta(seconds=3),
            ),
            "falling": MinerView(
                s,
                replace(sleep_reading, power_w=power),
                fresh,
                mode_since=NOW - timedelta(seconds=1),
            ),
            "pending_sleep": MinerView(
                s, run_reading, fresh, mode_since=SETTLED, pending=ActionKind.SLEEP
            ),
            "pending_wake": MinerView(
                s, sleep_reading, fresh, mode_since=SETTLED, pending=ActionKind.WAKE
            ),
            "backoff": MinerView(
                s,
                run_reading,
                fresh,
                mode_since=SETTLED,
                healthy=False,
                retry_after=NOW + timedelta(seconds=4),
            ),
            "lying": MinerView(
                s,
                replace(sleep_reading, power_w=power),
                fresh,
                mode_since=NOW - timedelta(seconds=60),
            ),
        }[state]
        views.append(view)
    wakes = draw(st.lists(st.integers(0, 3), max_size=4))
    shed_ago = draw(st.one_of(st.none(), st.integers(0, 90)))
    # Half the time the caller supplies the shed order, as the supervisor does.
    order = shed_order(views) if draw(st.booleans()) else None
    return Snapshot(
        NOW,
        tuple(views),
        tuple((NOW - timedelta(milliseconds=100 * w), 3000) for w in wakes),
        None if shed_ago is None else NOW - timedelta(seconds=shed_ago),
        order,
    )


def applied(snapshot: Snapshot, result: Plan) -> Snapshot:
    """The snapshot once the plan's commands are on the wire."""
    kinds = {a.miner_id: a.kind for a in result.actions}
    views = tuple(
        replace(v, pending=kinds[v.spec.id]) if v.spec.id in kinds else v for v in snapshot.miners
    )
    wakes = snapshot.recent_wakes + tuple(
        (NOW, v.spec.rated_power_w)
        for v in snapshot.miners
        if kinds.get(v.spec.id) is ActionKind.WAKE
    )
    shed = NOW if ActionKind.SLEEP in kinds.values() else snapshot.last_shed_at
    return Snapshot(NOW, views, wakes, shed, snapshot.order)


def landed(snapshot: Snapshot, result: Plan) -> Snapshot:
    """The snapshot once every command was acknowledged and read back."""
    kinds = {a.miner_id: a.kind for a in result.actions}
    views = []
    for v in snapshot.miners:
        kind = kinds.get(v.spec.id)
        if kind is None:
            views.append(v)
            continue
        prior = v.reading.power_w if v.reading else v.spec.rated_power_w
        mode = Mode.SLEEPING if kind is ActionKind.SLEEP else Mode.MINING
        reading = MinerReading(mode, prior if kind is ActionKind.SLEEP else 0, 0.0, ())
        views.append(
            replace(v, reading=reading, read_at=NOW if v.read_at else None, mode_since=NOW)
        )
    pending = applied(snapshot, result)
    return Snapshot(NOW, tuple(views), pending.recent_wakes, pending.last_shed_at, snapshot.order)


def floor_w(snapshot: Snapshot) -> int:
    """The lowest estimate reachable by sleeping every miner that may be commanded."""
    total = 0
    for v in snapshot.miners:
        cost = estimate_w(v, NOW, RULES.stale_after)
        commandable = v.pending is None and (v.retry_after is None or v.retry_after <= NOW)
        running = v.reading is None or v.reading.mode is Mode.MINING
        if commandable and running and v.fresh(NOW, RULES.stale_after):
            cost = v.spec.traits.sleep_power_w
        total += cost
    return total


limits = st.integers(0, 150_000)
dues = st.one_of(st.none(), st.integers(1, 40).map(lambda s: NOW + timedelta(seconds=s)))


@settings(max_examples=300, deadline=None)
@given(snapshots(), limits, dues)
def test_property_plan_never_exceeds_a_feasible_limit(
    snapshot: Snapshot, limit_w: int, due: datetime | None
) -> None:
    result = plan(snapshot, Limit(limit_w, (), due), RULES)
    budget = limit_w - RULES.margin_w
    after = sum(estimate_w(v, NOW, RULES.stale_after) for v in applied(snapshot, result).miners)
    assert after == result.expected_w
    if floor_w(snapshot) <= budget:
        assert result.feasible
        assert result.expected_w <= budget
    else:
        assert not result.feasible


@settings(max_examples=300, deadline=None)
@given(snapshots(), limits, limits, dues)
def test_property_tighter_limit_never_wakes(
    snapshot: Snapshot, a: int, b: int, due: datetime | None
) -> None:
    loose, tight = max(a, b), min(a, b)
    p_loose = plan(snapshot, Limit(loose, (), due), RULES)
    p_tight = plan(snapshot, Limit(tight, (), due), RULES)
    assert ids(p_tight.actions, ActionKind.WAKE) <= ids(p_loose.actions, ActionKind.WAKE)
    assert ids(p_tight.actions, ActionKind.SLEEP) >= ids(p_loose.actions, ActionKind.SLEEP)
    current = sum(estimate_w(v, NOW, RULES.stale_after) for v in snapshot.miners)
    if tight - RULES.margin_w < current:
        assert not ids(p_tight.actions, ActionKind.WAKE)


@settings(max_examples=300, deadline=None)
@given(snapshots(), limits, dues)
def test_property_replanning_a_planned_state_yields_no_actions(
    snapshot: Snapshot, limit_w: int, due: datetime | None
) -> None:
    limit = Limit(limit_w, (), due)
    result = plan(snapshot, limit, RULES)
    assert plan(applied(snapshot, result), limit, RULES).actions == ()
    assert plan(landed(snapshot, result), limit, RULES).actions == ()


@settings(max_examples=200, deadline=None)
@given(snapshots(), limits)
def test_property_unknown_miners_count_at_rated(snapshot: Snapshot, limit_w: int) -> None:
    result = plan(snapshot, Limit(limit_w, ()), RULES)
    unknown_rated = sum(
        v.spec.rated_power_w for v in snapshot.miners if not v.fresh(NOW, RULES.stale_after)
    )
    assert result.expected_w >= unknown_rated


@settings(max_examples=200, deadline=None)
@given(snapshots(), limits)
def test_property_sheds_in_efficiency_order(snapshot: Snapshot, limit_w: int) -> None:
    result = plan(snapshot, Limit(limit_w, ()), RULES)
    shed = ids(result.actions, ActionKind.SLEEP)
    if not shed:
        return

    def order(v: MinerView) -> tuple[float, int, str]:
        return (-v.spec.efficiency_j_th, -v.spec.rated_power_w, v.spec.id)

    kept = [
        v
        for v in snapshot.miners
        if v.spec.id not in shed
        and v.pending is None
        and (v.retry_after is None or v.retry_after <= NOW)
        and (v.reading is None or v.reading.mode is Mode.MINING)
    ]
    last_shed = max(order(v) for v in snapshot.miners if v.spec.id in shed)
    assert all(order(v) > last_shed for v in kept)


@settings(max_examples=200, deadline=None)
@given(snapshots(), limits)
def test_property_supplied_order_changes_nothing(snapshot: Snapshot, limit_w: int) -> None:
    limit = Limit(limit_w, ())
    with_order = replace(snapshot, order=shed_order(snapshot.miners))
    without = replace(snapshot, order=None)
    assert plan(with_order, limit, RULES) == plan(without, limit, RULES)


def test_planner_distrusts_a_reading_taken_mid_ramp() -> None:
    # A wake's read-back 0.5 s in showed 300 W; 11 s later no newer reading has come.
    woke = NOW - timedelta(seconds=11)
    view = MinerView(
        spec(0, 20.0, 3000),
        MinerReading(Mode.MINING, 300, 0.0, ()),
        woke + timedelta(seconds=0.5),
        mode_since=woke,
    )
    assert estimate_w(view, NOW, RULES.stale_after) == 3000  # the ramp's end, not the sample
    # Going down: a sample on the way down does not say where the draw settled.
    slept = NOW - timedelta(seconds=8)
    falling = MinerView(
        spec(1, 20.0),
        MinerReading(Mode.SLEEPING, 2400, 0.0, ()),
        slept + timedelta(seconds=0.5),
        mode_since=slept,
    )
    assert estimate_w(falling, NOW, RULES.stale_after) == 25
    # A reading taken after the ramp is trusted, high or not (a miner that lies).
    settled = replace(falling, read_at=slept + timedelta(seconds=6))
    assert estimate_w(settled, NOW, RULES.stale_after) == 2400
