"""plan(): which miners to sleep or wake so the fleet fits the limit. Pure.

Two phases that never mix, so a tighter limit can never wake anything:
- over budget: sleep the least efficient miners first until the estimate fits;
- within budget: wake the most efficient sleepers first (the shed order walked
  backwards) while they fit with headroom, at a bounded rate, and not soon after a shed.
Both walks stop at the first miner that does not fit, so the running set stays a prefix
of the efficiency order and a lower limit always yields a superset of sleeps.

This runs between a signal and its first command, for every miner: it avoids per-miner
datetime arithmetic (see Horizon) and builds each reason string once per class.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from controller.core.escalation import cut_refusal
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
)
from drivers.types import DriverTraits, Mode

UNKNOWN_REASON = "shed: no fresh reading, counted at rated power"
_tuple_new = tuple.__new__  # builds an Action without NamedTuple's Python-level __new__


def shed_key(spec: MinerSpec) -> tuple[float, int, str]:
    """Least efficient first; among equals the larger draw first; then by id."""
    return (-spec.efficiency_j_th, -spec.rated_power_w, spec.id)


def shed_order(miners: Sequence[MinerView]) -> tuple[int, ...]:
    """Indices of `miners` in shed order; wakes walk it backwards (most efficient first)."""
    return tuple(sorted(range(len(miners)), key=lambda i: shed_key(miners[i].spec)))


def plan(snapshot: Snapshot, limit: Limit, rules: PlanRules) -> Plan:
    """Choose actions so the fleet's estimated draw stays within `limit` less the margin."""
    horizon = Horizon(snapshot.taken_at, rules.stale_after, rules.restore_boot)
    budget = limit.limit_w - rules.margin_w
    costs = [horizon.estimate(v) for v in snapshot.miners]
    total = sum(costs)
    order = snapshot.order if snapshot.order is not None else shed_order(snapshot.miners)
    fleet = _Fleet(snapshot, horizon, costs, order)
    if total > budget:
        return _shed(fleet, total, budget, limit, rules)
    return _wake(fleet, total, budget, rules)


class _Fleet(NamedTuple):
    """What both phases walk: the snapshot, its horizon, each miner's cost, shed order."""

    snapshot: Snapshot
    horizon: Horizon
    costs: list[int]
    order: Sequence[int]


def _lower_saving(view: MinerView, cost: int, now: datetime, due_at: datetime | None) -> int:
    """What lowering this running miner's power target saves by `due_at` (0: not an option)."""
    spec = view.spec
    floor = spec.floor_w()
    if floor is None or view.lowered_at is not None or view.no_lower or cost <= floor:
        return 0
    if due_at is not None and now + timedelta(seconds=spec.traits.retarget_s) > due_at:
        return 0
    return cost - floor


def _shed(fleet: _Fleet, total: int, budget: int, limit: Limit, rules: PlanRules) -> Plan:
    """The ladder, per miner in shed order: lower its power target, else sleep it, else cut
    its outlet. Sleeps are the fewest that leave the rest to lowering (the least efficient
    sleep; the next ones are lowered); an outlet is cut only where sleeping failed (a
    stalled API, a lie the outlet measured) or cannot land before the deadline.

    The loop handles a running, obeying miner inline (nearly every miner of a fleet-wide
    shed, on the path to the first command) and hands every other case to _Ladder.step.
    """
    snapshot, horizon, costs, order = fleet
    now = snapshot.taken_at
    due_at = limit.due_at
    miners = snapshot.miners
    ladder = _Ladder(fleet, limit, rules)
    walk = list(_in_time_first(miners, order, now, due_at))
    lowering = _lowering(fleet, walk, due_at) if rules.lower_first else None
    potential = sum(lowering) if lowering is not None else 0
    actions: list[Action] = []
    counts = dict.fromkeys(ActionKind, 0)
    sleeping = Mode.SLEEPING
    fresh_from = horizon.fresh_from
    sleep_kind = ActionKind.SLEEP
    for i in walk:
        if total <= budget:
            break
        view = miners[i]
        lower = 0
        if lowering is not None:
            lower = lowering[i]
            potential -= lower
            if lower and total - potential - lower > budget:
                lower = 0  # this one must sleep: lowering the rest cannot cover it
        read_at, reading = view.read_at, view.reading
        if (
            view.pending is None
            and view.cut_at is None
            and view.lying is None
            and not lower
            and (view.retry_after is None or now >= view.retry_after)
            and reading is not None
            and read_at is not None
            and read_at >= fresh_from
            and reading.mode is not sleeping
        ):
            spec = view.spec
            slow = due_at is not None and now + _ramp(spec) > due_at
            if not slow or spec.outlet is None:  # the common case: sleep it
                reason = ladder.sleep_reason(spec.efficiency_j_th, slow)
                actions.append(_tuple_new(Action, (spec.id, sleep_kind, reason)))
                counts[sleep_kind] += 1
                total -= costs[i] - spec.traits.sleep_power_w
                continue
        step = ladder.step(i, lower)
        if step is not None:
            actions.append(step[0])
            counts[step[0].kind] += 1
            total -= step[1]
    notes = _notes(ladder, counts, sum(costs) - budget, total - budget)
    return Plan(tuple(actions), budget, total, feasible=total <= budget, notes=notes)


def _notes(ladder: _Ladder, counts: dict[ActionKind, int], over: int, left: int) -> tuple[str, ...]:
    steps = ", ".join(f"{n} {k.value}" for k, n in counts.items() if n) or "none"
    notes = [f"over budget by {over} W: {steps}"]
    if ladder.late:
        notes.append(f"deadline at risk: {ladder.late} of them ramp down after it")
    if ladder.vetoed:
        notes.append(f"{ladder.vetoed} miners that do not obey may not be cut (vetoed)")
    if left > 0:
        notes.append(f"infeasible: {left} W over even with every commandable miner asleep")
    return tuple(notes)


def _lowering(fleet: _Fleet, walk: Sequence[int], due_at: datetime | None) -> list[int] | None:
    """What lowering each running, obeying miner's power target saves by `due_at`; None
    when no miner can be lowered in time (most fleet-wide sheds of sleep-only families)."""
    snapshot, horizon, costs, _ = fleet
    now = snapshot.taken_at
    miners = snapshot.miners
    lands: dict[DriverTraits, bool] = {}
    lowering = [0] * len(miners)
    found = False
    for i in walk:
        view = miners[i]
        traits = view.spec.traits
        if traits.power_floor_fraction is None:
            continue
        in_time = lands.get(traits)
        if in_time is None:
            late = due_at is not None and now + timedelta(seconds=traits.retarget_s) > due_at
            in_time = lands[traits] = not late
        if in_time and _runs_and_obeys(view, horizon):
            saving = _lower_saving(view, costs[i], now, None)
            if saving:
                lowering[i] = saving
                found = True
    return lowering if found else None


def _runs_and_obeys(view: MinerView, horizon: Horizon) -> bool:
    reading = view.reading
    return (
        view.pending is None
        and reading is not None
        and reading.mode is not Mode.SLEEPING
        and view.lying is None
        and horizon.fresh(view)
    )


class _Ladder:
    """Chooses one miner's step on the ladder and what it saves."""

    def __init__(self, fleet: _Fleet, limit: Limit, rules: PlanRules) -> None:
        self.fleet = fleet
        self.limit = limit
        self.rules = rules
        self.now = fleet.snapshot.taken_at
        self.reasons: dict[tuple[float, bool], str] = {}
        self.late = 0
        self.vetoed = 0

    def step(self, i: int, lower: int) -> tuple[Action, int] | None:  # noqa: PLR0911 - one per rung
        view = self.fleet.snapshot.miners[i]
        if view.pending is not None or view.cut_at is not None:
            return None
        now = self.now
        spec = view.spec
        cost = self.fleet.costs[i]
        failed = view.retry_after is not None and now < view.retry_after
        fresh = self.fleet.horizon.fresh(view)
        asleep = view.reading is not None and view.reading.mode is Mode.SLEEPING
        booting = self.fleet.horizon.booting(view)
        # A lie its outlet measured, or a sleep or wake that failed: the API does not work,
        # the outlet does. (A unit booting after a restore is dark, not stuck.)
        stuck = view.lying or (view.health_reason if failed and not booting else None)
        if stuck is not None:
            return self._cut(view, cost, stuck, stuck=True)
        if failed or asleep:
            return None
        due_at = self.limit.due_at
        slow = due_at is not None and now + _ramp(spec) > due_at
        cut_ok = slow and cut_refusal(view, now, self.rules, self.limit.emergency) is None
        if booting:  # power-cycling it again only when an emergency needs it now
            return self._cut(view, cost, "booting", stuck=False) if cut_ok else None
        if not fresh:  # counts at rated power until it answers; try its API first
            if cut_ok:
                return self._cut(view, cost, "no answer, and no time to try", stuck=False)
            return _tuple_new(Action, (spec.id, ActionKind.SLEEP, UNKNOWN_REASON)), 0
        if lower:
            return Action(spec.id, ActionKind.LOWER, f"lower: {spec.efficiency_j_th:g} J/TH"), lower
        if cut_ok:
            return self._cut(view, cost, "sleep would land after the deadline", stuck=False)
        reason = self.sleep_reason(spec.efficiency_j_th, slow)
        saving = cost - spec.traits.sleep_power_w
        return _tuple_new(Action, (spec.id, ActionKind.SLEEP, reason)), saving

    def sleep_reason(self, efficiency: float, slow: bool) -> str:
        """One reason string per class, built once; counts sleeps that land late."""
        self.late += slow
        reason = self.reasons.get((efficiency, slow))
        if reason is None:
            reason = self.reasons[efficiency, slow] = (
                f"shed: {efficiency:g} J/TH, least efficient running"
                + (" (ramps down after the deadline)" if slow else "")
            )
        return reason

    def _cut(
        self, view: MinerView, cost: int, why: str, *, stuck: bool
    ) -> tuple[Action, int] | None:
        refusal = cut_refusal(view, self.now, self.rules, self.limit.emergency)
        if refusal is not None:
            self.vetoed += stuck and view.spec.outlet is not None
            return None
        return Action(view.spec.id, ActionKind.CUT, f"cut: {why}"), cost


def _wake(fleet: _Fleet, total: int, budget: int, rules: PlanRules) -> Plan:
    """The ladder walked back, most efficient first: raise lowered targets, then wake
    sleepers, then restore cut outlets (each only after its minimum time off)."""
    snapshot, horizon, costs, order = fleet
    now = snapshot.taken_at
    miners = snapshot.miners
    steps: list[tuple[MinerView, int, ActionKind]] = []
    for kind in (ActionKind.RAISE, ActionKind.WAKE, ActionKind.RESTORE):
        for i in reversed(order):
            view = miners[i]
            if _may_command(view, now) and _step_back(view, horizon, now, rules) is kind:
                steps.append((view, costs[i], kind))
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
        )
    recent = [(t, w) for t, w in snapshot.recent_wakes if now - t < rules.wake_window]
    slots = rules.wake_max_per_window - len(recent)
    watts = rules.wake_max_w_per_window - sum(w for _, w in recent)
    actions: list[Action] = []
    notes: list[str] = []
    for view, cost, kind in steps:
        spec = view.spec
        extra = spec.rated_power_w - cost
        if total + extra > budget - rules.wake_headroom_w:
            break
        if slots <= 0 or watts < extra:
            notes.append("wake rate limit reached")
            break
        why = "fits the limit" if kind is not ActionKind.RESTORE else "outlet back on, boots"
        actions.append(Action(spec.id, kind, f"{kind.value}: {spec.efficiency_j_th:g} J/TH {why}"))
        total += extra
        slots -= 1
        watts -= extra
    return Plan(tuple(actions), budget, total, feasible=True, notes=tuple(notes))


def _step_back(
    view: MinerView, horizon: Horizon, now: datetime, rules: PlanRules
) -> ActionKind | None:
    """The step that undoes where the ladder left this miner, if any."""
    if view.cut_at is not None:
        return ActionKind.RESTORE if now - view.cut_at >= rules.restore_min_off else None
    if not horizon.fresh(view) or view.reading is None:
        return None
    if view.reading.mode is Mode.SLEEPING:
        return ActionKind.WAKE
    return ActionKind.RAISE if view.lowered_at is not None else None


def _in_time_first(
    miners: Sequence[MinerView], order: Sequence[int], now: datetime, due_at: datetime | None
) -> Iterator[int]:
    """The shed order in three tiers: miners that can ramp down before `due_at` first;
    then slow ones on a switched outlet (a cut lands at once, so they can still make it);
    then the rest, whose sleep lands late: shedding a slow miner (a stock Antminer restarts
    its mining process for tens of seconds) gives nothing by a ten-second deadline.
    Independent of the limit, so a lower limit still sheds a superset."""
    if due_at is None:
        yield from order
        return
    plugged, late = [], []
    for i in order:
        spec = miners[i].spec
        if now + _ramp(spec) <= due_at:
            yield i
        elif spec.outlet is not None:
            plugged.append(i)
        else:
            late.append(i)
    yield from plugged
    yield from late


def _ramp(spec: MinerSpec) -> timedelta:
    return timedelta(seconds=spec.traits.ramp_down_s)


def _may_command(view: MinerView, now: datetime) -> bool:
    return view.pending is None and (view.retry_after is None or now >= view.retry_after)
