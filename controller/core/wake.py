"""The planner's within-budget phase: the ladder walked back (raise, wake, restore), most
efficient first, at a bounded rate. Pure; see planner.py for how the phases divide."""

from __future__ import annotations

from datetime import datetime

from controller.core.model import (
    Action,
    ActionKind,
    Alarm,
    Horizon,
    MinerView,
    Plan,
    PlanRules,
    coming_back_w,
)
from controller.core.planning import FLOOR_WAKE, Fleet, may_wake
from controller.core.safety import Climate
from drivers.types import Mode


def wake(fleet: Fleet, total: int, budget: int, rules: PlanRules) -> Plan:
    """The ladder walked back, most efficient first: raise lowered targets, then wake
    sleepers, then restore cut outlets (each only after its minimum time off). A cold
    container below its heater floor goes first; a sleeper with cold boards wakes gently.
    The order does not depend on the limit, so a lower limit wakes a prefix of it."""
    snapshot, costs, climate = fleet.snapshot, fleet.costs, fleet.climate
    now = snapshot.taken_at
    miners = snapshot.miners
    first = _floor_wakes(fleet, rules) if climate is not None else []
    steps = _wake_order(fleet, rules, first)
    if not steps:
        return Plan((), budget, total, feasible=True)
    shed_at = snapshot.last_shed_at
    if shed_at is not None and now - shed_at < rules.wake_hold_after_shed:
        until = shed_at + rules.wake_hold_after_shed
        return Plan(
            (),
            budget,
            total,
            feasible=True,
            notes=(f"wake held after shed until {until:%H:%M:%S}",),
            alarms=_floors_without_room(fleet, first, total, budget - rules.wake_headroom_w),
        )
    recent = [(t, w) for t, w in snapshot.recent_wakes if now - t < rules.wake_window]
    slots = rules.wake_max_per_window - len(recent)
    watts = rules.wake_max_w_per_window - sum(w for _, w in recent)
    actions: list[Action] = []
    notes: list[str] = []
    alarms: list[Alarm] = []
    for n, (i, back) in enumerate(steps):
        view = miners[i]
        spec = view.spec
        kind, cold = back, None
        if back is ActionKind.WAKE and climate is not None:
            cold = climate.boards_cold(view, fresh=True)
            kind = ActionKind.WARM if cold is not None else back
        level = spec.gentle_w() if kind is ActionKind.WARM else spec.rated_power_w
        extra = level - costs[i]
        if total + extra > budget - rules.wake_headroom_w:
            if n < len(first) and climate is not None:
                alarms.append(_floor_short(climate, spec.container, budget))
            break
        coming = coming_back_w(spec, kind)
        if slots <= 0 or watts < coming:
            notes.append("wake rate limit reached")
            break
        why = "fits the limit" if kind is not ActionKind.RESTORE else "outlet back on, boots"
        if n < len(first):
            why = f"{FLOOR_WAKE} {spec.container}"
        if cold is not None:
            why = f"{why}; {cold}: starts at {level / 1000:g} kW, steps up after a warm-up"
        actions.append(Action(spec.id, kind, f"{kind.value}: {spec.efficiency_j_th:g} J/TH {why}"))
        total += extra
        slots -= 1
        watts -= coming
    return Plan(
        tuple(actions), budget, total, feasible=True, notes=tuple(notes), alarms=tuple(alarms)
    )


def _wake_order(fleet: Fleet, rules: PlanRules, first: list[int]) -> list[tuple[int, ActionKind]]:
    """`first` (floor wakes), then raises, wakes and restores, each most efficient first;
    each with the step that walks it back."""
    snapshot, horizon, order, climate = fleet.snapshot, fleet.horizon, fleet.order, fleet.climate
    now = snapshot.taken_at
    miners = snapshot.miners
    buckets: dict[ActionKind, list[int]] = {
        ActionKind.RAISE: [],
        ActionKind.WAKE: [],
        ActionKind.RESTORE: [],
    }
    taken = set(first)
    for i in reversed(order):
        view = miners[i]
        if i not in taken and may_wake(view, now):
            kind = _step_back(view, horizon, now, rules, climate)
            if kind is not None:
                buckets[kind].append(i)
    return [
        *((i, ActionKind.WAKE) for i in first),
        *((i, kind) for kind, bucket in buckets.items() for i in bucket),
    ]


def _floor_wakes(fleet: Fleet, rules: PlanRules) -> list[int]:
    """Sleepers to wake first, most efficient first: enough to bring each cold container
    up to its heater floor, counting what already runs there at its estimate."""
    snapshot, horizon, costs, order, climate = fleet[:5]
    assert climate is not None
    need = climate.floor_needs()
    if not need:
        return []
    miners = snapshot.miners
    for i, view in enumerate(miners):
        left = need.get(view.spec.container)
        # A miner held asleep still running is put to sleep: it heats nothing for long.
        if left is not None and costs[i] > view.spec.traits.sleep_power_w and not view.held_asleep:
            left[0] -= costs[i]
            left[1] -= 1
    now = snapshot.taken_at
    wakes = []
    for i in reversed(order):
        view = miners[i]
        left = need.get(view.spec.container)
        if left is None or (left[0] <= 0 and left[1] <= 0) or not may_wake(view, now):
            continue
        if _step_back(view, horizon, now, rules, climate) is not ActionKind.WAKE:
            continue  # a cut outlet's restore is a cold boot at full power: not for heat
        wakes.append(i)
        left[0] -= view.spec.gentle_w()
        left[1] -= 1
    return wakes


def _floors_without_room(
    fleet: Fleet, first: list[int], total: int, room: int
) -> tuple[Alarm, ...]:
    """While wakes are held: the heater floors the limit would have no room for anyway
    (so a standing alarm does not clear and return with every hold)."""
    if fleet.climate is None:
        return ()
    alarms: dict[str, Alarm] = {}
    for i in first:
        spec = fleet.snapshot.miners[i].spec
        total += spec.gentle_w() - fleet.costs[i]
        if total > room and spec.container not in alarms:
            alarms[spec.container] = _floor_short(fleet.climate, spec.container, room)
    return tuple(alarms.values())


def _floor_short(climate: Climate, container: str, budget: int) -> Alarm:
    floor_w = climate.rules[container].floor_w
    return Alarm(
        "heater-floor",
        container,
        f"heater floor not held: {climate.describe(container)}; the limit leaves no room "
        f"to wake miners there toward {floor_w / 1000:g} kW (budget {budget / 1000:g} kW)",
    )


def _step_back(
    view: MinerView,
    horizon: Horizon,
    now: datetime,
    rules: PlanRules,
    climate: Climate | None = None,
) -> ActionKind | None:
    """The step that undoes where the ladder left this miner, if any and if its dwell
    and warm-up times allow it now."""
    if view.cut_at is not None:
        rested = now - view.cut_at >= rules.restore_min_off
        if rested and climate is not None:
            rested = climate.rested(view, view.cut_at)
        return ActionKind.RESTORE if rested else None
    if not horizon.fresh(view) or view.reading is None:
        return None
    if view.reading.mode is Mode.SLEEPING:
        if climate is not None and not climate.rested(view, view.mode_since):
            return None
        return ActionKind.WAKE
    if view.lowered_at is None and view.target_w is None:
        return None  # at its default; a target the allocation chose is walked back too
    warming = view.warming_until
    return ActionKind.RAISE if warming is None or now >= warming else None
