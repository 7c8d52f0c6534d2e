"""OpenADR 2.0b events as grid signals: a pure translation, no I/O and no clock.

An event (as openleadr parses an oadrDistributeEvent) becomes a Curtailment or a Cancel of
the VTN's source, which the inbox then admits like any other signal:

- Signal id `<source>:<eventID>`. Revision `2 * modificationNumber + 1`: a modification
  is a newer revision, and the even revision between two modifications is left for the
  VEN's own opt-out (a cancel of that event) so that neither side's revision collides.
- Limit: SIMPLE levels 1-3 map to configured limits (level 0 is normal operation: the
  site cap); LOAD_DISPATCH `setpoint` is a draw in the unit of the signal's itemBase
  (openleadr's `measurement`: a power in W with its SI scale; kW when there is none);
  LOAD_CONTROL `x-loadControlCapacity` is a fraction of the site cap. An event
  with several intervals or signals is held at the tightest of them for its whole active
  period: never above what any interval allows.
- Time: the limit applies from `dtstart - rampUp` and must be met by
  `dtstart + startafter` (the randomisation the VTN tolerates); with neither, `deadline_s`
  after `dtstart`. `duration` 0 is open-ended (until cancelled).
- `eventStatus` cancelled is a cancel, completed a cancel flagged `completed` (the VEN
  acknowledges it; nothing to do unless it still holds the event); `testEvent` is
  journaled but never acted on.
- Anything else (an unknown signal name or type, a level outside 0-3, a fraction outside
  0-1, a negative setpoint, an itemBase that is not a power) refuses the whole event with
  a reason naming the field; so does a signal outside the wire contract's own bounds (a
  limit over 10 GW, a deadline over a day, a time outside 2000-2100), which the signed
  path refuses too: no VTN gets past what an HMAC-signed signal cannot.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from controller.core.signals import Cancel, Curtailment
from controller.intake.wire import MAX_BODY_BYTES, CurtailmentIn, describe

SUPPORTED = "SIMPLE level, LOAD_DISPATCH setpoint, LOAD_CONTROL x-loadControlCapacity"
_EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
# OpenADR's SiScaleCodeType (openleadr.enums.SI_SCALE_CODE)
_SCALES = {
    "p": 1e-12,
    "n": 1e-9,
    "micro": 1e-6,
    "m": 1e-3,
    "c": 1e-2,
    "d": 1e-1,
    "none": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
}
_POWER_UNITS = ("W",)  # powerReal; VA and VAR (apparent, reactive) are not a grid draw
MAX_MODIFICATION = 2**30 - 2  # revisions stay within the wire's 2**31 - 1
_MAX_W = 10e9  # the wire's limit_kw bound (10 GW), checked before any int conversion
MAX_JOURNALED_BYTES = MAX_BODY_BYTES  # an event's JSON above this is journaled as a digest


@dataclass(frozen=True, slots=True)
class OptOutRule:
    """Opt out of events matching every condition given (None: any)."""

    reason: str
    market_context: str | None = None
    signal_name: str | None = None
    min_level: int | None = None
    notice_below: timedelta | None = None


@dataclass(frozen=True, slots=True)
class EventRules:
    """What the site's config says about events: limits per SIMPLE level, the cap that
    fractions are of, the deadline when an event gives none, and the opt-out rules."""

    level_w: Mapping[int, int]
    cap_w: int
    deadline_s: float
    opt_out: Sequence[OptOutRule] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class EventKey:
    """Which event, and which modification of it, a reply is about."""

    event_id: str
    modification: int
    signal_id: str | None
    revision: int | None
    response_required: bool = True


@dataclass(frozen=True, slots=True)
class Refused:
    """The event cannot be acted on; `reason` names the field."""

    key: EventKey
    reason: str


@dataclass(frozen=True, slots=True)
class Translated:
    """The event as a signal, and whether it is a test or opted out by a config rule."""

    key: EventKey
    signal: Curtailment | Cancel
    test: bool = False
    opt_out: str | None = None  # the matching rule's reason
    completed: bool = False  # eventStatus completed: over by the VTN's account


Translation = Refused | Translated


class _RefusedError(Exception):
    pass


def signal_id(source: str, event_id: str) -> str:
    return f"{source}:{event_id}"


def revision(modification: int) -> int:
    return 2 * modification + 1


def opt_out_revision(modification: int) -> int:
    """The revision of the VEN's own cancel when it opts out of this modification."""
    return 2 * modification + 2


def translate(
    event: Mapping[str, Any], rules: EventRules, *, source: str, now: datetime
) -> Translation:
    """One event of an oadrDistributeEvent, as openleadr parsed it. Never raises: any
    value that cannot become a signal is a Refused naming the field."""
    try:
        return _translate(event, rules, source=source, now=now)
    except (ArithmeticError, ValueError, TypeError, AttributeError) as err:
        # Date arithmetic that overflows, a payload of an unexpected shape: refused, not
        # raised (no VTN input may stop the daemon).
        descriptor = event.get("event_descriptor") if isinstance(event, Mapping) else None
        raw_id = (descriptor or {}).get("event_id") if isinstance(descriptor, Mapping) else None
        key = EventKey(str(raw_id)[:100], 0, None, None)
        return Refused(key, f"the event cannot be read as a signal: {type(err).__name__}: {err}")


def _translate(
    event: Mapping[str, Any], rules: EventRules, *, source: str, now: datetime
) -> Translation:
    descriptor = event.get("event_descriptor") or {}
    raw_id = descriptor.get("event_id")
    raw_mod = descriptor.get("modification_number", 0)
    required = event.get("response_required", "always") == "always"
    if not isinstance(raw_id, str) or not _EVENT_ID.fullmatch(raw_id):
        key = EventKey(str(raw_id)[:100], _int_or(raw_mod, 0), None, None, required)
        return Refused(key, "eventDescriptor.eventID: must be 1-100 of A-Z a-z 0-9 . _ : -")
    if type(raw_mod) is not int or not 0 <= raw_mod <= MAX_MODIFICATION:
        key = EventKey(raw_id, 0, signal_id(source, raw_id), None, required)
        return Refused(key, f"eventDescriptor.modificationNumber: {raw_mod!r} is not 0-2^30")
    key = EventKey(raw_id, raw_mod, signal_id(source, raw_id), revision(raw_mod), required)
    sid = signal_id(source, raw_id)
    rev = revision(raw_mod)
    status = descriptor.get("event_status")
    if status in ("cancelled", "completed"):
        cancel = Cancel(sid, rev, now)
        return Translated(key, cancel, test=_test(descriptor), completed=status == "completed")
    try:
        limit_w, names, top_level = _limit(event.get("event_signals"), rules)
        start, deadline_s, end = _timing(event.get("active_period"), rules)
        issued = descriptor.get("created_date_time")
        curtailment = Curtailment(
            sid,
            rev,
            issued if isinstance(issued, datetime) and issued.tzinfo else now,
            limit_w,
            deadline_s,
            start,
            end,
        )
        curtailment = _within_contract(curtailment)
    except _RefusedError as err:
        return Refused(key, str(err))
    context = descriptor.get("market_context")
    reason = _opt_out(rules.opt_out, context, names, top_level, start - now)
    return Translated(key, curtailment, test=_test(descriptor), opt_out=reason)


# The wire contract's field names, as an event's fields.
_FIELDS = {
    "id": "eventID (as <source>:<eventID>)",
    "issued_at": "eventDescriptor.createdDateTime",
    "limit_kw": "the limit (level, setpoint or capacity)",
    "deadline_s": "the deadline (x-eiRampUp + tolerance.startafter, or deadline_s)",
    "start": "dtstart - x-eiRampUp",
    "end": "dtstart + duration",
}


def _within_contract(signal: Curtailment) -> Curtailment:
    """The signal judged by the signed wire's own model (its limit, deadline and time
    bounds); issued_at in UTC."""
    try:
        CurtailmentIn(
            type="curtailment",
            id=signal.id,
            revision=signal.revision,
            issued_at=signal.issued_at,
            limit_kw=signal.limit_w / 1000,
            deadline_s=signal.deadline_s,
            start=signal.start,
            end=signal.end,
        )
    except ValidationError as err:
        reason = describe(err)
        for name, field_name in _FIELDS.items():
            reason = re.sub(rf"(^|; ){name}:", rf"\1{field_name}:", reason)
        raise _RefusedError(f"outside the signal contract's bounds: {reason}") from None
    return Curtailment(
        signal.id,
        signal.revision,
        signal.issued_at.astimezone(UTC),
        signal.limit_w,
        signal.deadline_s,
        signal.start,
        signal.end,
    )


def _test(descriptor: Mapping[str, Any]) -> bool:
    flag = descriptor.get("test_event")
    return flag is True or (isinstance(flag, str) and flag.strip().lower() == "true")


def _int_or(value: object, default: int) -> int:
    return value if type(value) is int else default


def _signals(raw: object) -> list[Mapping[str, Any]]:
    if isinstance(raw, Mapping):  # one signal parses as a mapping, several as a list
        raw = raw.get("event_signals", [raw])
    if not isinstance(raw, list) or not raw:
        raise _RefusedError("eiEventSignals: the event carries no signal")
    if not all(isinstance(s, Mapping) for s in raw):
        raise _RefusedError("eiEventSignals: not a list of signals")
    return raw


def _limit(raw: object, rules: EventRules) -> tuple[int, set[str], int]:
    """The tightest limit any interval of any signal asks for, the signal names, and the
    highest SIMPLE level (0 if none)."""
    limits: list[int] = []
    names: set[str] = set()
    top_level = 0
    for n, signal in enumerate(_signals(raw)):
        name, kind = signal.get("signal_name"), signal.get("signal_type")
        where = f"eiEventSignal[{n}] ({name} {kind})"
        intervals = signal.get("intervals")
        if not isinstance(intervals, list) or not intervals:
            raise _RefusedError(f"{where}: no intervals")
        for i, interval in enumerate(intervals):
            value = interval.get("signal_payload") if isinstance(interval, Mapping) else None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _RefusedError(f"{where} interval {i}: payload {value!r} is not a number")
            if not math.isfinite(value):
                raise _RefusedError(f"{where} interval {i}: payload {value} is not finite")
            limit_w, level = _interval_limit(signal, value, f"{where} interval {i}", rules)
            limits.append(limit_w)
            top_level = max(top_level, level)
        names.add(str(name))
    return min(limits), names, top_level


def _interval_limit(
    signal: Mapping[str, Any], value: float, at: str, rules: EventRules
) -> tuple[int, int]:
    """One interval's limit in W, and its SIMPLE level (0 for other signals)."""
    name, kind = signal.get("signal_name"), signal.get("signal_type")
    if name == "SIMPLE" and kind == "level":
        level = _level(value, at)
        return (rules.cap_w if level == 0 else rules.level_w[level]), level
    if name == "LOAD_DISPATCH" and kind == "setpoint":
        if value < 0:
            raise _RefusedError(f"{at}: setpoint {value:g} is negative")
        watts = value * _watts_per_unit(signal, at)
        if not watts <= _MAX_W:  # also catches an infinite product
            raise _RefusedError(f"{at}: setpoint {value:g} is above {_MAX_W / 1e9:g} GW")
        return math.floor(watts), 0
    if name == "LOAD_CONTROL" and kind == "x-loadControlCapacity":
        if not 0 <= value <= 1:
            raise _RefusedError(f"{at}: capacity {value:g} is not a fraction 0-1")
        return math.floor(value * rules.cap_w), 0
    raise _RefusedError(f"{at}: not a signal this VEN acts on ({SUPPORTED})")


def _level(value: float, at: str) -> int:
    if value != int(value) or not 0 <= value <= 3:  # noqa: PLR2004 - SIMPLE has levels 0-3
        raise _RefusedError(f"{at}: SIMPLE level {value:g} is not one of 0, 1, 2, 3")
    return int(value)


def _watts_per_unit(signal: Mapping[str, Any], where: str) -> float:
    """A setpoint's itemBase (openleadr parses it as `measurement`: {name, unit, scale})
    gives its unit and SI scale; a signal without one is in kW."""
    base = signal.get("measurement")
    if base is None:
        return 1e3
    if not isinstance(base, Mapping):
        raise _RefusedError(f"{where}: itemBase is not readable")
    unit, scale = base.get("unit"), base.get("scale", "none")
    if unit not in _POWER_UNITS or scale not in _SCALES:
        name = base.get("name")
        raise _RefusedError(f"{where}: itemBase {name} in {scale} {unit} is not a power in W")
    return _SCALES[str(scale)]


def _timing(raw: object, rules: EventRules) -> tuple[datetime, float, datetime | None]:
    if not isinstance(raw, Mapping):
        raise _RefusedError("eiActivePeriod: missing")
    dtstart, duration = raw.get("dtstart"), raw.get("duration")
    if not isinstance(dtstart, datetime) or dtstart.tzinfo is None:
        raise _RefusedError("eiActivePeriod.dtstart: missing or without a UTC offset")
    if not isinstance(duration, timedelta) or duration < timedelta(0):
        raise _RefusedError("eiActivePeriod.duration: missing or negative")
    ramp_up = raw.get("ramp_up") or timedelta(0)
    tolerance = raw.get("tolerance") or {}
    tolerate = tolerance.get("tolerate") if isinstance(tolerance, Mapping) else None
    start_after = (tolerate or {}).get("startafter") or timedelta(0)
    if not isinstance(ramp_up, timedelta) or ramp_up < timedelta(0):
        raise _RefusedError("eiActivePeriod.x-eiRampUp: not a non-negative duration")
    if not isinstance(start_after, timedelta) or start_after < timedelta(0):
        raise _RefusedError("eiActivePeriod.tolerance.startafter: not a non-negative duration")
    try:
        dtstart = dtstart.astimezone(UTC)
        allowed = (ramp_up + start_after).total_seconds()
        end = dtstart + duration if duration > timedelta(0) else None
        start = dtstart - ramp_up
    except OverflowError:
        raise _RefusedError(
            "eiActivePeriod: dtstart with its duration, x-eiRampUp or startafter "
            "lies outside any representable time"
        ) from None
    return start, allowed if allowed > 0 else rules.deadline_s, end


def _opt_out(
    rules: Sequence[OptOutRule],
    context: object,
    names: set[str],
    top_level: int,
    notice: timedelta,
) -> str | None:
    for rule in rules:
        if rule.market_context is not None and rule.market_context != context:
            continue
        if rule.signal_name is not None and rule.signal_name not in names:
            continue
        if rule.min_level is not None and top_level < rule.min_level:
            continue
        if rule.notice_below is not None and notice >= rule.notice_below:
            continue
        return rule.reason
    return None


def event_json(event: Mapping[str, Any]) -> bytes:
    """The event as the journal keeps it: JSON, times in ISO 8601, durations in seconds."""

    def plain(value: object) -> object:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, timedelta):
            return value.total_seconds()
        return str(value)

    body = json.dumps(event, default=plain, sort_keys=True).encode()
    if len(body) <= MAX_JOURNALED_BYTES:
        return body
    # A huge event (thousands of intervals) is not fsynced whole with every row.
    descriptor = event.get("event_descriptor")
    ids = descriptor if isinstance(descriptor, Mapping) else {}
    summary = {
        "event_id": str(ids.get("event_id"))[:100],
        "modification_number": str(ids.get("modification_number"))[:20],
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "head": body[:4096].decode("utf-8", errors="replace"),
        "truncated": True,
    }
    return json.dumps(summary, sort_keys=True).encode()
