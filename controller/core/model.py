"""The frozen data the core decides on: miners, their latest readings, limits and plans."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from drivers.types import DriverTraits, MinerReading, Mode


@dataclass(frozen=True, slots=True)
class MinerSpec:
    """What the config says about a miner; fixed for the daemon's lifetime."""

    id: str
    driver: str
    container: str
    rated_power_w: int
    efficiency_j_th: float
    traits: DriverTraits


class ActionKind(enum.StrEnum):
    SLEEP = "sleep"
    WAKE = "wake"


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


@dataclass(frozen=True, slots=True)
class Limit:
    """The allowed grid draw at one instant and the reasons that produced it; `due_at` is
    when the draw must be within it (the nearest running deadline), if anything is due."""

    limit_w: int
    reasons: tuple[str, ...]
    due_at: datetime | None = None


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


class Action(NamedTuple):
    """One command for one miner, with the reason the planner chose it.

    A NamedTuple, not a frozen dataclass: a fleet-wide shed builds one per miner between
    a signal and its first command, and tuples are several times cheaper to build.
    """

    miner_id: str
    kind: ActionKind
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now, what the fleet should draw after it, and why."""

    actions: tuple[Action, ...]
    budget_w: int
    expected_w: int  # estimated fleet draw once the actions have landed
    feasible: bool  # False when even sleeping everything cannot meet the budget
    notes: tuple[str, ...] = field(default=())


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

    __slots__ = ("_ramps", "fresh_from")

    def __init__(self, now: datetime, stale_after: timedelta) -> None:
        self.fresh_from = now - stale_after
        self._ramps: dict[DriverTraits, tuple[timedelta, timedelta]] = {}

    def fresh(self, view: MinerView) -> bool:
        return view.read_at is not None and view.read_at >= self.fresh_from

    def estimate(self, view: MinerView) -> int:
        spec = view.spec
        read_at = view.read_at
        fresh = read_at is not None and read_at >= self.fresh_from
        pending = view.pending
        if pending is ActionKind.SLEEP:
            return spec.traits.sleep_power_w if fresh else spec.rated_power_w
        reading = view.reading
        if pending is ActionKind.WAKE or not fresh or reading is None or read_at is None:
            return spec.rated_power_w
        power = reading.power_w
        if not spec.traits.reports_power and reading.mode is not Mode.SLEEPING:
            power = max(power, spec.rated_power_w)  # a nameplate estimate may be low
        since = view.mode_since
        if since is None:
            return power
        ramps = self._ramps.get(spec.traits)
        if ramps is None:
            traits = spec.traits
            ramps = self._ramps[traits] = (
                timedelta(seconds=traits.ramp_down_s),
                timedelta(seconds=traits.ramp_up_s),
            )
        # Read before the ramp could end (readings are never from the future, so this also
        # covers "still ramping"): expect where the ramp ends, not what was seen on the way.
        if reading.mode is Mode.SLEEPING:
            return spec.traits.sleep_power_w if read_at < since + ramps[0] else power
        if read_at < since + ramps[1]:
            return max(power, spec.rated_power_w)
        return power


def measured_w(views: tuple[MinerView, ...], now: datetime, stale_after: timedelta) -> int:
    """Fleet draw as measured: fresh readings as they are, unknown miners at rated power,
    and miners whose firmware reports no watts at rated power too, while running or
    still inside their family's ramp-down after going to sleep."""
    total = 0
    for view in views:
        reading = view.reading
        if reading is not None and view.fresh(now, stale_after):
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
