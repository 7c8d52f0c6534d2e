"""Local under-frequency response: a relay in software, fed by the site meter. Pure.

Sub-second programmes (ERCOT's UFR trips at 59.7 Hz) are relay territory, not an HTTP
round trip: when the meter's frequency stays below the trip threshold for the trip time,
the farm sheds a configured block at once, without waiting for any grid signal. Once the
frequency has stayed above the recovery threshold for the recovery time, the limit it set
rises gradually (a sudden return of a whole block could push the frequency down again).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class FrequencyRules:
    """Thresholds come from config; 50 Hz and 60 Hz grids differ, none is built in."""

    nominal_hz: float
    trip_below_hz: float
    trip_after: timedelta
    shed_w: int  # the block shed at a trip
    recover_above_hz: float
    recover_after: timedelta
    restore_w_per_s: float  # how fast the limit rises once the frequency has recovered
    deadline: timedelta  # the shed is due this soon after the trip (emergency)


class Event(enum.StrEnum):
    TRIP = "under-frequency trip"
    RECOVERED = "frequency recovered"
    RELEASED = "under-frequency limit released"


@dataclass(frozen=True, slots=True)
class FrequencyState:
    below_since: datetime | None = None
    tripped_at: datetime | None = None
    trip_hz: float | None = None
    limit_w: int | None = None  # the limit set at the trip
    above_since: datetime | None = None
    recovered_at: datetime | None = None

    @property
    def tripped(self) -> bool:
        return self.tripped_at is not None


def step(
    state: FrequencyState,
    rules: FrequencyRules,
    *,
    hz: float | None,
    now: datetime,
    draw_w: int,
    cap_w: int,
) -> tuple[FrequencyState, Event | None]:
    """Advance with one frequency reading (None: the meter is stale, so nothing is judged
    and a trip in force stays in force). `draw_w` is the measured draw the block is shed
    from; `cap_w` the site cap, above which a rising limit no longer binds."""
    if state.recovered_at is not None and limit_at(state, rules, now) >= cap_w:
        return FrequencyState(), Event.RELEASED
    if hz is None:
        return state, None
    if hz >= rules.trip_below_hz:
        return _recovering(replace(state, below_since=None), rules, hz, now)
    since = state.below_since or now
    state = replace(state, below_since=since, above_since=None)
    relapse = state.recovered_at is not None
    if now - since < rules.trip_after or (state.tripped and not relapse):
        return state, None
    # A new trip, or a relapse while the limit was rising: shed a block from here.
    current = limit_at(state, rules, now) if state.tripped else cap_w
    limit = max(0, min(current, draw_w - rules.shed_w))
    tripped = replace(state, tripped_at=now, trip_hz=hz, limit_w=limit, recovered_at=None)
    return tripped, Event.TRIP


def _recovering(
    state: FrequencyState, rules: FrequencyRules, hz: float, now: datetime
) -> tuple[FrequencyState, Event | None]:
    if not state.tripped:
        return state, None
    if state.recovered_at is not None:
        if hz >= rules.recover_above_hz:
            return state, None
        # Sagging again while the limit rose: hold where it stands until it recovers again.
        held = limit_at(state, rules, now)
        return replace(state, limit_w=held, recovered_at=None, above_since=None), None
    if hz < rules.recover_above_hz:
        return replace(state, above_since=None), None
    since = state.above_since or now
    if now - since >= rules.recover_after:
        return replace(state, above_since=since, recovered_at=now), Event.RECOVERED
    return replace(state, above_since=since), None


def limit_at(state: FrequencyState, rules: FrequencyRules, now: datetime) -> int:
    """The limit the relay imposes at `now` (a large number when none)."""
    if state.limit_w is None:
        return 2**62
    if state.recovered_at is None:
        return state.limit_w
    risen = rules.restore_w_per_s * max(0.0, (now - state.recovered_at).total_seconds())
    return state.limit_w + round(risen)


def to_json(state: FrequencyState) -> dict[str, object]:
    """A trip as the journal keeps it across a restart: it stays in force, and its limit
    rises on from where it was. The dwell timers are not kept: a restarted relay judges
    the frequency afresh, so one low sample after a restart is not a trip."""
    out: dict[str, object] = {}
    for name in ("tripped_at", "recovered_at"):
        value = getattr(state, name)
        if value is not None:
            out[name] = value.isoformat()
    if state.trip_hz is not None:
        out["trip_hz"] = state.trip_hz
    if state.limit_w is not None:
        out["limit_w"] = state.limit_w
    return out


def from_json(data: dict[str, object], shift: timedelta = timedelta(0)) -> FrequencyState:
    """The relay as journaled; `shift` carries its times across a clock a restart adopted."""

    def when(name: str) -> datetime | None:
        value = data.get(name)
        if not isinstance(value, str):
            return None
        try:
            return datetime.fromisoformat(value) + shift
        except ValueError:
            return None

    hz, limit = data.get("trip_hz"), data.get("limit_w")
    return FrequencyState(
        tripped_at=when("tripped_at"),
        trip_hz=float(hz) if isinstance(hz, (int, float)) else None,
        limit_w=int(limit) if isinstance(limit, (int, float)) else None,
        recovered_at=when("recovered_at"),
    )
