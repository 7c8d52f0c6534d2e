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
