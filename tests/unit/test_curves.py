"""Efficiency curves: seeded from the family's traits or the firmware's profiles, learned
from settled measurements, and their upper hull."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.core.curves import (
    ASLEEP,
    PRIOR_EXPONENT,
    Curve,
    Setting,
    curve_from_dict,
    curve_to_dict,
    learn,
    seed_curve,
    upper_hull,
)
from controller.core.model import MinerSpec
from drivers.miners.antminer_stock.driver import TRAITS as STOCK
from drivers.miners.braiins_os.driver import TRAITS as BRAIINS
from drivers.miners.luxos import TRAITS as LUXOS
from drivers.miners.whatsminer.dialect import TRAITS as WHATSMINER
from drivers.types import DriverTraits


def spec(traits: DriverTraits, rated: int = 3250, eff: float = 29.5) -> MinerSpec:
    return MinerSpec("m0", "x", "c1", rated, eff, traits)


def test_seed_power_target_families_from_floor_to_rated() -> None:
    for traits, floor in ((LUXOS, 0.70), (BRAIINS, 0.60)):
        curve = seed_curve(spec(traits))
        asleep, *steps = curve.settings
        assert asleep == Setting(ASLEEP, traits.sleep_power_w, 0.0)
        assert next(s.power_w for s in steps) == round(3250 * floor)
        assert steps[-1].power_w == 3250
        assert steps[-1].hashrate_ths == pytest.approx(3250 / 29.5, abs=1e-3)
        low = steps[0]
        assert low.hashrate_ths == pytest.approx(3250 / 29.5 * floor**PRIOR_EXPONENT, abs=1e-3)
        # concave from the first step up: every step is on the hull
        assert curve.hull[1:] == tuple(range(1, len(curve.settings)))


def test_seed_stock_antminer_has_low_and_normal_whatsminer_rated_only() -> None:
    stock = seed_curve(spec(STOCK))
    assert [s.power_w for s in stock.settings] == [STOCK.sleep_power_w, 2275, 3250]
    whatsminer = seed_curve(spec(WHATSMINER, 3400, 34.0))
    assert [s.power_w for s in whatsminer.settings] == [WHATSMINER.sleep_power_w, 3400]
    pcts = seed_curve(spec(WHATSMINER, 3400, 34.0), fractions=(0.5, 0.8, 1.0))
    assert [s.name for s in pcts.settings] == [ASLEEP, "1700W", "2720W", "3400W"]
    with pytest.raises(ValueError, match=r"m0: a step at 1\.2"):
        seed_curve(spec(WHATSMINER), fractions=(1.2,))


def test_seed_from_firmware_profiles_drops_overclocks_and_sorts() -> None:
    profiles = [("default", 3250, 110.0), ("+1", 3500, 118.0), ("-1", 2990, 104.0)]
    curve = seed_curve(spec(LUXOS), profiles=profiles)
    assert [s.name for s in curve.settings] == [ASLEEP, "-1", "default"]
    with pytest.raises(ValueError, match="m0: no profile at or below"):
        seed_curve(spec(LUXOS), profiles=[("+1", 3500, 118.0)])


def test_curve_rejects_bad_settings_with_their_name() -> None:
    with pytest.raises(ValueError, match="starts with its asleep"):
        Curve((Setting("default", 3000, 100),))
    with pytest.raises(ValueError, match="'x': power_w nan"):
        Curve((Setting(ASLEEP, 20, 0), Setting("x", float("nan"), 1)))
    with pytest.raises(ValueError, match="twice"):
        Curve((Setting(ASLEEP, 20, 0), Setting("x", 1, 1), Setting("x", 2, 2)))


def test_learn_averages_then_smooths_and_leaves_bad_input_unheld() -> None:
    curve = seed_curve(spec(LUXOS))
    name = curve.settings[-1].name
    first = learn(curve, name, 3300, 100.0)
    assert first.settings[-1] == Setting(name, 3300, 100.0, 1)  # the first replaces the seed
    second = learn(first, name, 3100, 104.0)
    assert second.settings[-1] == Setting(name, 3200, 102.0, 2)  # then a mean
    later = second
    for _ in range(10):
        later = learn(later, name, 3200, 102.0)
    moved = learn(later, name, 3700, 102.0)
    assert moved.settings[-1].power_w == pytest.approx(3200 + 0.2 * 500)  # then the weight
    assert curve.settings[-1].samples == 0  # values: the old curve is untouched
    asleep = learn(curve, ASLEEP, 30, 5.0)
    assert asleep.settings[0] == Setting(ASLEEP, 30, 0.0, 1)
    with pytest.raises(ValueError, match="hashrate_ths -1"):
        learn(curve, name, 3000, -1)
    with pytest.raises(ValueError, match="no setting 'turbo'"):
        learn(curve, "turbo", 3000, 100)


def test_hull_skips_a_costly_wake_and_dominated_steps() -> None:
    settings = (
        Setting(ASLEEP, 50, 0),
        Setting("low", 1500, 30),  # under the chord asleep -> mid: a costly wake
        Setting("mid", 2000, 80),
        Setting("same", 2000, 70),  # same draw, less hashrate
        Setting("high", 3000, 100),
        Setting("worse", 3200, 99),  # more draw, less hashrate
    )
    assert upper_hull(settings) == (0, 2, 4)
    assert upper_hull(settings, (1, 4)) == (1, 4)
    assert Curve(settings).hull == (0, 2, 4)


def test_curve_round_trips_for_the_journal_and_names_a_bad_row() -> None:
    curve = learn(seed_curve(spec(BRAIINS)), "1950W", 1960, 71.5)
    assert curve_from_dict(curve_to_dict(curve)) == curve
    with pytest.raises(ValueError, match="row 1"):
        curve_from_dict({"settings": [["asleep", 30, 0, 0], ["x", "3000", 1, 0]]})


@given(st.lists(st.tuples(st.floats(1, 5000), st.floats(0, 300)), min_size=1, max_size=8))
def test_hull_is_concave_rising_and_starts_lowest(points: list[tuple[float, float]]) -> None:
    settings = [Setting(ASLEEP, 10, 0)] + [
        Setting(f"s{i}", p, h) for i, (p, h) in enumerate(points)
    ]
    hull = upper_hull(settings)
    assert settings[hull[0]].power_w == min(s.power_w for s in settings)
    pts = [settings[i] for i in hull]
    assert all(b.power_w > a.power_w for a, b in itertools.pairwise(pts))
    assert all(b.hashrate_ths > a.hashrate_ths for a, b in itertools.pairwise(pts))
    assert max(s.hashrate_ths for s in settings) == pts[-1].hashrate_ths
    slopes = [
        (b.hashrate_ths - a.hashrate_ths) / (b.power_w - a.power_w)
        for a, b in itertools.pairwise(pts)
    ]
    assert all(y < x + 1e-9 for x, y in itertools.pairwise(slopes))
    # no setting lies above the hull's piecewise line
    for s in settings:
        for a, b in itertools.pairwise(pts):
            if a.power_w <= s.power_w <= b.power_w:
                line = a.hashrate_ths + (s.power_w - a.power_w) * (
                    (b.hashrate_ths - a.hashrate_ths) / (b.power_w - a.power_w)
                )
                assert s.hashrate_ths <= line + 1e-6


def test_a_journaled_curve_with_a_bad_sample_count_is_refused_not_fatal() -> None:
    """Found in review: Infinity stopped the restore with OverflowError, and -1 the first
    fold with ZeroDivisionError; each is now a ValueError naming the row."""
    good = curve_to_dict(seed_curve(spec(LUXOS)))
    for bad in (float("inf"), -1, 2.5, float("nan"), 10**400):
        rows = [list(r) for r in good["settings"]]
        rows[1][3] = bad
        with pytest.raises(ValueError, match="settings row 1"):
            curve_from_dict({"settings": rows})
