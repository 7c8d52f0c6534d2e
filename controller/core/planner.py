"""plan(): which miners to sleep or wake so the fleet fits the limit. Pure.

Two phases that never mix, so a tighter limit can never wake anything:
- over budget: sleep the least efficient miners first until the estimate fits;
- within budget: wake the most efficient sleepers first while they fit with headroom,
  at a bounded rate, and not soon after a shed.
Both walks stop at the first miner that does not fit, so the running set stays a prefix
of the efficiency order and a lower limit always yields a superset of sleeps.
"""

from __future__ import annotations

from datetime import datetime

from controller.core.model import (
    Action,
    ActionKind,
    Limit,
    MinerView,
    Plan,
    PlanRules,
    Snapshot,
    estimate_w,
    is_running,
)
from drivers.types import Mode


def plan(snapshot: Snapshot, limit: Limit, rules: PlanRules) -> Plan:
    """Choose actions so the fleet's estimated draw stays within `limit` less the margin."""
    now = snapshot.taken_at
    budget = limit.limit_w - rules.margin_w
    costs = {v.spec.id: estimate_w(v, now, rules.stale_after) for v in snapshot.miners}
    total = sum(costs.values())
    if total > budget:
        return _shed(snapshot, costs, total, budget, rules)
    return _wake(snapshot, costs, total, budget, rules)


def _shed(
    snapshot: Snapshot, costs: dict[str, int], total: int, budget: int, rules: PlanRules
) -> Plan:
    now = snapshot.taken_at
    over = total - budget
    candidates = [v for v in snapshot.miners if _may_command(v, now) and is_running(v)]
    candidates.sort(key=lambda v: (-v.spec.efficiency_j_th, -v.spec.rated_power_w, v.spec.id))
    actions: list[Action] = []
    for view in candidates:
        if total <= budget:
            break
        known = view.fresh(now, rules.stale_after)
        reason = (
            f"shed: {view.spec.efficiency_j_th:g} J/TH, least efficient running"
            if known
            else "shed: no fresh reading, counted at rated power"
        )
        actions.append(Action(view.spec.id, ActionKind.SLEEP, reason))
        if known:
            total -= costs[view.spec.id] - view.spec.traits.sleep_power_w
    notes = [f"over budget by {over} W: sleeping {len(actions)}"]
    if total > budget:
        notes.append(
            f"infeasible: {total - budget} W over even with every commandable miner asleep"
        )
    return Plan(tuple(actions), budget, total, feasible=total <= budget, notes=tuple(notes))


def _wake(
    snapshot: Snapshot, costs: dict[str, int], total: int, budget: int, rules: PlanRules
) -> Plan:
    now = snapshot.taken_at
    sleepers = [v for v in snapshot.miners if _may_command(v, now) and _asleep(v, now, rules)]
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
    sleepers.sort(key=lambda v: (v.spec.efficiency_j_th, v.spec.rated_power_w, v.spec.id))
    actions: list[Action] = []
    notes: list[str] = []
    for view in sleepers:
        extra = view.spec.rated_power_w - costs[view.spec.id]
        if total + extra > budget - rules.wake_headroom_w:
            break
        if slots <= 0 or watts < view.spec.rated_power_w:
            notes.append("wake rate limit reached")
            break
        actions.append(
            Action(
                view.spec.id,
                ActionKind.WAKE,
                f"wake: {view.spec.efficiency_j_th:g} J/TH fits the limit",
            )
        )
        total += extra
        slots -= 1
        watts -= view.spec.rated_power_w
    return Plan(tuple(actions), budget, total, feasible=True, notes=tuple(notes))


def _may_command(view: MinerView, now: datetime) -> bool:
    return view.pending is None and (view.retry_after is None or now >= view.retry_after)


def _asleep(view: MinerView, now: datetime, rules: PlanRules) -> bool:
    return (
        view.fresh(now, rules.stale_after)
        and view.reading is not None
        and view.reading.mode is Mode.SLEEPING
    )
