"""plan(): which miners to sleep or wake so the fleet fits the limit. Pure.

Two phases that never mix, so a tighter limit can never wake anything:
- over budget (shed.py): sleep the least efficient miners first until the estimate fits;
- within budget (wake.py): wake the most efficient sleepers first (the shed order walked
  backwards) while they fit with headroom, at a bounded rate, and not soon after a shed.
Both walks stop at the first miner that does not fit, so the running set stays a prefix
of the efficiency order and a lower limit always yields a superset of sleeps.

This runs between a signal and its first command, for every miner: it avoids per-miner
datetime arithmetic (see Horizon and planning.Due) and builds each reason string once
per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from controller.core.model import (
    COMING_BACK,
    Horizon,
    Limit,
    MinerSpec,
    MinerView,
    Plan,
    PlanRules,
    Snapshot,
)
from controller.core.planning import FLOOR_WAKE, UNKNOWN_REASON, Fleet, survey
from controller.core.safety import Climate
from controller.core.shed import shed
from controller.core.tuning import tune

__all__ = ["FLOOR_WAKE", "UNKNOWN_REASON", "over_the_limit", "plan", "shed_key", "shed_order"]


def shed_key(spec: MinerSpec) -> tuple[float, int, str]:
    """Least efficient first; among equals the larger draw first; then by id."""
    return (-spec.efficiency_j_th, -spec.rated_power_w, spec.id)


def shed_order(miners: Sequence[MinerView]) -> tuple[int, ...]:
    """Indices of `miners` in shed order; wakes walk it backwards (most efficient first)."""
    return tuple(sorted(range(len(miners)), key=lambda i: shed_key(miners[i].spec)))


def plan(
    snapshot: Snapshot,
    limit: Limit,
    rules: PlanRules,
    *,
    metered_over: tuple[int, int] | None = None,
) -> Plan:
    """Choose actions so the fleet's estimated draw stays within `limit` less the margin.
    `metered_over`: (measured, limit) in W when the site meter reads the draw over the
    limit, and nothing may come back (`over_the_limit`)."""
    horizon = Horizon(snapshot.taken_at, rules.stale_after, rules.restore_boot)
    budget = limit.limit_w - rules.margin_w
    seen = survey(snapshot, horizon)
    costs = seen.costs
    total = sum(costs)
    order = snapshot.order if snapshot.order is not None else shed_order(snapshot.miners)
    climate = None
    if rules.safety is not None:
        containers = {v.spec.container for v in snapshot.miners}
        climate = Climate(rules.safety, snapshot.ambient, snapshot.taken_at, containers)
    fleet = Fleet(snapshot, horizon, costs, order, climate, seen.specs, seen.obeying, seen.ready)
    if total <= budget:
        within = tune(fleet, total, budget, limit, rules)  # wake.py alone unless tuning
        return within if metered_over is None else over_the_limit(within, *metered_over)
    first = shed(fleet, total, budget, limit, rules, cold_ok=False)
    if climate is None or not limit.emergency or not first.cold_refused or first.in_time <= budget:
        return first.plan
    # An emergency that nothing else can meet in time: the cold gives way, with an alarm.
    return shed(fleet, total, budget, limit, rules, cold_ok=True).plan


def over_the_limit(plan: Plan, measured_w: int, limit_w: int) -> Plan:
    """While the draw is measured over the limit, nothing comes back: wakes, raises,
    restores and every move the allocation chose (Plan.tuned) wait, as under a pause.
    The plan's estimates disagree with the meter then, most often because readings lag a
    change (a site power blip: chaos 'blip' found the allocation waking 30 units at a
    target in the second after one). Sheds stand; a plan over budget has nothing else,
    so a fleet-wide shed is never walked for it."""
    actions = plan.actions
    kept = tuple(a for a in actions if a.kind not in COMING_BACK and a.miner_id not in plan.tuned)
    if len(kept) == len(actions):
        return plan
    note = (
        f"draw measured {measured_w / 1000:g} kW, over the {limit_w / 1000:g} kW limit: "
        f"{len(actions) - len(kept)} steps back withheld"
    )
    return replace(plan, actions=kept, notes=(*plan.notes, note), tuned=frozenset())
