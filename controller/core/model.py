"""The frozen data the core decides on: miners, their latest readings, limits and plans."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, NamedTuple

from drivers.types import DriverTraits, MinerReading, Mode

if TYPE_CHECKING:
    from controller.core.curves import Curve
    from controller.core.safety import Safety


@dataclass(frozen=True, slots=True)
class MinerSpec:
    """What the config says about a miner; fixed for the daemon's lifetime."""

    id: str
    driver: str
    container: str
    rated_power_w: int
    efficiency_j_th: float
    traits: DriverTraits
    outlet: str | None = None  # "<pdu>#<outlet>" where a switched PDU outlet feeds it

    def floor_w(self) -> int | None:
        """The draw at the lowest power target the ladder uses, if the family has one."""
        fraction = self.traits.power_floor_fraction
        return None if fraction is None else round(self.rated_power_w * fraction)

    def gentle_w(self) -> int:
        """The draw a gentle (warm) wake starts at: the family's low level, else rated."""
        fraction = self.traits.gentle_fraction
        return self.rated_power_w if fraction is None else round(self.rated_power_w * fraction)


class ActionKind(enum.StrEnum):
    """The escalation ladder, gentle to hard (LOWER, SLEEP, CUT), and its way back."""

    LOWER = "lower"  # the lowest power target: warm, still hashing
    SLEEP = "sleep"  # hashboards off, control board up
    CUT = "cut"  # the PDU outlet off: the last resort
    RAISE = "raise"  # back to the default power target
    WAKE = "wake"
    WARM = "warm"  # a wake with cold boards: at the gentle level or after pre-heat
    RESTORE = "restore"  # the PDU outlet on: the miner boots for minutes
    # A power target chosen by the allocation (core.tuning), on a miner that runs, or set
    # before it wakes (a sleeper woken straight at its target): Action.target_w says which.
    TUNE = "tune"


SHEDS = frozenset({ActionKind.LOWER, ActionKind.SLEEP, ActionKind.CUT})
# The steps that bring a miner back, and the allocation's retunes (a raise or a wake at a
# target, or a lowering that makes room for one): a pause withholds them, and every other
# step the allocation chose (Plan.tuned); so does a meter that reads over the limit.
COMING_BACK = frozenset(
    {ActionKind.WAKE, ActionKind.WARM, ActionKind.RAISE, ActionKind.RESTORE, ActionKind.TUNE}
)


def coming_back_w(spec: MinerSpec, kind: ActionKind) -> int:
    """The draw a step back brings on, as the restart rate (kW per second) counts it: a
    wake or restore its full level, a gentle wake its low level, a raise the difference."""
    if kind is ActionKind.WARM:
        return spec.gentle_w()
    if kind is ActionKind.RAISE:
        low = spec.floor_w() or round(spec.rated_power_w * (spec.traits.gentle_fraction or 0))
        return spec.rated_power_w - low
    return spec.rated_power_w


@dataclass(frozen=True, slots=True)
class OutletReading:
    """What a miner's PDU outlet measures: the truth about its draw."""

    on: bool
    power_w: float
    read_at: datetime


@dataclass(frozen=True, slots=True)
class MinerView:
    """One miner as the supervisor last saw it. Ages are judged by the planner against `now`."""

    spec: MinerSpec
    reading: MinerReading | None = None
    read_at: datetime | None = None
    healthy: bool = True
    health_reason: str | None = None
    mode_since: datetime | None = None  # when the reported mode last changed
    pending: ActionKind | None = None  # a command is in flight
    retry_after: datetime | None = None  # back off after a failed command
    outlet: OutletReading | None = None
    lowered_at: datetime | None = None  # when its power target was lowered (None: default)
    cut_at: datetime | None = None  # when we cut its outlet (None: not cut by us)
    lying: str | None = None  # measured power contradicts its firmware: why we think so
    no_lower: bool = False  # its power target could not be set: the ladder skips that step
    restored_at: datetime | None = None  # its outlet came back on: it boots for minutes
    warming_until: datetime | None = None  # woken gently: held at the low level till then
    held_asleep: bool = False  # an operator holds it asleep: no step ever walks it back
    # Its pending command resumes one sent before a restart: counted as landed, as the run
    # that sent it counted it, even while the miner cannot be read (a stock Antminer
    # restarting its mining process answers nothing for tens of seconds).
    resumed: bool = False
    # The outlet's latest reading when the firmware was last read: a lie is judged on the
    # two in that order, never on an outlet that changed after the firmware spoke.
    outlet_at_read: OutletReading | None = None
    # The power target the allocation set (core.tuning; None: the ladder's, by
    # `lowered_at`), and when it landed (None: still on the wire). A firmware keeps its
    # target across a sleep, so a tuned sleeper wakes at it.
    target_w: int | None = None
    tuned_at: datetime | None = None

    def fresh(self, now: datetime, stale_after: timedelta) -> bool:
        return (
            self.reading is not None
            and self.read_at is not None
            and now - self.read_at <= stale_after
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the planner sees, frozen at `taken_at`."""

    taken_at: datetime
    miners: tuple[MinerView, ...]
    recent_wakes: tuple[tuple[datetime, int], ...] = ()  # (sent at, rated W) of wakes
    last_shed_at: datetime | None = None
    # Indices of `miners` in shed order (planner.shed_order), if the caller keeps them:
    # the fleet does not change, so a daemon sorts it once instead of once per plan.
    order: tuple[int, ...] | None = None
    # Container ambient temperatures: container -> (degC, read at). The cold-weather rules
    # judge their age; a container without one counts as cold.
    ambient: Mapping[str, tuple[float, datetime]] = field(default_factory=dict)
    # Each miner's efficiency curve by id (core.curves; the loop's CurveBook learns them):
    # with PlanRules.tuning, the allocation picks settings on them. None: no curves.
    curves: Mapping[str, Curve] | None = None
    # Miners an operator holds running: the allocation keeps them where they run, and
    # leaves a sleeping one to the ladder (which wakes it first).
    held_running: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Limit:
    """The allowed grid draw at one instant and the reasons that produced it; `due_at` is
    when the draw must be within it (the nearest running deadline), if anything is due."""

    limit_w: int
    reasons: tuple[str, ...]
    due_at: datetime | None = None
    emergency: bool = False  # an emergency signal or a local frequency trip binds now


@dataclass(frozen=True, slots=True)
class PlanRules:
    """Site rules the planner applies. Each value is a safety or wear trade-off."""

    margin_w: int = 0  # keep this far below the limit: meters and firmware disagree
    stale_after: timedelta = timedelta(seconds=15)  # older readings count as unknown
    wake_headroom_w: int = 0  # wake only with this much spare, so noise cannot flap
    wake_window: timedelta = timedelta(seconds=1)
    wake_max_per_window: int = 10  # inrush and pool reconnect storms
    wake_max_w_per_window: int = 50_000
    wake_hold_after_shed: timedelta = timedelta(seconds=30)  # let the draw settle first
    lower_first: bool = True  # the ladder's first step: lower power targets before sleeping
    restore_min_off: timedelta = timedelta(minutes=5)  # an outlet stays off at least this
    # After its outlet is restored a miner boots, initialises its boards and ramps up: it
    # counts at rated power, and is not "stuck", for this long (a cold boot: ~5 minutes).
    restore_boot: timedelta = timedelta(minutes=10)
    # Cold-weather protection, dwell times and warm restarts per container (None: none).
    safety: Safety | None = None
    # The most hashrate under the limit (core.tuning): settings chosen on each miner's
    # curve once no deadline is running (None: off; today's ladder alone).
    tuning: Tuning | None = None


@dataclass(frozen=True, slots=True)
class Tuning:
    """How the allocation moves settings. Each value is a wear or noise trade-off."""

    hysteresis: float = 0.01  # a target under this share more hashrate is not started
    max_changes: int = 200  # settings changed per plan: the fleet converges over cycles
    # A retuned or woken miner stays where it is this long, plus its family's own
    # retarget time (a Braiins autotuner walks ~2 minutes): nothing flaps.
    dwell: timedelta = timedelta(minutes=5)
    # The share of the budget the allocation leaves unspent, at most (the wake headroom
    # where that is less), so the readings' noise does not take a full fleet into a shed.
    headroom: float = 0.02
    # The share of the moving miners' hashrate one plan's lowerings and sleeps may take
    # away: the raises they make room for come a plan later (a swap goes in rounds).
    max_drop: float = 0.25


class Action(NamedTuple):
    """One command for one miner, with the reason the planner chose it.

    A NamedTuple, not a frozen dataclass: a fleet-wide shed builds one per miner between
    a signal and its first command, and tuples are several times cheaper to build (built
    with tuple.__new__, every field must be given: a default is not filled in there).
    """

    miner_id: str
    kind: ActionKind
    reason: str
    target_w: int | None = None  # a TUNE's power target (its reason says it too)


class Alarm(NamedTuple):
    """Something an operator must hear about, from a plan."""

    kind: str  # "cold-cut": an outlet cut below hard-off; "heater-floor": a floor not held
    subject: str  # the miner or the container
    detail: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now, what the fleet should draw after it, and why."""

    actions: tuple[Action, ...]
    budget_w: int
    expected_w: int  # estimated fleet draw once the actions have landed
    feasible: bool  # False when even sleeping everything cannot meet the budget
    notes: tuple[str, ...] = field(default=())
    # What an operator must hear about: a heater floor the limit cannot carry, an outlet
    # cut in a container below its hard-off temperature. Journaled and logged as alarms.
    alarms: tuple[Alarm, ...] = field(default=())
    # The hashrate the fleet should hold once the actions have landed, on the curves
    # (None: planned without curves).
    expected_ths: float | None = None
    # The miners whose actions the allocation chose (core.tuning): a sleep among them is
    # no grid shed, and a paused automation withholds them all.
    tuned: frozenset[str] = field(default=frozenset())


FleetMode = Literal["mining", "sleeping", "unknown", "cut"]
FLEET_MODES: tuple[FleetMode, ...] = ("mining", "sleeping", "unknown", "cut")


def fleet_mode(view: MinerView, now: datetime, stale_after: timedelta) -> FleetMode:
    """What an operator is told a miner is doing; the four split the fleet exactly."""
    if view.cut_at is not None:
        return "cut"
    if view.reading is None or not view.fresh(now, stale_after):
        return "unknown"
    return "sleeping" if view.reading.mode is Mode.SLEEPING else "mining"


def estimate_w(view: MinerView, now: datetime, stale_after: timedelta) -> int:
    """Planning estimate of one miner's draw: worst case where unknown, settled otherwise.

    A command in flight counts as landed (verification and retries catch failures); a
    miner mid-ramp counts at where the ramp ends, not where it is, so a falling draw is
    not shed twice and a rising one is not counted low.
    """
    return Horizon(now, stale_after).estimate(view)


class Horizon:
    """The instants one plan judges against, computed once rather than per miner.

    A reading is fresh if taken at or after `fresh_from`. A mode change less than its ramp
    time ago is still ramping; a reading taken during a ramp says nothing about where the
    ramp ended, so it counts as the ramp's end (rated power going up, residual going down)
    until a later reading arrives. Comparing datetimes is cheaper than subtracting them, and
    this runs for every miner on the path from a signal to its first command.
    """

    __slots__ = ("_ramps", "booted_by", "fresh_from")

    def __init__(
        self, now: datetime, stale_after: timedelta, restore_boot: timedelta = timedelta(0)
    ) -> None:
        self.fresh_from = now - stale_after
        self.booted_by = now - restore_boot  # restored before this: done booting
        self._ramps: dict[int, tuple[timedelta, timedelta]] = {}  # by id(traits)

    def booting(self, view: MinerView) -> bool:
        return view.restored_at is not None and view.restored_at > self.booted_by

    def fresh(self, view: MinerView) -> bool:
        return view.read_at is not None and view.read_at >= self.fresh_from

    def _settled(self, view: MinerView) -> int | None:  # noqa: PLR0911 - one per case
        """The estimate where readings do not decide it: commands in flight count as landed
        (verification and retries catch failures), unknown miners at rated power."""
        spec = view.spec
        pending = view.pending
        if pending is ActionKind.CUT:
            return 0  # a switched outlet lands at once
        outlet = view.outlet
        if outlet is not None and outlet.read_at >= self.fresh_from and not outlet.on:
            return spec.rated_power_w if pending is ActionKind.RESTORE else 0
        fresh = (view.read_at is not None and view.read_at >= self.fresh_from) or view.resumed
        if pending is ActionKind.SLEEP and fresh:
            return spec.traits.sleep_power_w
        if pending is ActionKind.WARM:
            return spec.gentle_w()
        if pending is ActionKind.LOWER and fresh:
            floor = spec.floor_w()
            return spec.rated_power_w if floor is None else floor
        if pending is ActionKind.TUNE and fresh and view.reading is not None:
            # Counted at the higher of where it is and where it goes, until it lands.
            return max(_firmware_w(spec, view.reading), view.target_w or spec.rated_power_w)
        # Booting after a restore: standby draw now, full draw once it mines.
        if pending is not None or not fresh or view.reading is None or self.booting(view):
            return spec.rated_power_w
        return None

    def estimate(self, view: MinerView) -> int:
        """The estimate of one miner's draw. The first test is the case of nearly every
        miner of a fleet (read fresh, nothing in flight, no outlet, not booting), the one
        _settled leaves to the readings."""
        reading, read_at, outlet = view.reading, view.read_at, view.outlet
        if (
            view.pending is None
            and outlet is None
            and reading is not None
            and read_at is not None
            and read_at >= self.fresh_from
            and (view.restored_at is None or view.restored_at <= self.booted_by)
        ):
            return self._ramped(view, reading, _firmware_w(view.spec, reading), read_at)
        settled = self._settled(view)
        if settled is not None:
            return settled
        if reading is None or read_at is None:  # _settled answered these; for the types
            return view.spec.rated_power_w
        # The outlet measures the draw itself; firmware watts are estimates (or lies).
        if outlet is not None and outlet.read_at >= self.fresh_from:
            return self._ramped(view, reading, round(outlet.power_w), outlet.read_at)
        return self._ramped(view, reading, _firmware_w(view.spec, reading), read_at)

    def _ramped(self, view: MinerView, reading: MinerReading, power: int, seen_at: datetime) -> int:
        """`power` as seen at `seen_at`, or where a ramp (or a new power target) under way
        then ends."""
        spec = view.spec
        if view.lowered_at is not None and reading.mode is Mode.MINING:
            power = _lowering(spec, view.lowered_at, power, seen_at)
        tuned_at = view.tuned_at
        if (
            tuned_at is not None
            and reading.mode is Mode.MINING
            and seen_at < tuned_at + timedelta(seconds=spec.traits.retarget_s)
        ):
            # Read before a new target could land: at the higher of the two (a retune up
            # spends the power at once; one down is counted as freed once it shows).
            power = max(power, view.target_w or 0)
        since = view.mode_since
        if since is None:
            return power
        traits = spec.traits
        # By the traits' identity: hashing a frozen dataclass field by field, per miner,
        # cost more than the rest of the estimate. Every spec outlives the horizon.
        ramps = self._ramps.get(id(traits))
        if ramps is None:
            ramps = self._ramps[id(traits)] = (
                timedelta(seconds=traits.ramp_down_s),
                timedelta(seconds=traits.ramp_up_s),
            )
        # Read before the ramp could end (readings are never from the future, so this also
        # covers "still ramping"): expect where the ramp ends, not what was seen on the way.
        if reading.mode is Mode.SLEEPING:
            return traits.sleep_power_w if seen_at < since + ramps[0] else power
        if seen_at < since + ramps[1]:
            # Ramping up: to its lowered target (a gentle wake) if it has one, else rated.
            top = spec.floor_w() if view.lowered_at is not None else view.target_w
            return max(power, top or spec.rated_power_w)
        return power


def _firmware_w(spec: MinerSpec, reading: MinerReading) -> int:
    """The firmware's watts; a running unit whose firmware has none of its own (a nameplate
    estimate, which may be low) at least at its rated power."""
    if not spec.traits.reports_power and reading.mode is not Mode.SLEEPING:
        return max(reading.power_w, spec.rated_power_w)
    return reading.power_w


def _lowering(spec: MinerSpec, lowered_at: datetime, power: int, seen_at: datetime) -> int:
    """A lowered miner read before its new target could land counts at the target."""
    floor = spec.floor_w()
    if floor is not None and seen_at < lowered_at + timedelta(seconds=spec.traits.retarget_s):
        return min(power, floor)
    return power


def measured_w(views: tuple[MinerView, ...], now: datetime, stale_after: timedelta) -> int:
    """Fleet draw as measured: fresh PDU outlet readings where a miner has one, else fresh
    firmware readings as they are, unknown miners at rated power,
    and miners whose firmware reports no watts at rated power too, while running or
    still inside their family's ramp-down after going to sleep."""
    total = 0
    fresh_from = now - stale_after
    for view in views:
        outlet = view.outlet
        if outlet is not None and outlet.read_at >= fresh_from:
            total += round(outlet.power_w) if outlet.on else 0  # measured, not estimated
            continue
        reading, read_at = view.reading, view.read_at
        if reading is not None and read_at is not None and read_at >= fresh_from:  # fresh
            traits = view.spec.traits
            if traits.reports_power or (reading.mode is Mode.SLEEPING and _ramp_done(view, now)):
                total += reading.power_w
            else:  # the firmware has no watts of its own; its estimate may be low
                total += max(reading.power_w, view.spec.rated_power_w)
        else:
            total += view.spec.rated_power_w
    return total


def _ramp_done(view: MinerView, now: datetime) -> bool:
    """Whether a sleeping miner's ramp-down is over by its family's own timing. A stock
    Antminer reads "sleep" as soon as its mining process restarts, but nothing on the unit
    says how far its draw has fallen: only the time since the command began does."""
    since = view.mode_since
    return since is None or (now - since).total_seconds() >= view.spec.traits.ramp_down_s
