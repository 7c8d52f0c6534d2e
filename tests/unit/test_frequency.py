"""The under-frequency relay (pure) and its config: 50 Hz and 60 Hz grids, thresholds from
config only, trip after the configured time, gradual release."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.config import ConfigError
from controller.core.frequency import Event, FrequencyRules, FrequencyState, limit_at, step
from tests.conftest import load_site, site_dict

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CAP = 1_000_000


def rules(nominal: float = 50.0, trip: float = 49.5, recover: float = 49.9) -> FrequencyRules:
    return FrequencyRules(
        nominal_hz=nominal,
        trip_below_hz=trip,
        trip_after=timedelta(seconds=0.5),
        shed_w=300_000,
        recover_above_hz=recover,
        recover_after=timedelta(seconds=30),
        restore_w_per_s=10_000,
        deadline=timedelta(seconds=2),
    )


def feed(
    r: FrequencyRules, readings: list[tuple[float, float | None]], draw_w: int = 800_000
) -> tuple[FrequencyState, list[tuple[float, Event]]]:
    state, events = FrequencyState(), []
    for t, hz in readings:
        state, event = step(
            state, r, hz=hz, now=T0 + timedelta(seconds=t), draw_w=draw_w, cap_w=CAP
        )
        if event is not None:
            events.append((t, event))
    return state, events


@pytest.mark.parametrize(
    ("nominal", "trip", "recover", "dip"), [(50, 49.5, 49.9, 49.3), (60, 59.7, 59.95, 59.5)]
)
def test_trips_after_the_configured_time_and_sheds_the_block(
    nominal: float, trip: float, recover: float, dip: float
) -> None:
    r = rules(nominal, trip, recover)
    state, events = feed(r, [(0, nominal), (1, dip), (1.25, dip)])
    assert events == []  # below, but not yet for trip_after
    state, events = feed(r, [(0, nominal), (1, dip), (1.25, dip), (1.5, dip)])
    assert events == [(1.5, Event.TRIP)]
    assert state.limit_w == 500_000  # the draw less the configured block
    assert limit_at(state, r, T0 + timedelta(seconds=100)) == 500_000  # held while low


def test_a_brief_dip_does_not_trip_and_a_stale_meter_judges_nothing() -> None:
    _, events = feed(rules(), [(0, 49.3), (0.25, 50.0), (0.5, 49.3), (0.75, 50.0)])
    assert events == []
    _, events = feed(rules(), [(0, 49.3), (0.25, None), (0.5, None), (0.75, None)])
    assert events == []  # the dip was never seen for 0.5 s


def test_recovery_waits_then_the_limit_rises_gradually_until_released() -> None:
    r = rules()
    readings: list[tuple[float, float | None]] = [(0, 49.3), (0.5, 49.3)]
    readings += [(t, 50.0) for t in range(1, 32)]
    state, events = feed(r, readings)
    assert [e for _, e in events] == [Event.TRIP, Event.RECOVERED]
    assert events[1][0] == 31  # 30 s above recover_above_hz
    assert limit_at(state, r, T0 + timedelta(seconds=41)) == 500_000 + 100_000  # 10 kW/s
    state, event = step(state, r, hz=50.0, now=T0 + timedelta(seconds=100), draw_w=0, cap_w=CAP)
    assert event is Event.RELEASED
    assert not state.tripped


def test_a_relapse_while_rising_sheds_again_from_where_the_limit_stands() -> None:
    r = rules()
    readings: list[tuple[float, float | None]] = [(0, 49.3), (0.5, 49.3)]
    readings += [(t, 50.0) for t in range(1, 32)]
    readings += [(36, 49.2), (36.5, 49.2)]
    state, events = feed(r, readings, draw_w=700_000)
    assert [e for _, e in events] == [Event.TRIP, Event.RECOVERED, Event.TRIP]
    assert state.limit_w == 400_000  # 700 kW measured less the 300 kW block


def frequency_site(tmp_path: Path, **frequency: object) -> dict[str, object]:
    data = site_dict(tmp_path, miners=2)
    data["meter"] = {"id": "meter", "host": "127.0.0.9", "map": "meter-float32"}
    data["frequency"] = {
        "nominal_hz": 60,
        "trip_below_hz": 59.7,
        "shed_kw": 5,
        "recover_above_hz": 59.95,
        **frequency,
    }
    return data


def test_config_takes_a_60_hz_grid(tmp_path: Path) -> None:
    loaded = load_site(frequency_site(tmp_path))
    r = loaded.frequency_rules()
    assert r is not None
    assert (r.nominal_hz, r.trip_below_hz, r.shed_w) == (60, 59.7, 5000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trip_below_hz": 49.5}, "trip_below_hz must be below the 60 Hz nominal"),
        ({"recover_above_hz": 59.6}, "recover_above_hz must lie above trip_below_hz"),
        ({"nominal_hz": 55}, "frequency.nominal_hz"),
    ],
)
def test_config_refuses_thresholds_that_do_not_fit_the_grid(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_site(frequency_site(tmp_path, **change))
    assert message in str(err.value)


def test_config_refuses_a_relay_without_a_meter(tmp_path: Path) -> None:
    data = frequency_site(tmp_path)
    del data["meter"]
    with pytest.raises(ConfigError, match="needs a meter"):
        load_site(data)


def test_a_sag_while_the_limit_rises_holds_it_there() -> None:
    r = rules()
    readings: list[tuple[float, float | None]] = [(0, 49.3), (0.5, 49.3)]
    readings += [(t, 50.0) for t in range(1, 32)]  # recovered at 31 s
    readings += [(36, 49.7), (60, 49.7)]  # below recovery, above the trip
    state, events = feed(r, readings)
    assert [e for _, e in events] == [Event.TRIP, Event.RECOVERED]
    held = limit_at(state, r, T0 + timedelta(seconds=60))
    assert held == 500_000 + 50_000  # 5 s of rising at 10 kW/s, then held
    assert limit_at(state, r, T0 + timedelta(seconds=600)) == held
