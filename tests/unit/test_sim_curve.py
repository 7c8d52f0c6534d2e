"""Each simulated family hashes along one concave curve over its settings, and says so over
its real protocol: LuxOS profiles, a Braiins power target, a Whatsminer power percent, a
stock Antminer's low mode."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.transport import http
from sim.antminer_stock import family as antminer_family
from sim.farm import SimFarm
from sim.physics import hashrate_fraction
from tests.unit.conftest import MakeFarm, Time
from tests.unit.test_sim_braiins_os import REST_PORT, login, rest
from tests.unit.test_sim_luxos import cmd
from tests.unit.test_sim_whatsminer import V2_PORT, command, token, v2

NAMEPLATE_TH = 3250 / 29.5


def test_curve_passes_through_luxors_published_ladder() -> None:
    # An S19j Pro 104T: 545 MHz at 13.4 V; four 25 MHz / 0.1 V steps down is 445 MHz at
    # 13.0 V. Hashrate goes with frequency, chip power with f * V^2.
    f, v = 445 / 545, 13.0 / 13.4
    assert hashrate_fraction(f * v * v) == pytest.approx(f, abs=1e-6)
    assert hashrate_fraction(1.0) == pytest.approx(1.0, abs=1e-9)
    assert hashrate_fraction(0.0) == 0.0


@given(
    st.floats(0.05, 1.5),
    st.floats(0.01, 0.5),
    st.floats(0.01, 0.5),
)
def test_curve_rises_with_falling_marginal_hashrate(low: float, gap1: float, gap2: float) -> None:
    mid, high = low + gap1, low + gap1 + gap2
    h_low, h_mid, h_high = (hashrate_fraction(p) for p in (low, mid, high))
    assert h_low < h_mid < h_high
    # concave: the slope over [low, mid] is at least the slope over [mid, high]
    assert (h_mid - h_low) / gap1 >= (h_high - h_mid) / gap2 - 1e-6


async def test_luxos_profiles_are_concave_and_summary_hashes_the_lowest(
    make_farm: MakeFarm, clock: Time
) -> None:
    farm = await make_farm(1, 3250, 29.5)
    profiles = sorted((await cmd(farm, "profiles"))["PROFILES"], key=lambda p: p["Watts"])
    slopes = [
        (b["Hashrate"] - a["Hashrate"]) / (b["Watts"] - a["Watts"])
        for a, b in itertools.pairwise(profiles)
    ]
    assert len(slopes) >= 4
    # TH/s per W falls step by step (rounding to 0.1 TH/s allows a hair of slack)
    assert all(later <= earlier + 2e-4 for earlier, later in itertools.pairwise(slopes))
    low = profiles[0]
    assert low["Hashrate"] / low["Watts"] > NAMEPLATE_TH / 3250  # more TH/s per W than default
    sid = (await cmd(farm, "logon"))["SESSION"][0]["SessionID"]
    await cmd(farm, "profileset", f"{sid},{low['Profile Name']}")
    clock.now += 30
    summary = (await cmd(farm, "summary"))["SUMMARY"][0]
    assert summary["GHS 5s"] == pytest.approx(low["Hashrate"] * 1000, rel=1e-3)


async def test_braiins_power_target_hashes_on_the_curve(make_farm: MakeFarm, clock: Time) -> None:
    farm = await make_farm(1, 3250, 29.5, driver="braiins-os", port=REST_PORT)
    try:
        tok = await login(farm)
        await rest(farm, "PUT", "/performance/power-target", {"watt": 1950}, token=tok)
        clock.now += 300
        stats = (await rest(farm, "GET", "/miner/stats", token=tok))[1]
        ghs = stats["miner_stats"]["real_hashrate"]["last_5s"]["gigahash_per_second"]
        watts = stats["power_stats"]["approximated_consumption"]["watt"]
    finally:
        await http.close_sessions()
    assert watts == 1950
    expected = NAMEPLATE_TH * hashrate_fraction(1950 / 3250)
    assert ghs / 1000 == pytest.approx(expected, abs=0.1)
    assert ghs / 1000 / watts > NAMEPLATE_TH / 3250 * 1.05  # 60 % power: >5 % better J/TH


async def test_whatsminer_power_percent_hashes_on_the_curve(
    make_farm: MakeFarm, clock: Time
) -> None:
    farm: SimFarm = await make_farm(1, 3400, 34.0, driver="whatsminer-v2", port=V2_PORT)
    sign, key = await token(farm)
    await command(farm, key, {"cmd": "set_power_pct", "percent": "70", "token": sign})
    clock.now += 3600  # past the ramp and the frequency climb
    row = (await v2(farm, {"cmd": "summary"}))["SUMMARY"][0]
    assert row["Power"] == 2380
    expected_ths = 3400 / 34.0 * hashrate_fraction(0.7)
    assert row["MHS 1m"] / 1e6 == pytest.approx(expected_ths, abs=0.1)
    assert row["MHS 1m"] / 1e6 > 0.7 * 100  # better than proportional


def test_stock_antminer_low_mode_is_more_efficient_than_normal() -> None:
    model = antminer_family.model_for(3250, 29.5)
    low, default = model.profile("low"), model.profile("default")
    assert low is not None
    assert default is not None
    assert low.hashrate_ths / low.power_w > default.hashrate_ths / default.power_w
    assert low.hashrate_ths == pytest.approx(default.hashrate_ths * hashrate_fraction(0.7), abs=0.1)
