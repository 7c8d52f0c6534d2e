"""The LuxOS driver against the simulator over real TCP, through every fault mode."""

from __future__ import annotations

import asyncio

import pytest

from drivers.errors import (
    DeviceTimeoutError,
    ProtocolError,
    RejectedError,
    SessionBusyError,
    UnreachableError,
    VerificationError,
)
from drivers.miners.luxos import LuxosMiner
from drivers.registry import default_registry
from drivers.transport import cgminer_tcp
from drivers.types import Capability, MinerEndpoint, Mode
from sim.cgminer_server import CgminerServer
from sim.farm import SimFarm
from sim.faults import Fault
from sim.luxos import LuxosDevice
from sim.physics import Profile
from tests.unit.conftest import MakeFarm, Time


@pytest.fixture
async def farm(make_farm: MakeFarm) -> SimFarm:
    return await make_farm(2, 3010, 21.5, default_ambient_c=5.0)


def driver(farm: SimFarm, miner: str = "m0", timeout_s: float = 0.5) -> LuxosMiner:
    spec = farm.miners[miner].spec
    return LuxosMiner(MinerEndpoint(miner, spec.host, spec.port, timeout_s))


async def session(farm: SimFarm, miner: str = "m0") -> str:
    reply = await cgminer_tcp.request(
        farm.miners[miner].spec.host, 4028, "session", timeout_s=1, device=miner
    )
    sid: str = reply["SESSION"][0]["SessionID"]
    return sid


async def foreign_logon(farm: SimFarm, miner: str = "m0") -> str:
    reply = await cgminer_tcp.request(
        farm.miners[miner].spec.host, 4028, "logon", timeout_s=1, device=miner
    )
    sid: str = reply["SESSION"][0]["SessionID"]
    return sid


def test_luxos_is_registered_with_its_traits() -> None:
    entry = default_registry().get("LUXOS")
    assert entry.default_port == 4028
    assert entry.traits.sleep_power_w == 25
    miner = entry.factory(MinerEndpoint("x", "127.0.0.1", 4028, 1.0))
    assert Capability.SLEEP in miner.capabilities


async def test_luxos_probe_and_read(farm: SimFarm) -> None:
    miner = driver(farm)
    await miner.probe()
    assert miner.model == "Antminer S19 XP"
    reading = await miner.read()
    assert reading.mode is Mode.MINING
    assert reading.power_w == 3010
    assert reading.hashrate_ths == pytest.approx(140.0, rel=0.01)
    assert len(reading.board_temps_c) == 3
    assert reading.profile == "default"


async def test_luxos_sleep_and_wake_are_verified_and_release_the_session(
    farm: SimFarm, clock: Time
) -> None:
    miner = driver(farm)
    reading = await miner.sleep()
    assert reading.mode is Mode.SLEEPING
    assert farm.miners["m0"].physics.mode is Mode.SLEEPING
    assert await session(farm) == ""  # logon -> command -> logoff, never held
    clock.now += 10
    assert (await miner.read()).power_w == 25
    assert (await miner.wake()).mode is Mode.MINING
    assert await session(farm) == ""
    assert list(farm.miners["m0"].device.commands) == ["sleep", "wakeup"]


async def test_luxos_set_profile_is_verified(farm: SimFarm) -> None:
    miner = driver(farm)
    reading = await miner.set_profile("525MHz")
    assert reading.profile == "525MHz"
    with pytest.raises(RejectedError, match="Invalid profile"):
        await miner.set_profile("9000MHz")
    with pytest.raises(RejectedError, match="invalid profile name"):
        await miner.set_profile("a,b")


async def test_luxos_never_adopts_a_foreign_session(farm: SimFarm) -> None:
    theirs = await foreign_logon(farm)
    with pytest.raises(SessionBusyError, match="another client holds") as err:
        await driver(farm).sleep()
    assert err.value.kind == "session-busy"
    assert await session(farm) == theirs  # still theirs: not used, not logged off
    assert farm.miners["m0"].physics.mode is Mode.MINING


async def test_luxos_waits_briefly_for_a_foreign_session_to_end(farm: SimFarm) -> None:
    theirs = await foreign_logon(farm)

    async def release() -> None:
        await asyncio.sleep(0.3)
        await cgminer_tcp.request(
            farm.miners["m0"].spec.host, 4028, "logoff", theirs, timeout_s=1, device="m0"
        )

    releaser = asyncio.create_task(release())
    assert (await driver(farm).sleep()).mode is Mode.SLEEPING
    await releaser


async def test_luxos_releases_its_own_leaked_session(farm: SimFarm) -> None:
    miner = driver(farm)
    mine = await foreign_logon(farm)
    miner._leaked_sid = mine  # as if our logoff had been lost on the wire
    assert (await miner.sleep()).mode is Mode.SLEEPING
    assert getattr(miner, "_leaked_sid") is None  # noqa: B009 - mypy narrowed it above
    assert await session(farm) == ""


async def test_luxos_reclaims_the_session_a_dead_process_left(farm: SimFarm) -> None:
    """A daemon killed mid-write leaves its session open for 60 s; the restarted one, told
    by its journal that a write was on the wire, releases it instead of waiting."""
    await foreign_logon(farm)  # the dead process's, unknown to this driver
    miner = driver(farm)
    with pytest.raises(SessionBusyError):
        await miner.sleep()
    await miner.reclaim()
    assert await session(farm) == ""
    assert (await miner.sleep()).mode is Mode.SLEEPING
    await miner.reclaim()  # nothing held: nothing to do
    assert await session(farm) == ""


async def test_luxos_falls_back_when_joins_are_refused(farm: SimFarm) -> None:
    device = farm.miners["m0"].device
    assert isinstance(device, LuxosDevice)
    device.joinable = frozenset()  # older firmware
    miner = driver(farm)
    assert (await miner.read()).power_w == 3010
    assert miner._joined is False
    requests = farm.miners["m0"].server.requests
    await miner.read()
    assert farm.miners["m0"].server.requests - requests == 5


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault.REFUSE, UnreachableError, "connection refused"),
        (Fault.STALL, DeviceTimeoutError, "no complete reply within 0.5 s"),
        (Fault.GARBAGE, ProtocolError, "unparseable reply"),
        (Fault.TRUNCATE, ProtocolError, "unparseable reply"),
    ],
)
async def test_luxos_read_faults_raise_typed_errors(
    farm: SimFarm, fault: Fault, error: type[Exception], message: str
) -> None:
    await farm.set_fault("m1", fault)
    with pytest.raises(error, match=message) as err:
        await driver(farm, "m1").read()
    assert str(err.value).startswith("m1: ")
    await farm.set_fault("m1", Fault.NONE)
    assert (await driver(farm, "m1").read()).power_w == 3010  # recovers


@pytest.mark.parametrize("fault", [Fault.QUIRKS, Fault.NO_CLOSE])
async def test_luxos_survives_quirky_framing_and_json(farm: SimFarm, fault: Fault) -> None:
    await farm.set_fault("m1", fault)
    miner = driver(farm, "m1", timeout_s=2.0)
    assert (await miner.read()).power_w == 3010
    assert (await miner.sleep()).mode is Mode.SLEEPING


async def test_luxos_slow_device_within_and_beyond_the_deadline(farm: SimFarm) -> None:
    await farm.set_fault("m1", Fault.SLOW, slow_s=0.1)
    assert (await driver(farm, "m1").read()).power_w == 3010
    await farm.set_fault("m1", Fault.SLOW, slow_s=1.0)
    with pytest.raises(DeviceTimeoutError):
        await driver(farm, "m1").read()


async def test_luxos_renews_an_expired_session_once_then_fails(farm: SimFarm) -> None:
    await farm.set_fault("m1", Fault.EXPIRE_SESSIONS)
    with pytest.raises(RejectedError, match="Invalid session_id"):
        await driver(farm, "m1").sleep()
    assert farm.miners["m1"].physics.mode is Mode.MINING


async def test_luxos_lying_miner_is_detected_by_read_back(farm: SimFarm) -> None:
    await farm.set_fault("m1", Fault.LIE)
    with pytest.raises(VerificationError, match="acknowledged sleep but reads back mining") as err:
        await driver(farm, "m1").sleep()
    assert err.value.kind == "lying"
    assert err.value.reading is not None
    assert err.value.reading.mode is Mode.MINING


async def test_luxos_one_call_in_flight_per_miner(farm: SimFarm) -> None:
    await farm.set_fault("m0", Fault.SLOW, slow_s=0.1)
    miner = driver(farm, timeout_s=2.0)
    before = farm.miners["m0"].server.requests
    results = await asyncio.gather(miner.read(), miner.sleep(), miner.read())
    assert [r.mode for r in results] == [Mode.MINING, Mode.SLEEPING, Mode.SLEEPING]
    # read, then logon/curtail/logoff/read-back, then read: strictly one after another.
    assert farm.miners["m0"].server.requests - before == 6
    server = farm.miners["m0"].server
    assert isinstance(server, CgminerServer)
    assert server.peak_connections == 1


async def test_luxos_read_back_reads_what_it_verifies(farm: SimFarm) -> None:
    miner = driver(farm)
    full = await miner.read()
    before = dict(farm.commands)
    asleep = await miner.sleep()
    new = {k: v - before.get(k, 0) for k, v in farm.commands.items() if v != before.get(k, 0)}
    assert new == {"logon": 1, "curtail": 1, "logoff": 1, "events+power": 1}
    assert asleep.board_temps_c == full.board_temps_c  # carried over from the full read
    assert asleep.profile == full.profile
    assert asleep.hashrate_ths == 0.0


async def test_luxos_read_back_without_a_prior_read_has_no_temperatures(farm: SimFarm) -> None:
    asleep = await driver(farm, "m1").sleep()
    assert asleep.mode is Mode.SLEEPING
    assert asleep.board_temps_c == ()
    assert asleep.profile is None


def test_luxos_absurd_watts_is_a_protocol_error() -> None:
    miner = LuxosMiner(MinerEndpoint("m0", "127.0.0.1", 4028, 1.0))
    for watts in (b"1e999", b'"inf"', b'"nan"'):
        raw = (
            b'{"power":[{"POWER":[{"Watts":' + watts + b'}],"STATUS":[{"STATUS":"S"}]}],'
            b'"events":[{"EVENTS":[],"STATUS":[{"STATUS":"S"}]}]}'
        )
        reply = cgminer_tcp.decode(raw, device="m0", op="read")
        with pytest.raises(ProtocolError, match="unexpected reply layout"):
            miner._parse({part: reply[part][0] for part in ("power", "events")})


async def test_luxos_session_cancelled_mid_logoff_is_released_next_time(farm: SimFarm) -> None:
    miner = driver(farm, timeout_s=2.0)
    sid = await foreign_logon(farm)  # stands for our own session, about to be logged off
    await farm.set_fault("m0", Fault.SLOW, slow_s=1.0)
    logoff = asyncio.create_task(miner._logoff(sid))
    await asyncio.sleep(0.1)
    logoff.cancel()  # a deadline or shutdown, while the miner is still answering
    with pytest.raises(asyncio.CancelledError):
        await logoff
    assert miner._leaked_sid == sid
    await farm.set_fault("m0", Fault.NONE)
    await asyncio.sleep(1.2)  # the slow logoff lands on the miner meanwhile, or not
    assert (await miner.sleep()).mode is Mode.SLEEPING


async def test_luxos_power_target_picks_the_largest_profile_that_fits(farm: SimFarm) -> None:
    miner = driver(farm)
    profiles = farm.miners["m0"].physics.model.all_profiles()
    below = max((p for p in profiles if p.power_w <= 2900), key=lambda p: p.power_w)
    assert (await miner.set_power_target(2900)).profile == below.name
    lowest = min(profiles, key=lambda p: p.power_w)
    assert (await miner.set_power_target(10)).profile == lowest.name


# -- a gentle wake, for cold boards --------------------------------------------------------


def lowest_profile(farm: SimFarm, miner: str = "m0") -> Profile:
    return min(farm.miners[miner].physics.model.all_profiles(), key=lambda p: p.power_w)


def test_luxos_gentle_start_is_its_lowest_step() -> None:
    traits = default_registry().get("luxos").traits
    assert traits.gentle_fraction == traits.power_floor_fraction == 0.70
    assert traits.gentle_extra_s > 0  # the profile's round trips come first


async def test_luxos_gentle_wake_starts_at_the_lowest_profile(farm: SimFarm, clock: Time) -> None:
    miner = driver(farm)
    await miner.sleep()
    clock.now += 60
    lowest = lowest_profile(farm)
    reading = await miner.wake(gentle=True)
    assert reading.mode is Mode.MINING
    assert reading.profile == lowest.name
    commands = list(farm.miners["m0"].device.commands)
    assert commands == ["sleep", f"profileset {lowest.name}", "wakeup"]
    assert await session(farm) == ""  # both writes released the session
    clock.now += 15
    assert farm.power_w("m0") == lowest.power_w
    assert (await miner.read()).power_w == lowest.power_w
    # The supervisor steps it up after the warm-up; a plain wake does not touch the profile.
    assert (await miner.set_power_target(3010)).profile == "default"


async def test_luxos_cold_boards_start_only_gently(make_farm: MakeFarm, clock: Time) -> None:
    farm = await make_farm(1, 3010, 21.5, ambient_c={"c1": -35.0})
    physics = farm.miners["m0"].physics
    miner = driver(farm)
    await miner.sleep()
    clock.now += 3600  # the boards cool to the container's -35 degC
    physics.advance(clock.now)
    assert max(physics.board_temps_c) < 0
    await miner.wake()  # LuxOS reads back no SLEEP event: the failure shows in the draw
    assert physics.failed_cold_boots == 1
    assert physics.mode is Mode.SLEEPING
    assert (await miner.wake(gentle=True)).profile == lowest_profile(farm).name
    assert physics.failed_cold_boots == 1  # the gentle start took
    clock.now += 15
    assert farm.power_w("m0") == lowest_profile(farm).power_w


async def test_luxos_gentle_wake_stops_when_the_low_profile_does_not_land(
    farm: SimFarm,
) -> None:
    farm.reset(Mode.SLEEPING)
    await farm.set_fault("m1", Fault.LIE)  # acknowledges profileset and does nothing
    with pytest.raises(VerificationError, match="acknowledged profileset but") as err:
        await driver(farm, "m1").wake(gentle=True)
    assert err.value.reading is not None
    assert err.value.reading.profile == "default"
    assert farm.commands["curtail"] == 0  # never woken at full power
    assert farm.miners["m1"].physics.mode is Mode.SLEEPING
