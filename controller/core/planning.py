"""What the planner's two phases (shed.py, wake.py) share: the fleet they walk, the
deadline they judge ramps against, and the tests they apply per miner. Pure.

These run for every miner between a signal and its first command, so what depends only
on a miner's family (its ramp against the deadline) is judged once per family and plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from controller.core.model import Horizon, MinerSpec, MinerView, Snapshot
from controller.core.safety import Climate
from drivers.types import Mode

UNKNOWN_REASON = "shed: no fresh reading, counted at rated power"
FLOOR_WAKE = "keeps the heater floor in"  # a wake for heat: never withheld by a pause
tuple_new = tuple.__new__  # builds an Action without NamedTuple's Python-level __new__


class Fleet(NamedTuple):
    """What both phases walk: the snapshot, its horizon, each miner's cost, shed order,
    and the cold-weather judgement of every container (None: no such rules); and, from
    the one pass over the views (survey), each miner's spec, whether it runs and obeys,
    and whether a sleep may be sent to it now (ready)."""

    snapshot: Snapshot
    horizon: Horizon
    costs: list[int]
    order: Sequence[int]
    climate: Climate | None
    specs: list[MinerSpec]
    obeying: list[bool]  # runs_and_obeys
    ready: list[bool]  # obeying, not cut by us, not backing off after a failed command


class Survey(NamedTuple):
    costs: list[int]
    specs: list[MinerSpec]
    obeying: list[bool]
    ready: list[bool]


def survey(snapshot: Snapshot, horizon: Horizon) -> Survey:
    """One pass over the views for what every later pass asks of them. The views are the
    telemetry's, rebuilt with each reading and spread over the heap: measured at 10,000
    miners, each pass that touched them cost more in memory than in the tests it made,
    so the walks that follow read only these lists and the specs (fixed since start-up)."""
    now, fresh_from, estimate = snapshot.taken_at, horizon.fresh_from, horizon.estimate
    costs: list[int] = []
    specs: list[MinerSpec] = []
    obeying: list[bool] = []
    ready: list[bool] = []
    sleeping = Mode.SLEEPING
    for view in snapshot.miners:
        costs.append(estimate(view))
        specs.append(view.spec)
        reading, read_at = view.reading, view.read_at
        obeys = (  # runs_and_obeys, inline
            view.pending is None
            and reading is not None
            and reading.mode is not sleeping
            and view.lying is None
            and read_at is not None
            and read_at >= fresh_from
        )
        obeying.append(obeys)
        ready.append(
            obeys and view.cut_at is None and (view.retry_after is None or now >= view.retry_after)
        )
    return Survey(costs, specs, obeying, ready)


class Due:
    """A plan's deadline (None: nothing due) and what lands after it. A step that takes
    `s` seconds from `now` lands late if `now + s > due_at`, that is `s > due_at - now`:
    `late_after[s]` judges it once per duration (a family's ramp or retarget time), a
    dictionary look-up per miner rather than datetime arithmetic."""

    __slots__ = ("at", "late_after", "now")

    def __init__(self, now: datetime, due_at: datetime | None) -> None:
        self.now = now
        self.at = due_at
        self.late_after: dict[float, bool] = _LateAfter(None if due_at is None else due_at - now)

    def late(self, spec: MinerSpec) -> bool:
        """Its sleep (its ramp down) would land after the deadline."""
        return self.late_after[spec.traits.ramp_down_s]


class _LateAfter(dict[float, bool]):
    """Seconds -> whether a step taking that long from now misses the deadline."""

    __slots__ = ("_left",)

    def __init__(self, left: timedelta | None) -> None:
        super().__init__()
        self._left = left

    def __missing__(self, seconds: float) -> bool:
        late = self[seconds] = self._left is not None and timedelta(seconds=seconds) > self._left
        return late


def runs_and_obeys(view: MinerView, horizon: Horizon) -> bool:
    reading = view.reading
    return (
        view.pending is None
        and reading is not None
        and reading.mode is not Mode.SLEEPING
        and view.lying is None
        and horizon.fresh(view)
    )


def may_command(view: MinerView, now: datetime) -> bool:
    return view.pending is None and (view.retry_after is None or now >= view.retry_after)


def may_wake(view: MinerView, now: datetime) -> bool:
    return not view.held_asleep and may_command(view, now)
