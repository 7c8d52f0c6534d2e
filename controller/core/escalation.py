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

    Only once the family's own ramp (plus `grace`) has had time to land, and only on fresh
    readings: a unit still ramping down is not a liar. And the outlet must already have
    measured the draw when the firmware last spoke (`outlet_at_read`), and still measure
    it: a site power blip wakes every unit at once, and an outlet that reads high only
    since the firmware was last asked has caught a change, not a lie. That earlier reading
    counts if it was taken after the ramp landed, or just before a firmware read that
    claimed the change done (its own watts already at the residual or the target).
    """
    outlet, before, reading = view.outlet, view.outlet_at_read, view.reading
    fresh_from = now - stale_after
    if outlet is None or reading is None or not outlet.on or outlet.read_at < fresh_from:
        return None
    read_at = view.read_at
    if read_at is None or read_at < fresh_from or outlet.read_at - read_at > LIE_MAX_SKEW:
        return None
    if before is None or not before.on:
        return None
    spec = view.spec
    slack = max(LIE_MIN_EXCESS_W, LIE_EXCESS_FRACTION * spec.rated_power_w)
    measured = min(outlet.power_w, before.power_w)  # both readings must show the draw
    just_before = read_at - before.read_at <= LIE_MAX_SKEW
    if reading.mode is Mode.SLEEPING and view.mode_since is not None:
        landed = view.mode_since + timedelta(seconds=spec.traits.ramp_down_s) + grace
        residual = spec.traits.sleep_power_w + slack
        claimed = just_before and reading.power_w <= residual
        if (
            outlet.read_at >= landed
            and measured > residual
            and (before.read_at >= landed or claimed)
        ):
            return f"reports asleep; its outlet measures {outlet.power_w:.0f} W"
    floor = spec.floor_w()
    if reading.mode is Mode.MINING and view.lowered_at is not None and floor is not None:
        landed = view.lowered_at + timedelta(seconds=spec.traits.retarget_s) + grace
        # A firmware that itself reports the excess is not lying: it lost its target
        # (target_lost), as a unit does when a hand on its web UI raises it.
        honest = spec.traits.reports_power and reading.power_w > floor + slack
        in_order = before.read_at >= landed or just_before
        if outlet.read_at >= landed and measured > floor + slack and in_order and not honest:
            return f"reports a {floor} W power target; its outlet measures {outlet.power_w:.0f} W"
    return None


def target_lost(view: MinerView) -> str | None:
    """Why this miner's latest reading shows it off the power target the ladder lowered it
    to, or None: its firmware, read after the target had time to land (retarget_s plus
    LIE_MAX_SKEW), reports mining well above the floor. A hand on its web UI, or a
    firmware that forgets targets across a reboot, brings it back at its default; the
    ladder must then lower it again, not count it as lowered (telemetry acts on two such
    readings in a row: one overshoot is not a loss). Only where the firmware reports its
    own watts: an estimate cannot tell."""
    spec, reading, lowered_at = view.spec, view.reading, view.lowered_at
    floor = spec.floor_w()
    what = "lowered"
    if lowered_at is None and view.target_w is not None and view.tuned_at is not None:
        # A target the allocation chose (core.tuning) is lost the same way.
        lowered_at, floor, what = view.tuned_at, view.target_w, "retuned"
    if lowered_at is None or floor is None or reading is None or view.read_at is None:
        return None
    if view.pending is not None or reading.mode is not Mode.MINING:
        return None
    if not spec.traits.reports_power:
        return None
    if view.read_at < lowered_at + timedelta(seconds=spec.traits.retarget_s) + LIE_MAX_SKEW:
        return None
    slack = max(LIE_MIN_EXCESS_W, LIE_EXCESS_FRACTION * spec.rated_power_w)
    if reading.power_w <= floor + slack:
        return None
    return f"reports {reading.power_w} W, above the {floor} W power target it was {what} to"


def cut_refusal(view: MinerView) -> str | None:
    """Why this miner's outlet cannot be cut, or None if it can. (Whether the cold forbids
    it is the safety rules' judgement: controller.core.safety.Climate.cut_refusal.)"""
    if view.spec.outlet is None:
        return "no switched outlet"
    outlet = view.outlet
    if outlet is not None and not outlet.on:
        return "outlet already off"
    return None
