"""The read model's allocation figures (controller/loop/report.walk, record/site.setting):
the site's measured hashrate, the draw it costs, J/TH, and each miner's setting, on a
snapshot of views with known readings, and against fleet_mode on any fleet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.core.model import MinerSpec, MinerView, estimate_w, fleet_mode
from controller.loop.report import Staleness, walk
from controller.record.site import efficiency_j_th, setting
from drivers.types import DriverTraits, MinerReading, Mode

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
STALE = timedelta(seconds=15)
STALENESS = Staleness(miners=STALE, meter_s=3.0, sensors=timedelta(minutes=5))
TRAITS = DriverTraits(
    sleep_power_w=20, ramp_down_s=5, ramp_up_s=30, power_floor_fraction=0.6, retarget_s=10
)
LONG_AGO = NOW - timedelta(hours=1)  # every change landed and every ramp is over
FRESH = NOW - timedelta(seconds=2)


def spec(miner_id: str, container: str = "c1") -> MinerSpec:
    return MinerSpec(miner_id, "luxos", container, 3000, 30.0, TRAITS)


def reading(mode: Mode, power_w: int, ths: float) -> MinerReading:
    return MinerReading(mode, power_w, ths, (60.0, 61.0))


def fleet() -> dict[str, MinerView]:
    """One miner per setting: what each reads, and how it got there."""
    mining = Mode.MINING
    return {
        "default": MinerView(spec("default"), reading(mining, 3000, 100.0), FRESH),
        "tuned": MinerView(
            spec("tuned"),
            reading(mining, 2600, 90.0),
            FRESH,
            target_w=2600,
            tuned_at=LONG_AGO,
        ),
        "lowered": MinerView(
            spec("lowered", "c2"), reading(mining, 1800, 70.0), FRESH, lowered_at=LONG_AGO
        ),
        # Still reporting a little hashrate on its way down: asleep adds none.
        "asleep": MinerView(spec("asleep", "c2"), reading(Mode.SLEEPING, 20, 5.0), FRESH),
        "stale": MinerView(spec("stale"), reading(mining, 3000, 100.0), NOW - STALE * 2),
        "never-read": MinerView(spec("never-read")),
        "cut": MinerView(spec("cut", "c2"), reading(mining, 3000, 100.0), FRESH, cut_at=FRESH),
    }


def test_each_miner_shows_its_setting_and_target() -> None:
    got = {k: setting(v, v.fresh(NOW, STALE)) for k, v in fleet().items()}
    assert got == {
        "default": ("default", None),
        "tuned": ("tuned", 2600),
        "lowered": ("lowered", spec("x").floor_w()),
        "asleep": ("asleep", None),
        "stale": ("unknown", None),
        "never-read": ("unknown", None),
        "cut": ("cut", None),
    }
    assert spec("x").floor_w() == 1800


def test_a_target_the_allocation_chose_wins_over_the_ladder_floor() -> None:
    both = MinerView(
        spec("m"), reading(Mode.MINING, 2400, 85.0), FRESH, lowered_at=LONG_AGO, target_w=2400
    )
    assert setting(both, fresh=True) == ("tuned", 2400)


def test_walk_sums_the_hashrate_and_draw_of_miners_read_fresh() -> None:
    views = fleet()
    found = walk(NOW, tuple(views.values()), STALENESS, {})
    hashing = ("default", "tuned", "lowered")
    readings = [views[k].reading for k in hashing]
    assert found.hashrate_ths == pytest.approx(sum(r.hashrate_ths for r in readings if r))
    assert found.hashrate_ths == pytest.approx(100.0 + 90.0 + 70.0)
    # The draw of every miner read fresh and not cut, asleep included (it costs power and
    # hashes nothing), by the planner's estimate; unknown miners' worst case is left out.
    read = (*hashing, "asleep")
    assert found.fresh_draw_w == sum(estimate_w(views[k], NOW, STALE) for k in read)
    assert found.fresh_draw_w == 3000 + 2600 + 1800 + 20
    efficiency = efficiency_j_th(found.fresh_draw_w, found.hashrate_ths)
    assert efficiency == pytest.approx(7420 / 260)
    modes = found.modes
    assert (modes.total, modes.mining, modes.sleeping, modes.unknown, modes.cut) == (7, 3, 1, 2, 1)
    assert (modes.tuned, modes.lowered) == (1, 1)
    by_container = {c.name: c.miners.tuned for c in found.containers}
    assert by_container == {"c1": 1, "c2": 0}


def test_nothing_hashing_has_no_efficiency() -> None:
    asleep = MinerView(spec("a"), reading(Mode.SLEEPING, 20, 0.0), FRESH)
    found = walk(NOW, (asleep, MinerView(spec("b"))), STALENESS, {})
    assert (found.hashrate_ths, found.fresh_draw_w) == (0.0, 20)
    assert efficiency_j_th(found.fresh_draw_w, found.hashrate_ths) is None
    empty = walk(NOW, (), STALENESS, {})
    assert (empty.hashrate_ths, empty.fresh_draw_w, empty.modes.total) == (0.0, 0, 0)


SETTING_MODE = {"cut": "cut", "unknown": "unknown", "asleep": "sleeping"}


@st.composite
def views(draw: st.DrawFn) -> MinerView:
    miner_id = f"m{draw(st.integers(0, 10**6))}"
    read = draw(st.one_of(st.none(), st.integers(0, 40)))
    mode = draw(st.sampled_from([Mode.MINING, Mode.SLEEPING]))
    ths = draw(st.floats(0, 300, allow_nan=False))
    changed = st.one_of(st.none(), st.just(LONG_AGO))
    return MinerView(
        spec(miner_id, draw(st.sampled_from(["c1", "c2"]))),
        None if read is None else reading(mode, draw(st.integers(0, 4000)), ths),
        None if read is None else NOW - timedelta(seconds=read),
        cut_at=draw(changed),
        lowered_at=draw(changed),
        target_w=draw(st.one_of(st.none(), st.integers(1000, 4000))),
    )


@given(st.lists(views(), max_size=30))
def test_walk_and_settings_agree_with_fleet_mode(fleet: list[MinerView]) -> None:
    """The per-miner settings split the fleet as the modes do, and the site's hashrate is
    the sum over the miners whose setting is a power target."""
    found = walk(NOW, tuple(fleet), STALENESS, {})
    settings = [setting(v, v.fresh(NOW, STALE)) for v in fleet]
    for v, (kind, _) in zip(fleet, settings, strict=True):
        assert SETTING_MODE.get(kind, "mining") == fleet_mode(v, NOW, STALE)
    targets = [v for v, (kind, _) in zip(fleet, settings, strict=True) if kind not in SETTING_MODE]
    assert found.hashrate_ths == pytest.approx(
        sum(v.reading.hashrate_ths for v in targets if v.reading is not None)
    )
    assert found.modes.tuned == sum(kind == "tuned" for kind, _ in settings)
    assert found.modes.mining == len(targets)
    fresh = [v for v in fleet if v.cut_at is None and v.fresh(NOW, STALE)]
    assert found.fresh_draw_w == sum(estimate_w(v, NOW, STALE) for v in fresh)
