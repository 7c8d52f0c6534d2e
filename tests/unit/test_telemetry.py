"""Health is a state: logged once when it changes, quiet while it stays."""

from __future__ import annotations

import asyncio
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta

from structlog.testing import capture_logs

from controller.clock import FakeClock
from controller.core.model import ActionKind, MinerSpec, MinerView, OutletReading
from controller.loop.telemetry import Activity, Poller, Readings
from drivers.errors import DeviceTimeoutError, VerificationError
from drivers.miners.luxos import TRAITS, LuxosMiner
from drivers.types import DriverTraits, MinerEndpoint, MinerReading, Mode
from tests.unit.conftest import MakeFarm, Time

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SPEC = MinerSpec("m1", "luxos", "c1", 3000, 21.5, DriverTraits(25, 5, 10))
MINING = MinerReading(Mode.MINING, 3000, 140.0, (60.0,))


def test_telemetry_health_transitions_are_logged_once() -> None:
    readings = Readings({"m1": SPEC})
    with capture_logs() as logs:
        for i in range(3):
            readings.fail("m1", DeviceTimeoutError("m1", "read", "no reply within 3 s"))
            assert not readings.view("m1").healthy
            del i
        readings.record("m1", MINING, T0)
        readings.record("m1", MINING, T0 + timedelta(seconds=5))
    levels = [(entry["log_level"], entry["event"]) for entry in logs]
    assert levels == [("warning", "miner unhealthy"), ("info", "miner recovered")]
    assert logs[0]["reason"] == "timeout: no reply within 3 s"


def test_telemetry_command_fault_survives_successful_reads() -> None:
    readings = Readings({"m1": SPEC})
    failures = readings.fail("m1", VerificationError("m1", "sleep", "still mining"), command=True)
    assert failures == 1
    readings.record("m1", MINING, T0)  # the miner answers reads, but it lied
    view = readings.view("m1")
    assert not view.healthy
    assert view.health_reason == "lying: still mining"
    assert readings.fail("m1", VerificationError("m1", "sleep", "still mining"), command=True) == 2
    readings.record("m1", MinerReading(Mode.SLEEPING, 25, 0, ()), T0, command=True)
    assert readings.view("m1").healthy


def test_telemetry_failed_command_that_landed_recovers_once_read_in_its_mode() -> None:
    # A stock Antminer's save can time out across its restart and still land: when reads
    # show the mode the command aimed for, the miner is healthy again, logged once each way.
    readings = Readings({"m1": SPEC})
    readings.record("m1", MINING, T0)
    with capture_logs() as logs:
        err = DeviceTimeoutError("m1", "sleep", "no verified result within 110 s")
        readings.fail("m1", err, command=True, aimed=Mode.SLEEPING)
        readings.record("m1", MINING, T0 + timedelta(seconds=5))  # not there yet
        assert not readings.view("m1").healthy
        readings.record("m1", MinerReading(Mode.SLEEPING, 60, 0.0, ()), T0 + timedelta(seconds=9))
        readings.record("m1", MinerReading(Mode.SLEEPING, 60, 0.0, ()), T0 + timedelta(seconds=14))
    assert readings.view("m1").healthy
    events = [(entry["log_level"], entry["event"]) for entry in logs]
    assert events == [("warning", "miner unhealthy"), ("info", "miner recovered")]


def test_telemetry_command_read_back_marks_the_change_from_when_the_command_began() -> None:
    readings = Readings({"m1": SPEC})
    readings.record("m1", MINING, T0)
    asleep = MinerReading(Mode.SLEEPING, 25, 0.0, ())
    readings.record("m1", asleep, T0 + timedelta(seconds=12), command=True, since=T0)
    assert readings.view("m1").mode_since == T0


def test_telemetry_mode_since_marks_transitions() -> None:
    readings = Readings({"m1": SPEC})
    readings.record("m1", MINING, T0)
    assert readings.view("m1").mode_since is None  # first sight: no known transition
    readings.record("m1", MINING, T0 + timedelta(seconds=5))
    assert readings.view("m1").mode_since is None
    asleep = MinerReading(Mode.SLEEPING, 2000, 0.0, ())
    readings.record("m1", asleep, T0 + timedelta(seconds=9))
    assert readings.view("m1").mode_since == T0 + timedelta(seconds=9)


def test_telemetry_failed_command_drops_the_reading() -> None:
    readings = Readings({"m1": SPEC})
    asleep = MinerReading(Mode.SLEEPING, 25, 0.0, ())
    readings.record("m1", asleep, T0)
    # A wake that timed out may have landed: the miner is unknown, counted at rated power.
    readings.fail("m1", DeviceTimeoutError("m1", "wake", "no reply"), command=True)
    assert readings.view("m1").read_at is None
    assert not readings.view("m1").fresh(T0, timedelta(seconds=15))
    # A lying miner's read-back is known and kept.
    readings.record("m1", MINING, T0)
    readings.fail(
        "m1", VerificationError("m1", "sleep", "still mining", MINING), command=True, known=True
    )
    assert readings.view("m1").read_at == T0


async def test_telemetry_fast_sweeps_read_only_miners_in_motion(
    make_farm: MakeFarm, clock: Time
) -> None:
    farm = await make_farm(4, 3000, 21.5)
    ticks = FakeClock()
    specs = {m: MinerSpec(m, "luxos", "c1", 3000, 21.5, TRAITS) for m in farm.miners}
    readings = Readings(specs)
    drivers = {
        m: LuxosMiner(MinerEndpoint(m, sim.spec.host, sim.spec.port, 1.0))
        for m, sim in farm.miners.items()
    }
    poller = Poller(
        drivers,
        readings,
        ticks,
        interval_s=5,
        fast_interval_s=1,
        concurrency=4,
        activity=Activity(),
    )
    await poller.sweep()
    assert poller.reads_planned == 4  # a slow sweep reads everyone
    # m0 was just put to sleep; the others have been mining all along.
    asleep = await drivers["m0"].sleep()
    readings.record("m0", asleep, ticks.now(), command=True)
    poller.set_fast(True)
    per_sweep = []
    for _ in range(7):  # one fast sweep a second
        ticks.advance(1)
        clock.now += 1
        before = poller.reads_planned
        await poller.sweep()
        per_sweep.append(poller.reads_planned - before)
    # m0 is read every second until one fast interval past its 5 s ramp; the settled
    # miners only when the slow cadence (5 s) calls for them, so none is read less often.
    assert per_sweep == [1, 1, 1, 1, 4, 1, 0]
    settled = readings.view("m0").reading
    assert settled is not None
    assert settled.mode is Mode.SLEEPING
    assert settled.power_w <= 100  # the fast reads saw the ramp end
    assert readings.view("m1").read_at == ticks.now() - timedelta(seconds=2)
    for driver in drivers.values():
        await driver.close()


def test_an_outlet_found_off_counts_as_cut_and_one_found_on_is_no_longer_cut() -> None:
    readings = Readings({"m1": SPEC})
    at = datetime(2026, 11, 23, 10, tzinfo=UTC)
    readings.record_outlet("m1", OutletReading(on=False, power_w=0.0, read_at=at))
    assert readings.view("m1").cut_at == at  # after a restart: restored in time, not never
    later = at + timedelta(minutes=1)
    readings.record_outlet("m1", OutletReading(on=True, power_w=25.0, read_at=later))
    view = readings.view("m1")
    assert view.cut_at is None
    assert view.restored_at == later  # it boots now


def test_system_clock_is_steady_when_the_wall_clock_steps() -> None:
    """A wall clock stepped by an hour moves nothing the daemon times; it is reported."""
    from controller.clock import SystemClock  # noqa: PLC0415

    wall, mono = [1_795_000_000.0], [100.0]
    clock = SystemClock(wall=lambda: wall[0], monotonic=lambda: mono[0])
    start = clock.time()
    mono[0] += 10
    wall[0] += 10 + 3600  # ten seconds pass, and someone steps the wall clock an hour on
    assert clock.time() == start + 10
    assert clock.wall_offset_s() == 3600
    wall[0] -= 7200  # and back past where it was
    assert clock.time() == start + 10
    assert clock.wall_offset_s() == -3600


def test_telemetry_a_lost_power_target_takes_two_readings_in_a_row() -> None:
    spec = MinerSpec("m1", "luxos", "c1", 3000, 21.5, TRAITS)  # LuxOS: a power target
    readings = Readings({"m1": spec})
    readings.record("m1", MINING, T0)
    readings.set_ladder("m1", lowered_at=T0)
    at_floor = MinerReading(Mode.MINING, 2100, 100.0, (60.0,))
    landed = T0 + timedelta(seconds=TRAITS.retarget_s + 5)
    readings.record("m1", at_floor, landed)
    readings.record("m1", MINING, landed + timedelta(seconds=1))  # one overshoot
    readings.record("m1", at_floor, landed + timedelta(seconds=2))
    readings.record("m1", MINING, landed + timedelta(seconds=3))  # and another, alone
    assert readings.view("m1").lowered_at == T0
    assert readings.targets_lost == []
    readings.record("m1", MINING, landed + timedelta(seconds=4))  # two in a row: lost
    assert readings.view("m1").lowered_at is None
    assert [m for m, _ in readings.targets_lost] == ["m1"]


async def test_telemetry_starts_no_read_while_the_control_loop_has_the_floor(
    make_farm: MakeFarm,
) -> None:
    """A signal's wake, and the cycle it wakes (pause to resume), hold telemetry's reads:
    the decision and its first commands have the event loop."""
    farm = await make_farm(3, 3000, 21.5)
    specs = {m: MinerSpec(m, "luxos", "c1", 3000, 21.5, TRAITS) for m in farm.miners}
    readings = Readings(specs)
    drivers = {
        m: LuxosMiner(MinerEndpoint(m, sim.spec.host, sim.spec.port, 1.0))
        for m, sim in farm.miners.items()
    }
    poller = Poller(
        drivers,
        readings,
        FakeClock(),
        interval_s=5,
        fast_interval_s=1,
        concurrency=1,
        activity=Activity(),
    )
    wake = asyncio.Event()
    poller.defer_to = wake
    wake.set()  # a signal arrived; its cycle has not run yet
    sweep = asyncio.create_task(poller.sweep())
    await asyncio.sleep(0.2)  # a loopback read takes milliseconds
    assert all(v.read_at is None for v in readings.views())
    wake.clear()  # the supervisor woke and its cycle runs
    poller.pause()
    await asyncio.sleep(0.2)
    assert all(v.read_at is None for v in readings.views())
    poller.resume()  # the cycle ended
    await sweep
    assert all(v.read_at is not None for v in readings.views())
    for driver in drivers.values():
        await driver.close()


def test_telemetry_set_pending_keeps_every_other_field() -> None:
    # set_pending builds the view field by field for speed: a field added to MinerView and
    # forgotten there would be dropped silently (outlet_at_read once was).
    readings = Readings({"m1": SPEC})
    outlet = OutletReading(on=True, power_w=3000.0, read_at=T0)
    readings.record_outlet("m1", outlet)
    readings.record("m1", MINING, T0)
    readings.set_ladder("m1", lowered_at=T0, warming_until=T0)
    before = readings.view("m1")
    assert before.outlet_at_read == outlet
    readings.set_pending("m1", ActionKind.SLEEP, resumed=True)
    after = readings.view("m1")
    expected = replace(before, pending=ActionKind.SLEEP, resumed=True)
    for f in fields(MinerView):
        assert getattr(after, f.name) == getattr(expected, f.name), f.name


async def test_telemetry_reads_go_on_after_a_wake_whose_cycle_is_a_tick(
    make_farm: MakeFarm,
) -> None:
    # A fan-out settling or a relay trip sets the wake without a signal: the cycle it causes
    # is a tick. A read worker that met the wake paused; the cycle's end resumes it, and
    # were it never to come, the wait is bounded.
    farm = await make_farm(2, 3000, 21.5)
    specs = {m: MinerSpec(m, "luxos", "c1", 3000, 21.5, TRAITS) for m in farm.miners}
    readings = Readings(specs)
    drivers = {
        m: LuxosMiner(MinerEndpoint(m, sim.spec.host, sim.spec.port, 1.0))
        for m, sim in farm.miners.items()
    }
    clock = FakeClock()
    poller = Poller(
        drivers,
        readings,
        clock,
        interval_s=5,
        fast_interval_s=1,
        concurrency=1,
        activity=Activity(),
    )
    wake = asyncio.Event()
    poller.defer_to = wake
    wake.set()  # set by the ledger, not a signal; nobody calls resume()
    sweep = asyncio.create_task(poller.sweep())
    await asyncio.sleep(0.1)
    assert all(v.read_at is None for v in readings.views())
    wake.clear()
    clock.advance(1.0)  # one fast interval later the paused worker reads on
    await asyncio.wait_for(sweep, 10)
    assert all(v.read_at is not None for v in readings.views())
