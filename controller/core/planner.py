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
from drivers.types import Mode

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
    horizon = Horizon(snapshot.taken_at, rules.stale_after)
    budget = limit.limit_w - rules.margin_w
    costs = [horizon.estimate(v) for v in snapshot.miners]
    total = sum(costs)
    order = snapshot.order if snapshot.order is not None else shed_order(snapshot.miners)
    fleet = _Fleet(snapshot, horizon, costs, order)
    if total > budget:
        return _shed(fleet, total, budget, limit.due_at)
    return _wake(fleet, total, budget, rules)


class _Fleet(NamedTuple):
    """What both phases walk: the snapshot, its horizon, each miner's cost, shed order."""

    snapshot: Snapshot
    horizon: Horizon
    costs: list[int]
    order: Sequence[int]


def _shed(fleet: _Fleet, total: int, budget: int, due_at: datetime | None) -> Plan:
    snapshot, horizon, costs, order = fleet
    now = snapshot.taken_at
    miners = snapshot.miners
    over = total - budget
    reasons: dict[tuple[float, bool], str] = {}
    actions: list[Action] = []
    sleeping = Mode.SLEEPING
    late = 0
    for i in _in_time_first(miners, order, now, due_at):
        if total <= budget:
            break
        view = miners[i]
        # Commandable and not known to be asleep, inlined: this loop runs for every miner.
        if view.pending is not None or (view.retry_after is not None and now < view.retry_after):
            continue
        if view.reading is not None and view.reading.mode is sleeping:
            continue
        cost = costs[i]
        spec = view.spec
        if horizon.fresh(view):
            slow = due_at is not None and now + _ramp(spec) > due_at
            late += slow
            reason = reasons.get((spec.efficiency_j_th, slow))
            if reason is None:
                reason = reasons[spec.efficiency_j_th, slow] = (
                    f"shed: {spec.efficiency_j_th:g} J/TH, least efficient running"
                    + (" (ramps down after the deadline)" if slow else "")
                )
            total -= cost - spec.traits.sleep_power_w
        else:
            reason = UNKNOWN_REASON  # counts at rated power until it answers again
        actions.append(_tuple_new(Action, (spec.id, ActionKind.SLEEP, reason)))
    notes = [f"over budget by {over} W: sleeping {len(actions)}"]
    if late:
        notes.append(f"deadline at risk: {late} of them ramp down after it")
    if total > budget:
        notes.append(
            f"infeasible: {total - budget} W over even with every commandable miner asleep"
        )
    return Plan(tuple(actions), budget, total, feasible=total <= budget, notes=tuple(notes))


def _wake(fleet: _Fleet, total: int, budget: int, rules: PlanRules) -> Plan:
    snapshot, horizon, costs, order = fleet
    now = snapshot.taken_at
    miners = snapshot.miners
    sleepers = [
        (miners[i], costs[i])
        for i in reversed(order)
        if _may_command(miners[i], now) and _asleep(miners[i], horizon)
    ]
    if not sleepers:
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
    for view, cost in sleepers:
        spec = view.spec
        extra = spec.rated_power_w - cost
        if total + extra > budget - rules.wake_headroom_w:
            break
        if slots <= 0 or watts < spec.rated_power_w:
            notes.append("wake rate limit reached")
            break
        actions.append(
            Action(spec.id, ActionKind.WAKE, f"wake: {spec.efficiency_j_th:g} J/TH fits the limit")
        )
        total += extra
        slots -= 1
        watts -= spec.rated_power_w
    return Plan(tuple(actions), budget, total, feasible=True, notes=tuple(notes))


def _in_time_first(
    miners: Sequence[MinerView], order: Sequence[int], now: datetime, due_at: datetime | None
) -> Iterator[int]:
    """The shed order, but miners that can ramp down before `due_at` come first: shedding a
    slow miner (a stock Antminer restarts its mining process for tens of seconds) gives
    nothing by a ten-second deadline. Independent of the limit, so a lower limit still
    sheds a superset."""
    if due_at is None:
        yield from order
        return
    slow = []
    for i in order:
        if now + _ramp(miners[i].spec) <= due_at:
            yield i
        else:
            slow.append(i)
    yield from slow


def _ramp(spec: MinerSpec) -> timedelta:
    return timedelta(seconds=spec.traits.ramp_down_s)


def _may_command(view: MinerView, now: datetime) -> bool:
    return view.pending is None and (view.retry_after is None or now >= view.retry_after)


def _asleep(view: MinerView, horizon: Horizon) -> bool:
    return horizon.fresh(view) and view.reading is not None and view.reading.mode is Mode.SLEEPING
