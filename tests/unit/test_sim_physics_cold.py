"""Winter physics of a simulated miner: board temperatures under fan control, cold boots
that fail, and the farm's start, cut and failure logs. Pure physics: no sockets."""

from __future__ import annotations

import pytest

from drivers.types import Mode
from sim.farm import SimFarm, SimMinerSpec
from sim.faults import Fault
from sim.physics import MinerModel, MinerPhysics, Profile

RATED_W = 3250
MODEL = MinerModel("Antminer S19 Pro", RATED_W, 110.0)  # LuxOS-style profile steps
GENTLE = MODEL.profile("475MHz")  # 68 % of rated: the one LuxOS step that starts gently
FULL = MODEL.profile("default")
COLD = -35.0
HOUR = 3600.0


def asleep_in_the_cold(now: float = 0.0) -> MinerPhysics:
    """A unit that has slept for hours in a -35 degC container: boards at ambient."""
    unit = MinerPhysics(MODEL, ambient_c=COLD, now=now, mode=Mode.SLEEPING)
    unit.advance(now + HOUR)
    return unit


def test_gentle_is_the_lowest_luxos_step_only() -> None:
    assert GENTLE is not None
    assert FULL is not None
    assert MODEL.gentle(GENTLE)
    assert not MODEL.gentle(FULL)
    assert not MODEL.gentle(Profile("just above", round(0.76 * RATED_W), 80.0))


@pytest.mark.parametrize(
    ("ambient_c", "fraction", "steady_c"),
    [
        (-35.0, 1.0, 55.0),  # fans at their minimum: warm, below the target
        (-35.0, 0.5, 10.0),
        (-35.0, 0.0, -35.0),  # asleep or cut: ambient
        (0.0, 1.0, 60.0),  # fans regulate to the target
        (15.0, 1.0, 60.0),
        (15.0, 0.0, 15.0),
        (35.0, 1.0, 77.0),  # fans flat out: hot air puts the boards above the target
    ],
)
def test_steady_board_temperature(ambient_c: float, fraction: float, steady_c: float) -> None:
    assert MODEL.board_steady_c(ambient_c, fraction * RATED_W) == pytest.approx(steady_c)


def test_steady_board_temperature_is_continuous_where_fans_start_regulating() -> None:
    edge_w = (MODEL.board_target_c - COLD) / MODEL.max_rise_c * RATED_W
    below = MODEL.board_steady_c(COLD, edge_w - 1)
    above = MODEL.board_steady_c(COLD, edge_w + 1)
    assert below < MODEL.board_target_c <= above
    assert above - below < 0.1


def test_mining_in_the_cold_keeps_boards_warm_with_per_board_offsets() -> None:
    unit = MinerPhysics(MODEL, ambient_c=15.0, now=0.0)
    assert unit.board_temps_c == pytest.approx([60.0, 60.7, 61.4])
    unit.set_ambient(COLD, 0.0)
    unit.advance(HOUR)
    assert unit.board_temps_c == pytest.approx([55.0, 55.7, 56.4])  # not +7 degC
    unit.sleep(HOUR)
    unit.advance(2 * HOUR)
    assert min(unit.board_temps_c) == pytest.approx(COLD + MODEL.max_rise_c * 25 / RATED_W)


def test_full_power_wake_with_cold_boards_fails_and_counts() -> None:
    unit = asleep_in_the_cold()
    started: list[tuple[float, float]] = []
    unit.on_start = lambda t, w: started.append((t, w))
    unit.wake(HOUR)
    assert unit.mode is Mode.SLEEPING  # a driver's verification sees it did not wake
    assert unit.failed_cold_boots == 1
    assert unit.cold_failed
    assert unit.control_up(HOUR)  # the API still answers
    assert unit.power_w(HOUR + 60) == MODEL.sleep_power_w
    assert unit.hashrate_ths(HOUR + 60) == 0
    assert started == []  # a failed cold boot is not a start
    unit.wake(HOUR + 60)  # trying again does not help
    assert (unit.mode, unit.failed_cold_boots) == (Mode.SLEEPING, 2)


def test_gentle_wake_succeeds_and_warms_the_boards_within_a_few_tau() -> None:
    assert GENTLE is not None
    unit = asleep_in_the_cold()
    started: list[tuple[float, float]] = []
    unit.on_start = lambda t, w: started.append((t, w))
    unit.set_profile(GENTLE, HOUR)  # set asleep: kept for the next start
    assert (unit.mode, unit.profile) == (Mode.SLEEPING, GENTLE)
    assert unit.power_w(HOUR) == MODEL.sleep_power_w
    unit.wake(HOUR)
    assert unit.mode is Mode.MINING
    assert (unit.failed_cold_boots, unit.cold_failed) == (0, False)
    assert started == [(HOUR, GENTLE.power_w)]
    assert unit.power_w(HOUR + 30) == GENTLE.power_w
    assert min(unit.board_temps_c) < 0  # slowly: still below freezing after 30 s
    tau = MODEL.thermal_tau_s
    unit.advance(HOUR + tau)
    assert min(unit.board_temps_c) > 0  # past the cold-boot threshold within one tau
    unit.advance(HOUR + 3 * tau)
    assert min(unit.board_temps_c) > 20  # heading for -35 + 90 * 0.68 = 26 degC


def test_a_failed_unit_recovers_with_a_gentle_wake_then_goes_full() -> None:
    assert GENTLE is not None
    assert FULL is not None
    unit = asleep_in_the_cold()
    unit.wake(HOUR)
    assert unit.cold_failed
    unit.set_profile(GENTLE, HOUR + 10)
    unit.wake(HOUR + 10)
    assert (unit.mode, unit.cold_failed, unit.failed_cold_boots) == (Mode.MINING, False, 1)
    unit.set_profile(FULL, HOUR + 400)  # warm and mining: raising the profile is no start
    assert unit.power_w(HOUR + 430) == RATED_W
    unit.advance(2 * HOUR)
    assert min(unit.board_temps_c) == pytest.approx(55.0)
    assert unit.failed_cold_boots == 1


def test_preheated_full_power_wake_succeeds() -> None:
    unit = asleep_in_the_cold()
    unit.wake(HOUR, preheated=True)
    assert (unit.mode, unit.cold_failed) == (Mode.MINING, False)
    assert unit.power_w(HOUR + 30) == RATED_W


def test_any_wake_succeeds_once_the_boards_are_above_the_threshold() -> None:
    unit = asleep_in_the_cold()
    unit.wake(HOUR)
    assert unit.cold_failed
    unit.set_ambient(5.0, HOUR)  # the container is heated
    unit.advance(2 * HOUR)
    assert min(unit.board_temps_c) > MODEL.cold_boot_c
    unit.wake(2 * HOUR)
    assert (unit.mode, unit.cold_failed, unit.failed_cold_boots) == (Mode.MINING, False, 1)


def test_a_short_sleep_in_the_cold_wakes_at_full_power() -> None:
    unit = MinerPhysics(MODEL, ambient_c=COLD, now=0.0)
    unit.sleep(0.0)
    unit.wake(60.0)  # boards still warm from mining
    assert (unit.mode, unit.failed_cold_boots) == (Mode.MINING, 0)


def test_waking_a_mining_unit_is_no_start() -> None:
    unit = MinerPhysics(MODEL, ambient_c=COLD, now=0.0)
    started: list[tuple[float, float]] = []
    unit.on_start = lambda t, w: started.append((t, w))
    unit.wake(10.0)
    assert started == []


def test_restore_with_cold_boards_boots_then_faults() -> None:
    unit = MinerPhysics(MODEL, ambient_c=COLD, now=0.0)
    started: list[tuple[float, float]] = []
    unit.on_start = lambda t, w: started.append((t, w))
    unit.cut(0.0)
    unit.advance(HOUR)
    assert min(unit.board_temps_c) < COLD + 1
    unit.restore(HOUR)
    assert not unit.control_up(HOUR + 1)  # the control board boots first
    assert unit.power_w(HOUR + 1) == MODEL.sleep_power_w
    after_init = HOUR + MODEL.boot_s + MODEL.board_init_s + MODEL.ramp_up_s + 1
    assert unit.control_up(after_init)
    assert unit.power_w(after_init) == MODEL.sleep_power_w
    assert (unit.mode, unit.cold_failed, unit.failed_cold_boots) == (Mode.SLEEPING, True, 1)
    assert started == []
    assert GENTLE is not None
    unit.set_profile(GENTLE, after_init)
    unit.wake(after_init)  # the operator's way out: a gentle start
    assert (unit.mode, unit.cold_failed) == (Mode.MINING, False)
    assert started == [(after_init, GENTLE.power_w)]


def test_restore_with_a_gentle_saved_profile_ramps_up() -> None:
    assert GENTLE is not None
    unit = MinerPhysics(MODEL, ambient_c=COLD, now=0.0, profile=GENTLE.name)
    started: list[tuple[float, float]] = []
    unit.on_start = lambda t, w: started.append((t, w))
    unit.cut(0.0)
    unit.restore(HOUR)
    assert started == [(HOUR, GENTLE.power_w)]
    ramped = HOUR + MODEL.boot_s + MODEL.board_init_s + MODEL.ramp_up_s
    assert unit.mode is Mode.MINING
    assert unit.power_w(ramped) == GENTLE.power_w
    assert unit.failed_cold_boots == 0


def test_restore_soon_after_a_cut_boots_fine_at_full_power() -> None:
    unit = MinerPhysics(MODEL, ambient_c=COLD, now=0.0)
    unit.cut(0.0)
    unit.restore(20.0)  # boards still well above 0 degC
    ramped = 20.0 + MODEL.boot_s + MODEL.board_init_s + MODEL.ramp_up_s
    assert (unit.mode, unit.power_w(ramped)) == (Mode.MINING, RATED_W)


def test_deceiving_unit_that_really_kept_mining_is_warm_and_wakes() -> None:
    unit = MinerPhysics(MODEL, ambient_c=COLD, now=0.0)
    unit.deceive(on=True, now=0.0)
    unit.sleep(0.0)  # only reported: it keeps mining, warm
    unit.advance(HOUR)
    assert unit.mode is Mode.SLEEPING
    assert unit.true_power_w(HOUR) == RATED_W
    unit.wake(HOUR)
    assert (unit.mode, unit.true_mode(), unit.failed_cold_boots) == (Mode.MINING, Mode.MINING, 0)


def test_deceiving_unit_really_asleep_and_cold_fails_the_same_way() -> None:
    unit = asleep_in_the_cold()
    unit.deceive(on=True, now=HOUR)
    unit.wake(HOUR)
    assert (unit.mode, unit.true_mode()) == (Mode.SLEEPING, Mode.SLEEPING)
    assert unit.true_power_w(HOUR + 60) == MODEL.sleep_power_w
    assert unit.failed_cold_boots == 1
    unit.cut(HOUR + 60)
    unit.restore(HOUR + 70)  # still cold, full profile: both the claim and the truth fault
    late = HOUR + 70 + MODEL.boot_s + MODEL.board_init_s + MODEL.ramp_up_s
    assert (unit.mode, unit.true_mode(), unit.true_power_w(late)) == (
        Mode.SLEEPING,
        Mode.SLEEPING,
        MODEL.sleep_power_w,
    )
    assert unit.failed_cold_boots == 2


def test_a_cut_unit_ignores_wake() -> None:
    unit = MinerPhysics(MODEL, ambient_c=15.0, now=0.0)
    unit.cut(0.0)
    unit.wake(1.0)
    assert (unit.mode, unit.power_w(20.0)) == (Mode.SLEEPING, 0.0)


# ---- the farm's logs ----


class Clock:
    def __init__(self) -> None:
        self.now = 1_795_000_000.0

    def __call__(self) -> float:
        return self.now


def cold_farm(clock: Clock, count: int = 3, mode: Mode = Mode.SLEEPING) -> SimFarm:
    specs = [
        SimMinerSpec(
            f"m{i}", "luxos", f"127.77.9.{i + 1}", 4028, "c1", RATED_W, 29.5, mode, Fault.NONE
        )
        for i in range(count)
    ]
    return SimFarm(specs, time_fn=clock, ambient_c={"c1": COLD}, default_ambient_c=15.0)


def test_farm_counts_failed_cold_boots_and_logs_only_real_starts() -> None:
    clock = Clock()
    farm = cold_farm(clock)
    assert GENTLE is not None
    for miner in farm.miners.values():
        miner.physics.wake(clock.now)
    assert farm.failed_cold_boots() == 3
    assert farm.starts == []
    farm.miners["m1"].physics.set_profile(GENTLE, clock.now)
    clock.now += 0.5
    farm.miners["m1"].physics.wake(clock.now)
    assert farm.starts == [(clock.now, "m1", float(GENTLE.power_w))]
    assert farm.failed_cold_boots() == 3
    assert farm.peak_start_w_per_s() == GENTLE.power_w


def test_farm_logs_restores_as_starts_and_cuts_with_their_ambient() -> None:
    clock = Clock()
    farm = cold_farm(clock, mode=Mode.MINING)
    farm.set_ambient("c1", -20.0)
    outlet = farm.outlet("m0")
    outlet.set_on(False)
    outlet.set_on(False)  # already off: no second cut
    assert farm.cuts == [(clock.now, "m0", "c1", -20.0)]
    clock.now += 10
    outlet.set_on(True)  # boards still warm: a start toward the saved profile
    assert farm.starts == [(clock.now, "m0", float(RATED_W))]
    farm.reset_counters()
    assert (farm.starts, farm.cuts, farm.failed_cold_boots()) == ([], [], 0)


def test_peak_start_window_is_half_open_and_per_second() -> None:
    farm = cold_farm(Clock(), count=1)
    farm.starts.extend([(10.0, "a", 1000.0), (10.5, "b", 2000.0), (11.0, "c", 4000.0)])
    assert farm.peak_start_w_per_s() == 6000.0  # 10.5 and 11.0; 10.0 is a full second back
    assert farm.peak_start_w_per_s(2.0) == 3500.0  # all three in 2 s
    assert farm.peak_start_w_per_s(0.1) == 40000.0
    with pytest.raises(ValueError, match="positive"):
        farm.peak_start_w_per_s(0)


def test_ambient_of_follows_scripting_and_defaults() -> None:
    farm = cold_farm(Clock(), count=1)
    assert farm.ambient_of("c1") == COLD
    assert farm.ambient_of("elsewhere") == 15.0
    farm.set_ambient("c1", -5.0)
    assert farm.ambient_of("c1") == -5.0
    assert farm.miners["m0"].physics.ambient_c == -5.0
