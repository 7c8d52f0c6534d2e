"""The planner's over-budget phase: the ladder down (lower, sleep, cut), least efficient
first. Pure; see planner.py for how the two phases divide the work."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

from controller.core.escalation import cut_refusal
from controller.core.model import (
    Action,
    ActionKind,
    Alarm,
    Limit,
    MinerView,
    Plan,
    PlanRules,
)
from controller.core.planning import UNKNOWN_REASON, Due, Fleet, runs_and_obeys, tuple_new
from drivers.types import Mode


class Shed(NamedTuple):
    plan: Plan
    in_time: int  # the estimate counting only what lands by the deadline
    cold_refused: bool  # a cut the cold forbade would have helped


def shed(
    fleet: Fleet, total: int, budget: int, limit: Limit, rules: PlanRules, *, cold_ok: bool
) -> Shed:
    """The ladder, per miner in shed order: lower its power target, else sleep it, else cut
    its outlet. Sleeps are the fewest that leave the rest of the shed to lowering (the least
    efficient sleep; the next ones are lowered); an outlet is cut only where sleeping failed
    (a stalled API, a lie the outlet measured) or cannot land before the deadline, and not
    in a container below its hard-off temperature unless `cold_ok`. Miners that keep a cold
    container's heater floor are only lowered; they sleep (never cut) last, if the limit
    cannot carry the floor.

    The loop handles a running, obeying miner inline (nearly every miner of a fleet-wide
    shed, on the path to the first command) and hands every other case to _Ladder.step.
    """
    snapshot, costs, climate, specs, ready = (
        fleet.snapshot,
        fleet.costs,
        fleet.climate,
        fleet.specs,
        fleet.ready,
    )
    due = Due(snapshot.taken_at, limit.due_at)
    ladder = _Ladder(fleet, limit, due, rules, cold_ok=cold_ok)
    walk = list(_in_time_first(fleet, due))
    keep = _keepers(fleet) if climate is not None else None
    lowering = _lowering(fleet, walk, due, everywhere=rules.lower_first)
    potential = sum(lowering) if lowering is not None else 0
    actions: list[Action | None] = []
    lowered: dict[int, tuple[int, int]] = {}  # kept miners lowered: (action index, saving)
    counts = dict.fromkeys(ActionKind, 0)
    sleep_kind = ActionKind.SLEEP
    late = due.late_after  # by ramp-down seconds
    for i in walk:
        if total <= budget:
            break
        kept = keep is not None and keep[i]
        lower = 0
        if lowering is not None:
            lower = lowering[i]
            potential -= lower
            if lower and not kept and total - potential - lower > budget:
                lower = 0  # this one must sleep: lowering the rest cannot cover it
        if not kept and not lower and ready[i]:
            spec = specs[i]
            slow = late[spec.traits.ramp_down_s]
            if not slow or spec.outlet is None:  # the common case: sleep it
                reason = ladder.sleep_reason(spec.efficiency_j_th, slow)
                actions.append(tuple_new(Action, (spec.id, sleep_kind, reason, None)))
                counts[sleep_kind] += 1
                saving = costs[i] - spec.traits.sleep_power_w
                total -= saving
                ladder.late_w += saving if slow else 0
                continue
        step = ladder.keep_step(i, lower) if kept else ladder.step(i, lower)
        if step is not None:
            if kept:
                lowered[i] = (len(actions), step[1])
            actions.append(step[0])
            counts[step[0].kind] += 1
            total -= step[1]
    if keep is not None and total > budget:
        total = ladder.give_up_floors(walk, keep, lowered, actions, counts, total, budget)
    notes = _notes(ladder, counts, sum(costs) - budget, total - budget)
    plan = Plan(
        tuple(a for a in actions if a is not None),
        budget,
        total,
        feasible=total <= budget,
        notes=notes,
        alarms=tuple(ladder.alarms),
    )
    return Shed(plan, total + ladder.late_w, ladder.cold_refused)


def _keepers(fleet: Fleet) -> list[bool] | None:
    """The miners that keep each cold container's heater floor: its most efficient running,
    obeying miners with a power target (counted at their lowest), then without one, until
    the floor's watts and miner count are met. None where no container needs one."""
    snapshot, horizon, costs, order, climate = fleet[:5]
    assert climate is not None
    need = climate.floor_needs()
    if not need:
        return None
    miners = snapshot.miners
    keep = [False] * len(miners)
    # Miners with a power target first: they keep the floor at their lowest profile.
    for lowerable in (True, False):
        for i in reversed(order):
            view = miners[i]
            left = need.get(view.spec.container)
            if left is None or (left[0] <= 0 and left[1] <= 0) or keep[i]:
                continue
            if view.held_asleep:  # it is put to sleep: no heater
                continue
            floor = view.spec.floor_w() if not view.no_lower else None
            if (floor is not None) is not lowerable:
                continue
            if view.cut_at is not None or not runs_and_obeys(view, horizon):
                continue
            keep[i] = True
            left[0] -= floor if floor is not None else costs[i]
            left[1] -= 1
    return keep


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


def _lowering(fleet: Fleet, walk: Sequence[int], due: Due, *, everywhere: bool) -> list[int] | None:
    """What lowering each running, obeying miner's power target saves by the deadline; None
    when no miner can be lowered in time (most fleet-wide sheds of sleep-only families).
    Not `everywhere` (the site sleeps first), only miners in cold containers: the cold
    prefers a lower power target to sleep."""
    costs, climate, specs, obeying = fleet.costs, fleet.climate, fleet.specs, fleet.obeying
    cold = climate.cold if climate is not None else {}
    if not everywhere and not any(cold.values()):
        return None
    miners = fleet.snapshot.miners
    late = due.late_after
    lowering = [0] * len(miners)
    found = False
    for i in walk:
        spec = specs[i]
        if spec.traits.power_floor_fraction is None:
            continue
        if not everywhere and not cold.get(spec.container, False):
            continue
        if not late[spec.traits.retarget_s] and obeying[i]:
            saving = _lower_saving(miners[i], costs[i])
            if saving:
                lowering[i] = saving
                found = True
    return lowering if found else None


def _lower_saving(view: MinerView, cost: int) -> int:
    """What lowering this running miner's power target saves (0: not an option)."""
    floor = view.spec.floor_w()
    if floor is None or view.lowered_at is not None or view.no_lower or cost <= floor:
        return 0
    return cost - floor


class _Ladder:
    """Chooses one miner's step on the ladder and what it saves."""

    def __init__(
        self, fleet: Fleet, limit: Limit, due: Due, rules: PlanRules, *, cold_ok: bool
    ) -> None:
        self.fleet = fleet
        self.limit = limit
        self.due = due
        self.rules = rules
        self.climate = fleet.climate
        self.cold_ok = cold_ok
        self.now = fleet.snapshot.taken_at
        self.reasons: dict[tuple[float, bool], str] = {}
        self.late = 0
        self.late_w = 0  # savings counted that land after the deadline
        self.vetoed = 0
        self.cold_refused = False
        self.alarms: list[Alarm] = []

    def keep_step(self, i: int, lower: int) -> tuple[Action, int] | None:
        """A miner keeping its container's heater floor: its lowest power target at most."""
        if not lower:
            return None
        container = self.fleet.snapshot.miners[i].spec.container
        why = f"lower: keeps the heater floor in {container} (lowest profile)"
        return Action(self.fleet.snapshot.miners[i].spec.id, ActionKind.LOWER, why), lower

    def step(self, i: int, lower: int) -> tuple[Action, int] | None:  # noqa: PLR0911 - one per rung
        view = self.fleet.snapshot.miners[i]
        spec = view.spec
        cost = self.fleet.costs[i]
        if view.pending is ActionKind.WARM and spec.traits.gentle_fraction is None:
            # Still pre-heating (minutes, counted at full power): sleeping it stops the wake.
            reason = "shed: stops its wake while it pre-heats"
            return Action(spec.id, ActionKind.SLEEP, reason), cost - spec.traits.sleep_power_w
        if view.pending is not None or view.cut_at is not None:
            return None
        now = self.now
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
        slow = self.due.late(spec)
        cut_ok = slow and self.refusal(view) is None
        if booting:  # power-cycling it again only when an emergency needs it now
            return self._cut(view, cost, "booting", stuck=False) if cut_ok else None
        if not fresh:  # counts at rated power until it answers; try its API first
            if cut_ok:
                return self._cut(view, cost, "no answer, and no time to try", stuck=False)
            return tuple_new(Action, (spec.id, ActionKind.SLEEP, UNKNOWN_REASON, None)), 0
        if lower:
            return Action(spec.id, ActionKind.LOWER, f"lower: {spec.efficiency_j_th:g} J/TH"), lower
        if cut_ok:
            return self._cut(view, cost, "sleep would land after the deadline", stuck=False)
        reason = self.sleep_reason(spec.efficiency_j_th, slow)
        saving = cost - spec.traits.sleep_power_w
        self.late_w += saving if slow else 0
        return tuple_new(Action, (spec.id, ActionKind.SLEEP, reason, None)), saving

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

    def refusal(self, view: MinerView) -> str | None:
        """Why this miner's outlet may not be cut: the hardware, or the cold (unless an
        emergency that nothing else can meet has overridden it)."""
        refusal = cut_refusal(view)
        if refusal is None and self.climate is not None and not self.cold_ok:
            refusal = self.climate.cut_refusal(view)
            self.cold_refused |= refusal is not None
        return refusal

    def _cut(
        self, view: MinerView, cost: int, why: str, *, stuck: bool
    ) -> tuple[Action, int] | None:
        refusal = self.refusal(view)
        if refusal is not None:
            self.vetoed += stuck and view.spec.outlet is not None
            return None
        miner_id = view.spec.id
        cold = self.climate.cut_refusal(view) if self.climate is not None else None
        if cold is not None:  # allowed only because an emergency needs it: an alarm
            why = f"{why}; {cold}, but an emergency that nothing else meets"
            self.alarms.append(Alarm("cold-cut", miner_id, why))
        return Action(miner_id, ActionKind.CUT, f"cut: {why}"), cost

    def give_up_floors(  # noqa: PLR0917 - the walk's state, handed over once
        self,
        walk: Sequence[int],
        keep: list[bool],
        lowered: dict[int, tuple[int, int]],
        actions: list[Action | None],
        counts: dict[ActionKind, int],
        total: int,
        budget: int,
    ) -> int:
        """The limit cannot carry every heater floor: the grid wins. Floor keepers sleep,
        least efficient first (never cut: their containers are cold), each container's
        loss an alarm. Returns the new estimate."""
        miners, costs = self.fleet.snapshot.miners, self.fleet.costs
        slept: dict[str, int] = {}
        for i in walk:
            if total <= budget:
                break
            if not keep[i]:
                continue
            view = miners[i]
            spec = view.spec
            if i in lowered:  # sleeping it replaces the lower planned above
                position, saving = lowered[i]
                actions[position] = None
                counts[ActionKind.LOWER] -= 1
                total += saving
            slow = self.due.late(spec)
            if slow and cut_refusal(view) is None:
                if self.cold_ok:  # an emergency that nothing else meets in time
                    cut = self._cut(
                        view,
                        costs[i],
                        "the limit cannot carry the heater floor, and "
                        "a sleep would land after the deadline",
                        stuck=False,
                    )
                    if cut is not None:
                        actions.append(cut[0])
                        counts[ActionKind.CUT] += 1
                        total -= cut[1]
                        slept[spec.container] = slept.get(spec.container, 0) + 1
                        continue
                self.cold_refused = True  # a cut would land in time where this sleep cannot
            reason = f"shed: the limit cannot carry the heater floor in {spec.container}"
            actions.append(Action(spec.id, ActionKind.SLEEP, reason))
            counts[ActionKind.SLEEP] += 1
            saving = costs[i] - spec.traits.sleep_power_w
            total -= saving
            self.late_w += saving if slow else 0
            self.late += slow
            slept[spec.container] = slept.get(spec.container, 0) + 1
        self._floor_alarms(slept)
        return total

    def _floor_alarms(self, slept: dict[str, int]) -> None:
        climate = self.climate
        assert climate is not None
        for container, n in slept.items():
            rules = climate.rules[container]
            self.alarms.append(
                Alarm(
                    "heater-floor",
                    container,
                    f"heater floor not held: {climate.describe(container)}; the limit of "
                    f"{self.limit.limit_w / 1000:g} kW cannot carry {rules.floor_w / 1000:g} kW "
                    f"there; {n} miners shed (asleep with control boards up, unless an "
                    "emergency needed a cut)",
                )
            )


def _in_time_first(fleet: Fleet, due: Due) -> Iterator[int]:
    """The shed order in three tiers: miners that can ramp down before the deadline first;
    then slow ones on a switched outlet (a cut lands at once, so they can still make it);
    then the rest, whose sleep lands late: shedding a slow miner (a stock Antminer restarts
    its mining process for tens of seconds) gives nothing by a ten-second deadline.
    With cold-weather rules, slow miners in cold containers come after the warm ones of
    their tier (sleep rather than cut in the cold), and within each tier miners still
    inside their minimum on-time come last.
    Independent of the limit, so a lower limit still sheds a superset."""
    order, climate, specs = fleet.order, fleet.climate, fleet.specs
    late = due.late_after  # by ramp-down seconds
    if climate is None:
        if due.at is None:
            yield from order
            return
        plugged, behind = [], []
        for i in order:
            spec = specs[i]
            if not late[spec.traits.ramp_down_s]:
                yield i
            elif spec.outlet is not None:
                plugged.append(i)
            else:
                behind.append(i)
        yield from plugged
        yield from behind
        return
    tiers: list[list[int]] = [[] for _ in range(8)]  # (in time, plugged, cold plugged, late)
    miners = fleet.snapshot.miners
    for i in order:
        spec = specs[i]
        if not late[spec.traits.ramp_down_s]:
            tier = 0
        elif spec.outlet is None:
            tier = 3
        else:
            tier = 2 if climate.cold[spec.container] else 1
        tiers[2 * tier + climate.young(miners[i])].append(i)
    for tier_list in tiers:
        yield from tier_list
