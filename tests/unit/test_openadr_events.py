"""OpenADR events as signals (controller/intake/openadr_events.py): the pure translation,
on events as openleadr parses them."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openleadr import objects
from openleadr.messaging import create_message, parse_message

from controller.core.signals import Cancel, Curtailment
from controller.intake.openadr_events import (
    EventRules,
    OptOutRule,
    Refused,
    Translated,
    event_json,
    opt_out_revision,
    translate,
)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
RULES = EventRules(level_w={1: 50_000, 2: 20_000, 3: 0}, cap_w=100_000, deadline_s=10.0)


def event(
    *,
    signals: list[dict[str, Any]] | None = None,
    start_in_s: float = 60,
    minutes: float = 30,
    modification: int = 0,
    status: str = "far",
    **period: Any,
) -> dict[str, Any]:
    start = NOW + timedelta(seconds=start_in_s)
    return {
        "event_descriptor": {
            "event_id": "ev-1",
            "modification_number": modification,
            "event_status": status,
            "market_context": "http://programme",
            "created_date_time": NOW,
            "test_event": False,
        },
        "active_period": {"dtstart": start, "duration": timedelta(minutes=minutes), **period},
        "event_signals": signals or [simple(2)],
        "response_required": "always",
    }


def simple(*levels: float) -> dict[str, Any]:
    return signal("SIMPLE", "level", *levels)


def signal(name: str, kind: str, *values: float, **extra: Any) -> dict[str, Any]:
    intervals = [{"duration": timedelta(minutes=10), "signal_payload": v} for v in values]
    return {"signal_name": name, "signal_type": kind, "intervals": intervals, **extra}


def curtailment(raw: dict[str, Any], rules: EventRules = RULES) -> Curtailment:
    result = translate(raw, rules, source="vtn", now=NOW)
    assert isinstance(result, Translated), result
    assert isinstance(result.signal, Curtailment)
    return result.signal


def refusal(raw: dict[str, Any]) -> str:
    result = translate(raw, RULES, source="vtn", now=NOW)
    assert isinstance(result, Refused), result
    return result.reason


def test_simple_levels_map_to_the_configured_limits_and_level_0_to_the_cap() -> None:
    assert curtailment(event(signals=[simple(1)])).limit_w == 50_000
    assert curtailment(event(signals=[simple(3)])).limit_w == 0
    assert curtailment(event(signals=[simple(0)])).limit_w == RULES.cap_w


def test_the_tightest_interval_of_any_signal_binds_the_whole_event() -> None:
    capacity = signal("LOAD_CONTROL", "x-loadControlCapacity", 0.3)
    held = curtailment(event(signals=[simple(1, 2, 0), capacity]))
    assert held.limit_w == 20_000


def parsed(signal: objects.EventSignal, **period: Any) -> dict[str, Any]:
    """One event as openleadr's own parser gives it: rendered by create_message, read by
    parse_message (the VEN's path), so the test sees openleadr's real field names."""
    start = NOW + timedelta(seconds=60)
    raw = objects.Event(
        event_descriptor=objects.EventDescriptor(
            event_id="ev-1",
            modification_number=0,
            market_context="http://programme",
            event_status="far",
            created_date_time=NOW,
        ),
        active_period=objects.ActivePeriod(dtstart=start, duration=timedelta(minutes=10)),
        event_signals=[signal],
        targets=[objects.Target(ven_id="ven")],
    )
    message = create_message(
        "oadrDistributeEvent", request_id="r", vtn_id="vtn", events=[asdict(raw)]
    )
    kind, payload = parse_message(message)
    assert kind == "oadrDistributeEvent"
    [one] = payload["events"]
    # openleadr sets eventStatus from the wall clock; the translation runs at NOW.
    assert one["event_descriptor"]["event_status"] in ("far", "near", "active", "completed")
    one["event_descriptor"]["event_status"] = "far"
    one["active_period"].update(period)
    return dict(one)


def setpoint(value: float, unit: str | None = None, scale: str = "none") -> objects.EventSignal:
    measurement = None
    if unit is not None:
        name = {"W": "powerReal", "VA": "powerApparent", "Wh": "energyReal"}[unit]
        measurement = objects.Measurement(
            name=name,
            description="RealPower" if unit == "W" else name,
            unit=unit,
            scale=scale,
            power_attributes=objects.PowerAttributes(hertz=50, voltage=230, ac=True),
        )
    interval = objects.Interval(
        dtstart=NOW + timedelta(seconds=60), duration=timedelta(minutes=10), signal_payload=value
    )
    return objects.EventSignal(
        intervals=[interval],
        signal_name="LOAD_DISPATCH",
        signal_type="setpoint",
        signal_id="s",
        measurement=measurement,
    )


def test_setpoints_are_in_their_item_base_unit_and_kw_without_one() -> None:
    assert curtailment(parsed(setpoint(12.5))).limit_w == 12_500
    assert curtailment(parsed(setpoint(700, "W"))).limit_w == 700
    assert curtailment(parsed(setpoint(700, "W", "k"))).limit_w == 700_000
    assert curtailment(parsed(setpoint(1.5, "W", "M"))).limit_w == 1_500_000
    assert "powerApparent in none VA is not a power in W" in refusal(parsed(setpoint(7, "VA")))
    assert "is not a power in W" in refusal(parsed(setpoint(7, "Wh", "k")))


@given(
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**20), 10**20),
    st.sampled_from([None, "none", "k", "M", "G", "T", "m", "micro"]),
)
def test_any_setpoint_is_translated_within_the_contract_or_refused(
    value: float, scale: str | None
) -> None:
    measurement = None if scale is None else {"name": "powerReal", "unit": "W", "scale": scale}
    extra = {} if measurement is None else {"measurement": measurement}
    raw = event(signals=[signal("LOAD_DISPATCH", "setpoint", value, **extra)])
    result = translate(raw, RULES, source="vtn", now=NOW)
    if isinstance(result, Translated):
        assert isinstance(result.signal, Curtailment)
        assert 0 <= result.signal.limit_w <= 10_000_000_000  # the wire's 10 GW
        watts = value * (1e3 if scale is None else SCALES[scale])
        assert result.signal.limit_w == math.floor(watts)
    else:
        assert "setpoint" in result.reason


SCALES = {"none": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3, "micro": 1e-6}


def test_a_huge_setpoint_is_refused_not_raised() -> None:
    assert "above 10 GW" in refusal(event(signals=[signal("LOAD_DISPATCH", "setpoint", 1e306)]))


@pytest.mark.parametrize(
    ("period", "reason"),
    [
        ({"ramp_up": timedelta(days=3_000_000)}, "outside any representable time"),
        ({"tolerance": {"tolerate": {"startafter": timedelta(days=3_000_000)}}}, "deadline"),
        ({"tolerance": {"tolerate": {"startafter": timedelta(days=2)}}}, "less than or equal"),
        ({"dtstart": datetime(9999, 12, 31, tzinfo=UTC), "duration": timedelta(days=2)}, "time"),
        ({"dtstart": datetime(2150, 1, 1, tzinfo=UTC)}, "timestamp must lie between"),
        ({"dtstart": datetime(1990, 1, 1, tzinfo=UTC)}, "timestamp must lie between"),
    ],
)
def test_times_and_deadlines_outside_the_wire_contract_are_refused(
    period: dict[str, Any], reason: str
) -> None:
    assert reason in refusal(event(**period))


def test_the_contract_bounds_are_checked_on_a_parsed_event_too() -> None:
    far = parsed(setpoint(5), tolerance={"tolerate": {"startafter": timedelta(days=3_000_000)}})
    assert "the deadline" in refusal(far)


def test_ramp_up_and_start_after_become_the_start_and_the_deadline() -> None:
    held = curtailment(
        event(
            start_in_s=60,
            ramp_up=timedelta(seconds=30),
            tolerance={"tolerate": {"startafter": timedelta(seconds=5)}},
        )
    )
    assert held.start == NOW + timedelta(seconds=30)  # dtstart - ramp-up
    assert held.deadline_s == 35.0  # met by dtstart + startafter
    assert held.end == NOW + timedelta(seconds=60, minutes=30)
    plain = curtailment(event(minutes=0))
    assert (plain.deadline_s, plain.end) == (RULES.deadline_s, None)  # open-ended


@pytest.mark.parametrize(
    ("signals", "reason"),
    [
        ([simple(4)], "SIMPLE level 4 is not one of 0, 1, 2, 3"),
        ([simple(1.5)], "SIMPLE level 1.5 is not one of 0, 1, 2, 3"),
        ([simple(-1)], "SIMPLE level -1 is not one of 0, 1, 2, 3"),
        ([signal("ELECTRICITY_PRICE", "price", 3)], "not a signal this VEN acts on"),
        ([signal("LOAD_DISPATCH", "delta", 3)], "not a signal this VEN acts on"),
        ([signal("LOAD_CONTROL", "x-loadControlCapacity", 1.2)], "not a fraction 0-1"),
        ([signal("LOAD_DISPATCH", "setpoint", -5)], "setpoint -5 is negative"),
        ([simple(1), signal("x-custom", "level", 1)], "eiEventSignal[1] (x-custom level)"),
        ([{"signal_name": "SIMPLE", "signal_type": "level", "intervals": []}], "no intervals"),
    ],
)
def test_bad_signals_refuse_the_whole_event_naming_the_field(
    signals: list[dict[str, Any]], reason: str
) -> None:
    assert reason in refusal(event(signals=signals))


def test_a_completed_event_is_a_cancel_flagged_completed() -> None:
    result = translate(event(status="completed"), RULES, source="vtn", now=NOW)
    assert isinstance(result, Translated)
    assert (result.signal, result.completed) == (Cancel("vtn:ev-1", 1, NOW), True)


def test_a_huge_event_is_journaled_as_a_digest() -> None:
    raw = event(signals=[simple(*([1] * 5000))])
    body = json.loads(event_json(raw))
    assert body["truncated"] is True
    assert body["event_id"] == "ev-1"
    assert body["bytes"] > 64 * 1024
    assert len(event_json(raw)) < 64 * 1024
    assert json.loads(event_json(event()))["event_descriptor"]["event_id"] == "ev-1"


def test_modifications_are_odd_revisions_and_cancels_are_revisions_too() -> None:
    assert curtailment(event(modification=0)).revision == 1
    assert curtailment(event(modification=4)).revision == 9
    assert opt_out_revision(4) == 10  # between modification 4 (9) and 5 (11)
    result = translate(event(modification=2, status="cancelled"), RULES, source="vtn", now=NOW)
    assert isinstance(result, Translated)
    assert result.signal == Cancel("vtn:ev-1", 5, NOW)


def test_a_test_event_is_flagged() -> None:
    raw = event()
    raw["event_descriptor"]["test_event"] = "true"
    result = translate(raw, RULES, source="vtn", now=NOW)
    assert isinstance(result, Translated)
    assert result.test


def test_opt_out_rules_match_on_every_condition_given() -> None:
    rules = EventRules(
        level_w=RULES.level_w,
        cap_w=RULES.cap_w,
        deadline_s=10,
        opt_out=(
            OptOutRule("deep calls", min_level=3),
            OptOutRule("short notice", notice_below=timedelta(minutes=5)),
            OptOutRule("other programme", market_context="http://elsewhere"),
        ),
    )

    def reason(raw: dict[str, Any]) -> str | None:
        result = translate(raw, rules, source="vtn", now=NOW)
        assert isinstance(result, Translated)
        return result.opt_out

    assert reason(event(signals=[simple(3)], start_in_s=3600)) == "deep calls"
    assert reason(event(signals=[simple(1)], start_in_s=60)) == "short notice"
    assert reason(event(signals=[simple(2)], start_in_s=3600)) is None


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**6))
def test_any_payload_is_translated_or_refused_never_raised(value: float) -> None:
    result = translate(event(signals=[simple(value)]), RULES, source="vtn", now=NOW)
    if isinstance(result, Translated):
        assert isinstance(result.signal, Curtailment)
        assert 0 <= result.signal.limit_w <= RULES.cap_w
    else:
        assert result.reason


def test_an_unusable_event_id_is_refused() -> None:
    raw = event()
    raw["event_descriptor"]["event_id"] = "<script>"
    assert "eventID" in refusal(raw)
