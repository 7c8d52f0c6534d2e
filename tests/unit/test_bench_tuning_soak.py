"""The tuning soak (bench/tuning_soak.py), small and short, so CI keeps it working: the
plant's physics, and a soak's structural results with and without the allocation."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.soak_plant import Plant, fraction
from bench.tuning_soak import CAP_AT_S, RULES, farm, soak
from controller.core.model import ActionKind
from drivers.types import Mode
from sim.physics import hashrate_fraction


@given(st.floats(min_value=0.0, max_value=1.2))
def test_the_tabulated_curve_is_the_simulators(share: float) -> None:
    assert fraction(share) == pytest.approx(hashrate_fraction(share), abs=1e-6)


def test_a_command_ramps_the_draw_over_the_familys_time() -> None:
    f = farm(10)
    plant = Plant(f.units, noise=0.0, rng=random.Random(1))
    lux = 0  # MIX: LuxOS first, then Braiins OS+ at index 6
    spec = f.units[lux].spec
    before, _ = plant.sample(0.0)
    plant.apply(lux, ActionKind.SLEEP, None, 1.0)
    mid, _ = plant.sample(1.0 + spec.traits.ramp_down_s / 2)
    after, ths = plant.sample(1.0 + spec.traits.ramp_down_s)
    assert before - spec.rated_power_w < mid < before
    assert after == pytest.approx(before - spec.rated_power_w + spec.traits.sleep_power_w)
    assert plant.units[lux].mode is Mode.SLEEPING
    # A wake comes back at the target the firmware kept; a LuxOS target is a profile.
    plant.apply(lux, ActionKind.TUNE, round(spec.rated_power_w * 0.8), 10.0)
    unit = plant.units[lux]
    assert unit.mode is Mode.MINING
    assert unit.target_w in unit.levels
    assert unit.target_w <= spec.rated_power_w * 0.8
    end, ths_end = plant.sample(10.0 + spec.traits.ramp_up_s)
    assert end == pytest.approx(after - spec.traits.sleep_power_w + unit.target_w)
    assert ths_end > ths


def test_the_plant_shares_nothing_between_runs() -> None:
    f = farm(10)
    first = Plant(f.units, noise=0.0, rng=random.Random(1))
    first.apply(0, ActionKind.SLEEP, None, 0.0)
    second = Plant(f.units, noise=0.0, rng=random.Random(1))
    assert second.units[0].mode is Mode.MINING
    assert second.sample(0.0) == (second.rating_w, sum(u.final_ths for u in second.units))


def test_a_short_soak_meets_the_deadline_holds_the_cap_and_counts_its_changes() -> None:
    f = farm(60)
    minutes = 8  # the allocation starts once the sleepers' dwell (5 min) is over
    # The daemon's 5 kW wake headroom is 3 % of this small farm's limit, and the allocation
    # keeps its draw under it (the ladder does not): scaled to the farm, as at 10,000 miners.
    rules = replace(RULES, wake_headroom_w=150)
    today = soak(f, cap=0.6, minutes=minutes, tuned=False, seed=3, rules=rules)
    tuned = soak(f, cap=0.6, minutes=minutes, tuned=True, seed=3, rules=rules)
    for run in (today, tuned):
        report = run.report()
        assert report["deadline_met"], report
        assert run.reached_s is not None
        assert run.reached_s <= CAP_AT_S + 60
        assert report["over_samples"] == 0, report
        assert report["headroom_min_w"] >= 0
        assert len(report["per_minute_phs"]) == minutes
        assert len(run.plan_ms) == CAP_AT_S + minutes * 60  # one plan per tick
        sent = sum(run.commands.values())
        assert report["changes_per_miner_hour"] == pytest.approx(
            sent / len(f.specs) / (run.after_s / 3600), abs=1e-4
        )
    assert tuned.captured is not None  # the allocation moved something
    assert tuned.commands[ActionKind.TUNE.value] > 0
    assert today.commands[ActionKind.TUNE.value] == 0
    # Once its first moves have landed (a minute on, Braiins OS+ retargets for two), the
    # allocation holds at least the ladder's hashrate. Not the whole window: its first
    # retune makes the ladder shed a few miners for half a minute (see bench/README.md).
    assert tuned.minutes[-1][0] >= today.minutes[-1][0]
