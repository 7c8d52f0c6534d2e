"""The escalation ladder's judgements that are not plans: who is lying, who may be cut.

Pure: the supervisor calls these with the latest views and `now`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from controller.core.model import MinerView
from drivers.types import Mode

# Measured draw this far above what the firmware claims is a lie, not meter error: an
# outlet meter is good to a few percent, and a sleeping unit's residual is tens of watts.
LIE_MIN_EXCESS_W = 150
LIE_EXCESS_FRACTION = 0.10
# Both readings must describe the same moment: a firmware reading older than this against
# the outlet's could be from before someone (or a reboot) woke the unit.
LIE_MAX_SKEW = timedelta(seconds=3)


def lie(view: MinerView, now: datetime, stale_after: timedelta, grace: timedelta) -> str | None:
    """Why this miner's outlet contradicts its firmware, or None.

    Only after the family's own ramp (plus `grace`) has had time to land, and only on
    readings of both that are fresh: a unit still ramping down is not a liar.
    """
    outlet, reading = view.outlet, view.reading
    fresh_from = now - stale_after
    if outlet is None or reading is None or not outlet.on or outlet.read_at < fresh_from:
        return None
    if view.read_at is None or view.read_at < fresh_from:
        return None
    if outlet.read_at - view.read_at > LIE_MAX_SKEW:
        return None
    spec = view.spec
    slack = max(LIE_MIN_EXCESS_W, LIE_EXCESS_FRACTION * spec.rated_power_w)
    if reading.mode is Mode.SLEEPING and view.mode_since is not None:
        landed = view.mode_since + timedelta(seconds=spec.traits.ramp_down_s) + grace
        if outlet.read_at >= landed and outlet.power_w > spec.traits.sleep_power_w + slack:
            return f"reports asleep; its outlet measures {outlet.power_w:.0f} W"
    floor = spec.floor_w()
    if reading.mode is Mode.MINING and view.lowered_at is not None and floor is not None:
        landed = view.lowered_at + timedelta(seconds=spec.traits.retarget_s) + grace
        if outlet.read_at >= landed and outlet.power_w > floor + slack:
            return f"reports a {floor} W power target; its outlet measures {outlet.power_w:.0f} W"
    return None


def cut_refusal(view: MinerView) -> str | None:
    """Why this miner's outlet cannot be cut, or None if it can. (Whether the cold forbids
    it is the safety rules' judgement: controller.core.safety.Climate.cut_refusal.)"""
    if view.spec.outlet is None:
        return "no switched outlet"
    outlet = view.outlet
    if outlet is not None and not outlet.on:
        return "outlet already off"
    return None
