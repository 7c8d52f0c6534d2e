"""The operator's say in a plan: holds and the automation switch, applied. Pure.

The desk (controller/intake/desk.py) keeps these durable; here they only shape what the
planner decided. Grid limits always win: a shed is never withheld. A miner the site's
rules keep asleep (one on an unapproved pool under `pools.enforce: sleep`) is kept so by
the same mechanism as a sleep hold, with its own reason.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from controller.core.model import COMING_BACK, Action, ActionKind, MinerView, Plan
from controller.core.planner import FLOOR_WAKE
from drivers.types import Mode


class HoldMode(enum.StrEnum):
    SLEEP = "sleep"  # kept asleep whatever the limit allows
    RUN = "run"  # kept running while the limit allows: shed last, woken first


@dataclass(frozen=True, slots=True)
class Hold:
    miner_id: str
    mode: HoldMode
    reason: str
    by: str
    since: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Automation:
    """Paused: nothing is woken, raised or restored by the automation; every grid limit
    is still enforced (sheds go on)."""

    paused: bool = False
    reason: str = ""
    by: str = ""
    since: datetime | None = None


def held(holds: Mapping[str, Hold], mode: HoldMode) -> frozenset[str]:
    """The miners held in `mode`."""
    return frozenset(m for m, h in holds.items() if h.mode is mode)


def shed_order(base: tuple[int, ...], ids: Sequence[str], run: frozenset[str]) -> tuple[int, ...]:
    """The fleet's shed order with the miners held running moved to its end: shed last,
    woken first (the planner walks wakes backwards)."""
    if not run:
        return base
    return tuple(i for i in base if ids[i] not in run) + tuple(i for i in base if ids[i] in run)


def mark_held_asleep(
    views: tuple[MinerView, ...],
    holds: Mapping[str, Hold],
    kept: Collection[str] = frozenset(),
) -> tuple[MinerView, ...]:
    """The views with the miners held asleep (and those the site's rules keep asleep:
    `kept`) marked: the planner never walks them back, nor counts them as heaters."""
    asleep = held(holds, HoldMode.SLEEP)
    if kept:
        asleep |= frozenset(kept)
    if not asleep:
        return views
    return tuple(replace(v, held_asleep=True) if v.spec.id in asleep else v for v in views)


def operator_steps(
    plan: Plan,
    views: tuple[MinerView, ...],
    holds: Mapping[str, Hold],
    automation: Automation,
    now: datetime,
    *,
    kept_asleep: Mapping[str, str] | None = None,
) -> tuple[Plan, frozenset[str]]:
    """A miner held asleep that runs is put to sleep, and so is one the site's rules keep
    asleep (`kept_asleep`: miner -> why); while automation is paused nothing comes back
    (wakes, raises, restores are withheld, except for miners held running and wakes that
    keep a heater floor). Sheds always stand: grid limits win. Returns the plan and the
    miners it sleeps for a hold or a rule (not grid sheds)."""
    kept_asleep = kept_asleep or {}
    actions = list(plan.actions)
    notes = list(plan.notes)
    if automation.paused:
        run = held(holds, HoldMode.RUN)
        kept = [
            a
            for a in actions
            if a.miner_id not in plan.tuned
            and (a.kind not in COMING_BACK or a.miner_id in run or FLOOR_WAKE in a.reason)
        ]
        if len(kept) < len(actions):
            notes.append(
                f"automation paused by {automation.by}: "
                f"{len(actions) - len(kept)} steps back withheld"
            )
        actions = kept
    planned: set[str] | None = None  # built only once a held miner needs it
    slept: set[str] = set()
    # Without holds this walks nothing (a fleet-wide shed is on the path to the first
    # command), and the plan's miners are collected only once a held one needs them.
    for view in views if holds or kept_asleep else ():
        if not view.held_asleep:
            continue
        why = _why_asleep(view.spec.id, holds, kept_asleep)
        if why is None:
            continue
        if planned is None:
            planned = {a.miner_id for a in actions}
        if (
            view.spec.id in planned
            or view.pending is not None
            or view.cut_at is not None
            or view.reading is None
            or view.reading.mode is not Mode.MINING
            or (view.retry_after is not None and now < view.retry_after)
        ):
            continue
        actions.append(Action(view.spec.id, ActionKind.SLEEP, why))
        slept.add(view.spec.id)
    if len(actions) == len(plan.actions) and notes == list(plan.notes):
        return plan, frozenset(slept)
    return replace(plan, actions=tuple(actions), notes=tuple(notes)), frozenset(slept)


def _why_asleep(
    miner_id: str, holds: Mapping[str, Hold], kept_asleep: Mapping[str, str]
) -> str | None:
    """Why a miner is put to sleep: a sleep hold in its own words; else the site's rule
    (a run hold cannot keep running a miner a rule keeps asleep, so it is not the why)."""
    hold = holds.get(miner_id)
    if hold is not None and hold.mode is HoldMode.SLEEP:
        return f"sleep: held asleep by {hold.by} until {hold.expires_at:%H:%M:%S}: {hold.reason}"
    rule = kept_asleep.get(miner_id)
    return None if rule is None else f"sleep: {rule}"
