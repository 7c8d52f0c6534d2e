"""The allocation in the plan: the most hashrate under the limit once no deadline runs.
Pure; planner.plan calls it in place of the within-budget phase alone when the site tunes.

Deadlines come first: while one runs, or the fleet is over its budget, the plan is the
ladder's (shed.py), exactly as without tuning: the fast steps meet the deadline, whatever
they cost in hashrate (a 10 s deadline sleeps fast LuxOS units and keeps slow, less
efficient ones running). Once the fleet is within its budget and nothing is due, the
miners the allocation manages are moved toward core.allocation's target, at most
`Tuning.max_changes` per plan, each move journaled with its reason (`retune to 2600 W:
+37.3 TH/s per kW`); the within-budget phase (wake.py) walks back every other miner.

Managed: a miner with a curve, in a container the cold rules do not hold (there the
ladder and the heater floors rule, unchanged), not cut, lying, unable to take a power
target, or held asleep. A family whose power target the ladder uses (LuxOS profiles,
Braiins power targets) may take any setting on its curve; any other family is on or
asleep only (a stock Antminer still in its gentle low mode is the ladder's to raise).
Of those, a miner is free to move once it is read fresh, nothing is in flight or backing
off, and it has sat where it is for its dwell (Tuning.dwell since it woke, plus its
family's retarget time since a retune); a sleeper once its ramp down is over and, in
the cold, its boards are warm and its rest is done (a grant must bring the farm back at
once, as the ladder would). The rest of the managed miners hold their setting.

The moves: a power-target miner is retuned (TUNE), a sleeper of such a family woken
straight at its target (the target is set before the wake, as a gentle wake does); an
on-off miner is woken (WAKE); a running miner the allocation would rather not run is put
to sleep (SLEEP, not a grid shed: it holds no wake and withdraws no restore). Raises are
paid only from power spare now: what a lowering or a sleep frees is spent by a later
plan, once the readings show it (a Braiins unit retargets over two minutes; a woken
LuxOS unit is up in seconds). So a swap goes in rounds, each taking away at most
Tuning.max_drop of the moving miners' hashrate, rather than emptying the farm at once.
Wakes stay within the wake rate limits.

The budget is the plan's budget less a headroom (the wake headroom, or Tuning.headroom
of the budget where that is less: the readings' noise must not push a full fleet into a
shed) and less everything it does not
move, where the free miners' estimated draw above (or below) their curves' figures
counts as draw it does not move: a curve that reads low costs budget, never the limit.
A target that gains less than the hysteresis moves nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from controller.core.allocation import Allocation, MinerChoice, Move, allocate
from controller.core.curves import ASLEEP, Curve, nominal_w
from controller.core.model import (
    Action,
    ActionKind,
    Limit,
    MinerSpec,
    MinerView,
    Plan,
    PlanRules,
    Snapshot,
    Tuning,
    coming_back_w,
)
from controller.core.planning import Fleet, tuple_new
from controller.core.wake import wake
from drivers.types import DriverTraits, Mode

HELD_AFTER_SHED = "retune held after a shed: the draw settles first"
FREE, HOLD, LADDER = "free", "hold", "ladder"  # _Judge.free's verdicts


class Steps:
    """What the allocation needs of one curve, worked out once per plan: each setting's
    target watts, and the settings a miner may take (None: any; on-off families: asleep
    or their top setting)."""

    __slots__ = ("allowed", "curve", "nominal", "tunable")

    def __init__(self, curve: Curve, tunable: bool) -> None:
        self.curve = curve
        self.tunable = tunable
        self.nominal = tuple(nominal_w(s) for s in curve.settings)
        self.allowed: tuple[int, ...] | None = None if tunable else (0, len(curve.settings) - 1)

    def nearest(self, watts: int) -> int:
        """The running setting whose target is nearest `watts` (the higher of two as near)."""
        nominal = self.nominal
        best, gap = 1, abs(nominal[1] - watts)
        for i in range(2, len(nominal)):
            d = abs(nominal[i] - watts)
            if d <= gap:
                best, gap = i, d
        return best

    def index(self, view: MinerView) -> int:
        """Where a miner sits on this curve: asleep; the target the allocation set; the
        ladder's low level (lowered, or a gentle start); else its default, rated."""
        reading = view.reading
        if reading is not None and reading.mode is Mode.SLEEPING:
            return 0
        spec = view.spec
        if view.target_w is not None:
            return self.nearest(view.target_w)
        if view.lowered_at is not None:
            return self.nearest(spec.floor_w() or spec.gentle_w())
        return (
            len(self.nominal) - 1
            if spec.rated_power_w >= self.nominal[-1]
            else (self.nearest(spec.rated_power_w))
        )


class Shapes(dict[int, Steps]):
    """Steps by curve identity, built on first use: curves are shared per model."""

    def of(self, curve: Curve, spec: MinerSpec) -> Steps:
        found = self.get(id(curve))
        if found is None or found.curve is not curve:
            found = self[id(curve)] = Steps(curve, spec.traits.power_floor_fraction is not None)
        return found


def tune(  # noqa: PLR0911 - each early return is the ladder's plan, for its own reason
    fleet: Fleet, total: int, budget: int, limit: Limit, rules: PlanRules
) -> Plan:
    """The within-budget plan with the allocation: wake.py for the miners it does not
    manage, the allocation's first moves for those it does."""
    snapshot, tuning, curves = fleet.snapshot, rules.tuning, fleet.snapshot.curves
    if tuning is None or curves is None:
        return wake(fleet, total, budget, rules)  # retuned targets walked back too
    if limit.due_at is not None:
        # A deadline runs: the ladder's way back, as ever, except that a target the
        # allocation chose is its to move, once the deadline is met.
        miners = snapshot.miners
        kept = [i for i in fleet.order if not _retuned(miners[i])]
        return wake(fleet._replace(order=kept), total, budget, rules)
    shapes = Shapes()
    ours, choices, cost_of, free_curve_w = _choices(fleet, curves, tuning, shapes)
    free_cost = sum(cost_of.values())
    base = wake(fleet._replace(order=[i for i in fleet.order if not ours[i]]), total, budget, rules)
    shed_at = snapshot.last_shed_at
    if shed_at is not None and snapshot.taken_at - shed_at < rules.wake_hold_after_shed:
        return base if base.notes else _with_note(base, HELD_AFTER_SHED)
    if not choices:
        return base
    # What the allocation does not move: everything else as the base plan leaves it, and
    # the free miners' draw beyond what their curves say.
    # The noise the headroom covers grows with the root of the fleet, not with it: the
    # wake headroom where that is the smaller (a large farm), the share where not.
    headroom = min(float(rules.wake_headroom_w), tuning.headroom * budget)
    allowed_w = budget - headroom - (base.expected_w - free_cost)
    allowed_w -= free_cost - free_curve_w
    found = allocate(
        choices, allowed_w, hysteresis=tuning.hysteresis, max_changes=tuning.max_changes
    )
    if found.target_ths - found.current_ths <= tuning.hysteresis * found.current_ths:
        # Within the budget (over it, the ladder would have planned) and too little to
        # gain: a fleet between the headroom and the budget is left where it is, so the
        # readings' noise moving the estimate does not retune anything.
        return base
    by_id = {v.spec.id: v.spec for v in snapshot.miners}
    room = _wake_room(snapshot, base, rules, by_id)
    moves = _taken(found, choices, allowed_w, room, by_id, shapes, tuning.max_drop, cost_of)
    if not moves:
        return base
    note = f"retune: {len(moves)} of {len(found.moves)} moves toward {found.target_ths:.1f} TH/s"
    return Plan(
        (*base.actions, *(action for action, _ in moves)),
        budget,
        base.expected_w + round(sum(delta for _, delta in moves)),
        feasible=True,
        notes=(*base.notes, note),
        alarms=base.alarms,
        tuned=frozenset(action.miner_id for action, _ in moves),
    )


def _retuned(view: MinerView) -> bool:
    """Running at a target the allocation chose (wake.py would raise it to rated)."""
    reading = view.reading
    return (
        view.target_w is not None
        and view.lowered_at is None
        and reading is not None
        and reading.mode is not Mode.SLEEPING
    )


def _choices(
    fleet: Fleet, curves: Mapping[str, Curve], tuning: Tuning, shapes: Shapes
) -> tuple[list[bool], list[MinerChoice], dict[str, int], float]:
    """One pass over the fleet: which miners the allocation manages (module docstring);
    the free ones as the allocator sees them; each one's estimated draw, and what their
    curves say they draw. It runs for every miner each plan, so what depends on a curve is
    looked up once per curve."""
    cold = fleet.climate.cold if fleet.climate is not None else {}
    judge = _Judge(fleet, tuning)
    free = judge.free
    # The case of nearly every miner, judged inline (as planning.survey does): running,
    # read fresh, nothing in flight, no mark, settled long since; else _Judge.free says.
    fresh_from, settled_by = judge.fresh_from, judge.settled_by
    held, mining = judge.running, Mode.MINING
    miners = fleet.snapshot.miners
    ours = [False] * len(miners)
    choices: list[MinerChoice] = []
    append = choices.append
    cost_of: dict[str, int] = {}
    free_curve_w = 0.0
    costs = fleet.costs
    get_curve, get_steps = curves.get, shapes.get
    for i, view in enumerate(miners):
        spec = view.spec
        curve = get_curve(spec.id)
        if curve is None:
            continue
        steps = get_steps(id(curve))
        if steps is None or steps.curve is not curve:
            steps = shapes.of(curve, spec)
        if (
            len(steps.nominal) < 2  # noqa: PLR2004 - asleep and a step at least
            or view.cut_at is not None
            or view.lying is not None
            or view.no_lower
            or view.held_asleep
            or (not steps.tunable and view.lowered_at is not None)
            or (cold and cold.get(spec.container, False))
        ):
            continue
        reading, read_at, since = view.reading, view.read_at, view.mode_since
        if (
            reading is not None
            and reading.mode is mining
            and read_at is not None
            and read_at >= fresh_from
            and view.pending is None
            and view.retry_after is None
            and view.restored_at is None
            and view.warming_until is None
            and view.lowered_at is None
            and (since is None or since <= settled_by)
            and (view.tuned_at is None or view.tuned_at <= settled_by)
            and judge.climate is None
            and spec.id not in held
        ):
            verdict = FREE
        else:
            verdict = free(view)
        if verdict is LADDER:
            continue  # only the ladder knows how to move it now (a warm wake, say)
        ours[i] = True
        if verdict is not FREE:
            continue
        here = steps.index(view)
        append(tuple_new(MinerChoice, (spec.id, curve, here, steps.allowed)))
        cost_of[spec.id] = costs[i]
        free_curve_w += curve.settings[here].power_w
    return ours, choices, cost_of, free_curve_w


def _taken(  # noqa: PLR0917 - the plan's state, handed over once
    found: Allocation,
    choices: Sequence[MinerChoice],
    allowed_w: float,
    room: tuple[int, int],
    specs: Mapping[str, MinerSpec],
    shapes: Shapes,
    max_drop: float,
    costs: Mapping[str, int],
) -> list[tuple[Action, float]]:
    """The allocation's moves this plan makes, each with its change of draw. A raise is
    paid only from power spare now (what this plan's lowerings free lands later: a
    Braiins unit retargets for two minutes) and within the wake rate limit; one that
    cannot be paid is left to a later plan."""
    slots, watts = room
    spare = allowed_w - found.current_w
    # What this plan's lowerings and sleeps may take away: the raises they make room for
    # come a plan later, so a swap goes in rounds rather than emptying the farm at once.
    droppable = max_drop * found.current_ths
    by_id = {c.miner_id: c for c in choices}
    taken: list[tuple[Action, float]] = []
    for move in found.moves:
        choice = by_id[move.miner_id]
        spec = specs[move.miner_id]
        action, counted = _action(move, spec, shapes.of(choice.curve, spec))
        if move.delta_ths < 0:
            if -move.delta_ths > droppable and taken:
                continue
            droppable += move.delta_ths
        if move.delta_w > 0:
            # Paid at the more of the curve's step and what the estimate will count while
            # it lands (the target, or rated for a wake): a LuxOS unit runs the largest
            # profile under its target, so its learned step is less than the estimate's.
            cost = max(move.delta_w, counted - costs[move.miner_id])
            waking = move.from_index == 0
            if cost > spare or (waking and slots <= 0) or watts < cost:
                continue  # the spare power or the rate limit (kW per window): a later plan
            spare -= cost
            watts -= round(cost)
            slots -= waking
        taken.append((action, move.delta_w))
    return taken


def _action(move: Move, spec: MinerSpec, steps: Steps) -> tuple[Action, int]:
    """The command a move is, and the draw the estimate counts the miner at while it
    lands (core.model.Horizon: a tune at its target, a wake at rated)."""
    if move.to_index == 0:
        return Action(move.miner_id, ActionKind.SLEEP, move.reason, None), 0
    if steps.tunable:
        target = steps.nominal[move.to_index]
        reason = move.reason.replace("retune:", f"retune to {target} W:", 1)
        if move.from_index == 0:
            reason = f"{reason} (woken at it)"
        return Action(move.miner_id, ActionKind.TUNE, reason, target), target
    return Action(move.miner_id, ActionKind.WAKE, f"{move.reason} (woken)", None), (
        spec.rated_power_w
    )


def current_index(view: MinerView, curve: Curve) -> int:
    """Where a miner sits on its curve (Steps.index, for one miner)."""
    return Steps(curve, view.spec.traits.power_floor_fraction is not None).index(view)


def expected_ths(snapshot: Snapshot, actions: Sequence[Action]) -> float | None:
    """The hashrate the fleet holds once `actions` have landed, on the curves (None: no
    curves). Off the path to the first command: the loop asks after sending."""
    curves = snapshot.curves
    if curves is None:
        return None
    after = {a.miner_id: a for a in actions}
    shapes = Shapes()
    total = 0.0
    for view in snapshot.miners:
        curve = curves.get(view.spec.id)
        if curve is None:
            continue
        steps = shapes.of(curve, view.spec)
        here = steps.index(view) if view.cut_at is None else 0
        action = after.get(view.spec.id)
        if action is not None:
            here = _index_after(view, steps, action, here)
        total += curve.settings[here].hashrate_ths
    return total


def _index_after(view: MinerView, steps: Steps, action: Action, here: int) -> int:
    kind, spec = action.kind, view.spec
    if kind in {ActionKind.SLEEP, ActionKind.CUT}:
        return 0
    if kind is ActionKind.TUNE and action.target_w is not None:
        return steps.nearest(action.target_w)
    if kind is ActionKind.LOWER:
        return steps.nearest(spec.floor_w() or spec.rated_power_w)
    if kind is ActionKind.WARM:
        return steps.nearest(spec.gentle_w())
    if kind is ActionKind.RAISE or here == 0:  # a wake or restore comes back at its default
        target = view.target_w if kind is ActionKind.WAKE and view.target_w else None
        return steps.nearest(target or spec.rated_power_w)
    return here


class _Judge:
    """Whether a managed miner is free to move: read fresh, nothing in flight or backing
    off, booted, warmed up, and settled where it is for its dwell. Its instants are
    worked out once per plan and family (this runs for every miner of the fleet)."""

    __slots__ = (
        "_marks",
        "booted_by",
        "climate",
        "dwell_from",
        "fresh_from",
        "now",
        "running",
        "settled_by",
        "tuning",
    )

    def __init__(self, fleet: Fleet, tuning: Tuning) -> None:
        self.now = fleet.snapshot.taken_at
        self.running = fleet.snapshot.held_running
        self.fresh_from = fleet.horizon.fresh_from
        self.booted_by = fleet.horizon.booted_by
        self.climate = fleet.climate
        self.dwell_from = self.now - tuning.dwell
        # Changed before this, a miner is settled whatever its family's retarget time.
        slowest = max((s.traits.retarget_s for s in fleet.specs), default=0.0)
        self.settled_by = self.dwell_from - timedelta(seconds=slowest)
        self.tuning = tuning
        self._marks: dict[int, tuple[datetime, datetime, datetime]] = {}

    def marks(self, traits: DriverTraits) -> tuple[datetime, datetime, datetime]:
        """Asleep since before the first, its ramp down is over; retuned before the
        second, its dwell and retarget are; lowered before the third, its retarget is."""
        found = self._marks.get(id(traits))
        if found is None:
            retarget = timedelta(seconds=traits.retarget_s)
            found = self._marks[id(traits)] = (
                self.now - timedelta(seconds=traits.ramp_down_s),
                self.dwell_from - retarget,
                self.now - retarget,
            )
        return found

    def free(self, view: MinerView) -> str:
        """FREE to move; HOLD where it is (the allocation counts it as fixed draw); or
        LADDER: the allocation leaves it to wake.py, which knows how to move it (a
        sleeper with cold boards wakes gently, after its rest; a miner an operator holds
        running is woken first)."""
        reading, now = view.reading, self.now
        read_at = view.read_at
        asleep = reading is not None and reading.mode is Mode.SLEEPING
        if view.spec.id in self.running:
            # Held running: kept where it runs, unless below its default (lowered by a
            # shed, retuned), which the ladder raises, as it wakes a held sleeper first.
            below = view.lowered_at is not None or view.target_w is not None
            return LADDER if asleep or below else HOLD
        if (
            reading is None
            or read_at is None
            or read_at < self.fresh_from
            or view.pending is not None
            or (view.retry_after is not None and now < view.retry_after)
            or (view.restored_at is not None and view.restored_at > self.booted_by)
            or (view.warming_until is not None and now < view.warming_until)
        ):
            return HOLD
        rested_by, tuned_by, retargeted_by = self.marks(view.spec.traits)
        since = view.mode_since
        climate = self.climate
        if asleep:
            # A sleeper wakes as soon as it fits, as the ladder would wake it: a grant must
            # bring the farm back now. (A sleep the allocation chose is no flap: it swapped a
            # less efficient miner out for more hashrate, and only a change of budget or
            # curves, beyond the hysteresis, brings it back.)
            if climate is not None and (
                climate.boards_cold(view, fresh=True) is not None or not climate.rested(view, since)
            ):
                return LADDER
            return FREE if since is None or since <= rested_by else HOLD
        if (
            (since is not None and since > self.dwell_from)
            or (climate is not None and climate.young(view))  # its minimum on-time
            or (view.tuned_at is not None and view.tuned_at > tuned_by)
            or (view.lowered_at is not None and view.lowered_at > retargeted_by)
        ):
            return HOLD
        return FREE


def _wake_room(
    snapshot: Snapshot, base: Plan, rules: PlanRules, specs: Mapping[str, MinerSpec]
) -> tuple[int, int]:
    """Wakes and watts the rate limit leaves this plan after the base plan's wakes."""
    now = snapshot.taken_at
    recent = [(t, w) for t, w in snapshot.recent_wakes if now - t < rules.wake_window]
    woken = [a for a in base.actions if a.kind is not ActionKind.SLEEP]
    slots = rules.wake_max_per_window - len(recent) - len(woken)
    watts = rules.wake_max_w_per_window - sum(w for _, w in recent)
    watts -= sum(coming_back_w(specs[a.miner_id], a.kind) for a in woken)
    return slots, watts


def _with_note(plan: Plan, note: str) -> Plan:
    return replace(plan, notes=(*plan.notes, note))


__all__ = [
    "ASLEEP",
    "HELD_AFTER_SHED",
    "Shapes",
    "Steps",
    "current_index",
    "expected_ths",
    "tune",
]
