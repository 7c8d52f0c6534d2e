"""The closed loop on measured draw: what the meter says that the miners' own figures do
not explain (base load, a liar without a metered outlet, firmware error), learned once the
fleet has settled, and taken off the next plan's budget. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.core.model import MinerView
from drivers.types import Mode

# Learned quickly when it rises, slowly when it falls, so meter noise cannot loosen the
# budget between two readings (the share of the gap closed per second).
OFFSET_DECAY = 0.1


@dataclass(frozen=True, slots=True)
class Offset:
    """The draw the miners' figures do not explain, and when it was last learned."""

    w: int = 0
    learned_at: datetime | None = None


def settled_at(views: tuple[MinerView, ...], last_switch: datetime | None) -> datetime | None:
    """When the last commanded change could still be moving the draw: the latest end of any
    miner's ramp (or retune), or the last outlet switched. None: nothing has moved."""
    latest = last_switch
    for view in views:
        traits = view.spec.traits
        since = view.mode_since
        if since is not None and view.reading is not None:
            ramp = traits.ramp_down_s if view.reading.mode is Mode.SLEEPING else traits.ramp_up_s
            end = since + timedelta(seconds=ramp)
            if latest is None or end > latest:
                latest = end
        if view.lowered_at is not None:
            end = view.lowered_at + timedelta(seconds=traits.retarget_s)
            if latest is None or end > latest:
                latest = end
        if view.cut_at is not None and (latest is None or view.cut_at > latest):
            latest = view.cut_at  # a cut lands at once, but the meter has yet to see it
    return latest


def settled(meter_at: datetime, moved_at: datetime | None, meter_lag: timedelta) -> bool:
    """Whether a meter reading taken at `meter_at` already shows every change made."""
    return moved_at is None or meter_at >= moved_at + meter_lag


def learn(offset: Offset, unexplained_w: int, now: datetime) -> Offset:
    """The next offset: up to the unexplained draw at once, down by a share per second (not
    per cycle: cycles speed up under load)."""
    if unexplained_w > offset.w:
        return Offset(unexplained_w, now)
    since = (now - offset.learned_at).total_seconds() if offset.learned_at else 0.0
    share = min(1.0, OFFSET_DECAY * since)
    return Offset(max(0, round(offset.w + (unexplained_w - offset.w) * share)), now)


# While a shed is on the wire, a draw this far (a share of the limit; at least the plan's
# margin and 1 kW) above the lowest the meter measured since it was sent is a new
# excursion, not the shed landing: a shed's ramps only bring the draw down, and meter noise
# stays well inside.
EXCURSION_RISE_FRACTION = 0.01
EXCURSION_RISE_MIN_W = 1000


@dataclass(frozen=True, slots=True)
class Excursion:
    """Whether the metered draw is in an excursion while commands are out (the supervisor
    then plans every tick), and what a rise is judged from: the lowest draw the meter
    measured since the plan on the wire was sent, each sample counted at the higher of it
    and the one before, so one low glitch does not lower it."""

    lowest_w: int | None = None
    last_w: int | None = None
    on: bool = False


def sent(state: Excursion, measured_w: int | None) -> Excursion:
    """A plan goes on the wire with the meter at `measured_w` (None: not metered, or
    stale): a rise is judged from there. An excursion goes on through the plans it makes,
    until the draw is back under the limit."""
    return Excursion(measured_w, measured_w, on=state.on and measured_w is not None)


def watch(
    state: Excursion, measured_w: int | None, limit_w: int, *, margin_w: int, in_flight: bool
) -> Excursion:
    """The next state, on one metered sample (None: no meter, or a stale one: no rise can
    be judged). An excursion starts when the draw is over the limit and has risen above
    the lowest since the send, and lasts until the draw is back under the limit, unknown,
    or nothing is in flight."""
    if measured_w is None:
        return Excursion(state.lowest_w, None)
    floor = measured_w if state.last_w is None else max(measured_w, state.last_w)
    lowest = floor if state.lowest_w is None else min(state.lowest_w, floor)
    if measured_w <= limit_w or not in_flight:
        return Excursion(lowest, measured_w)
    if state.on:
        return Excursion(lowest, measured_w, on=True)
    rise = max(margin_w, EXCURSION_RISE_MIN_W, round(EXCURSION_RISE_FRACTION * limit_w))
    return Excursion(lowest, measured_w, on=measured_w > lowest + rise)
