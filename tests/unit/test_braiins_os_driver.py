"""The Braiins OS+ driver against the simulator over real HTTP, through every fault mode."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.errors import (
    AuthError,
    DeviceTimeoutError,
    ProtocolError,
    RejectedError,
    UnreachableError,
    UnsupportedError,
    VerificationError,
)
from drivers.miners.braiins_os import (
    ENTRY,
    QUICK_RAMP_DOWN_S,
    QUICK_RAMP_UP_S,
    READ_PARTS,
    TRAITS,
    BraiinsOsMiner,
    PauseFans,
    QuickRamping,
    parse_reading,
)
from drivers.miners.braiins_os.parse import cooling_mode, pause_fans, quick_ramping, target_limits
from drivers.registry import MinerRegistry
from drivers.transport import http
from drivers.types import Capability, FanPause, MinerEndpoint, Mode
from sim.braiins_os import BraiinsDevice
from sim.farm import SimFarm
from sim.faults import Fault
from tests.unit.conftest import MakeFarm, Time

FIXTURES = Path(__file__).parent.parent / "fixtures" / "braiins_os" / "25.07"
REST_PORT = 8080  # the firmware's is 80; the simulator takes any
LOGIN = "POST /api/v1/auth/login"


@pytest.fixture(autouse=True)
async def _shared_http_session() -> AsyncIterator[None]:
    yield
    await http.close_sessions()  # the daemon does this on shutdown


@pytest.fixture
async def farm(make_farm: MakeFarm) -> SimFarm:
    return await make_farm(
        2, 3250, 29.5, driver="braiins-os", port=REST_PORT, default_ambient_c=5.0
    )


def driver(
    farm: SimFarm, miner: str = "m0", timeout_s: float = 0.5, password: str | None = None
) -> BraiinsOsMiner:
    spec = farm.miners[miner].spec
    return BraiinsOsMiner(MinerEndpoint(miner, spec.host, spec.port, timeout_s, password=password))


def device(farm: SimFarm, miner: str = "m0") -> BraiinsDevice:
    dev = farm.miners[miner].device
    assert isinstance(dev, BraiinsDevice)
    return dev


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_braiins_os_is_registered_with_its_traits() -> None:
    registry = MinerRegistry()
    registry.register(ENTRY)
    entry = registry.get("Braiins-OS")
    assert entry.default_port == 80
    assert entry.traits.fans_when_asleep is FanPause.CONFIGURABLE
    assert entry.traits.ramp_down_s < entry.traits.ramp_up_s < 10
    miner = entry.factory(MinerEndpoint("x", "127.0.0.1", 80, 1.0))
    assert miner.capabilities == {Capability.SLEEP, Capability.POWER_TARGET}


async def test_braiins_os_probe_and_read(farm: SimFarm) -> None:
    miner = driver(farm)
    await miner.probe()
    assert (miner.api_version, miner.firmware, miner.model) == (
        "1.7.0",
        "25.07",
        "Antminer S19j Pro",
    )
    reading = await miner.read()
    assert reading.mode is Mode.MINING
    assert reading.power_w == 3250
    assert reading.hashrate_ths == pytest.approx(3250 / 29.5, rel=0.01)
    assert len(reading.board_temps_c) == 3
    assert reading.profile == "3250W"


async def test_braiins_os_set_profile_is_unsupported(farm: SimFarm) -> None:
    with pytest.raises(UnsupportedError, match="no named profiles"):
        await driver(farm).set_profile("default")


async def test_braiins_os_sleep_and_wake_are_verified(farm: SimFarm, clock: Time) -> None:
    miner = driver(farm)
    reading = await miner.sleep()
    assert reading.mode is Mode.SLEEPING
    assert farm.miners["m0"].physics.mode is Mode.SLEEPING
    clock.now += 5  # quick ramping down: 2 s (+15 % unit spread)
    assert (await miner.read()).power_w == TRAITS.sleep_power_w
    assert (await miner.sleep()).mode is Mode.SLEEPING  # already paused: still verified
    assert (await miner.wake()).mode is Mode.MINING
    clock.now += 10
    assert (await miner.read()).power_w == 3250
    assert list(device(farm).commands) == ["pause", "resume"]


async def test_braiins_os_power_target_is_verified_and_retunes(farm: SimFarm, clock: Time) -> None:
    miner = driver(farm)
    reading = await miner.set_power_target(2500)
    assert reading.profile == "2500W"
    assert reading.power_w > 3000  # the tuner walks there; the target is what is verified
    clock.now += 60
    assert (await miner.read()).power_w == 2500
    with pytest.raises(
        RejectedError, match=r"HTTP 412: power target \[100W\] is not in allowed"
    ) as err:
        await miner.set_power_target(100)
    assert err.value.code == 412
    with pytest.raises(RejectedError, match="invalid power target"):
        await miner.set_power_target(0)


async def test_braiins_os_quick_ramping_is_applied(farm: SimFarm, clock: Time) -> None:
    miner = driver(farm)
    assert await miner.set_quick_ramping(12, 8) == QuickRamping(up_s=12, down_s=8)
    assert (device(farm).quick_up_s, device(farm).quick_down_s) == (12, 8)
    await miner.sleep()
    clock.now += 4
    assert TRAITS.sleep_power_w < farm.power_w("m0") < 3250  # 8 s down now, not 2
    clock.now += 6
    assert farm.power_w("m0") == TRAITS.sleep_power_w
    with pytest.raises(RejectedError, match="HTTP 412: quick ramping up_s"):
        await miner.set_quick_ramping(100_000, 2)
    with pytest.raises(RejectedError, match="negative ramp time"):
        await miner.set_quick_ramping(5, -1)


async def test_braiins_os_pause_fans_are_applied(farm: SimFarm, clock: Time) -> None:
    miner = driver(farm)
    dev = device(farm)
    assert await miner.set_pause_fans(0.25) == PauseFans(0.25, indefinite=True)
    target = dev.cooling["auto"]["target_temperature"]
    await miner.sleep()
    clock.now += 3600
    assert dev.fan_ratio(clock.now) == 0.25  # indefinite: still turning an hour later
    assert dev.cooling["auto"]["target_temperature"] == target  # the rest left alone
    assert await miner.set_pause_fans(0.4, indefinite=False) == PauseFans(0.4, indefinite=False)
    assert await miner.set_pause_fans(None) == PauseFans()
    assert "auto" in dev.cooling["auto"]["pause_mode"]["mode"]
    with pytest.raises(RejectedError, match=r"not in 0\.\.1"):
        await miner.set_pause_fans(1.5)
    dev.cooling = {"immersion": {}}  # the operator switched the unit to immersion
    with pytest.raises(UnsupportedError, match="immersion cooling has no fans to pause"):
        await miner.set_pause_fans(0.3)


async def test_braiins_os_token_slides_and_is_renewed_on_401(farm: SimFarm, clock: Time) -> None:
    miner = driver(farm)
    await miner.read()
    assert farm.commands[LOGIN] == 1
    clock.now += 3000  # used within timeout_s: the token slides on
    await miner.read()
    clock.now += 3000
    await miner.read()
    assert farm.commands[LOGIN] == 1
    clock.now += 3601  # idle past timeout_s: the miner answers 401, the driver logs in
    assert (await miner.read()).mode is Mode.MINING
    assert farm.commands[LOGIN] == 2
    device(farm).reset(Mode.MINING)  # a reboot forgets every token
    await miner.read()
    assert farm.commands[LOGIN] == 3


async def test_braiins_os_bad_credentials_are_an_auth_error(farm: SimFarm) -> None:
    with pytest.raises(AuthError, match="m0: login: HTTP 401: credentials refused") as err:
        await driver(farm, password="wrong").read()
    assert err.value.kind == "auth"
    assert not err.value.retryable


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault.REFUSE, UnreachableError, r"m1: login: 127\.[\d.]+:8080: Connect call failed"),
        (Fault.STALL, DeviceTimeoutError, "m1: login: no complete reply within 0.5 s"),
        (Fault.GARBAGE, ProtocolError, "m1: login: HTTP 200: unparseable reply"),
        (Fault.TRUNCATE, ProtocolError, "m1: login: connection broke mid-reply"),
        # A chunked reply whose last chunk never comes cannot be known to be whole.
        (Fault.NO_CLOSE, DeviceTimeoutError, "m1: login: no complete reply within 0.5 s"),
        # The first read checks the quick ramping: "configuration" is its first request.
        (
            Fault.EXPIRE_SESSIONS,
            RejectedError,
            "m1: configuration: HTTP 401: the token was refused",
        ),
    ],
)
async def test_braiins_os_faults_raise_typed_errors(
    farm: SimFarm, fault: Fault, error: type[Exception], message: str
) -> None:
    await farm.set_fault("m1", fault)
    with pytest.raises(error, match=message):
        await driver(farm, "m1").read()
    if fault is Fault.EXPIRE_SESSIONS:
        assert farm.commands[LOGIN] == 2  # renewed once, then gave up
    await farm.set_fault("m1", Fault.NONE)
    assert (await driver(farm, "m1").read()).power_w == 3250  # recovers


async def test_braiins_os_survives_quirky_json(farm: SimFarm) -> None:
    await farm.set_fault("m1", Fault.QUIRKS)
    miner = driver(farm, "m1", timeout_s=2.0)
    assert (await miner.read()).power_w == 3250
    assert (await miner.sleep()).mode is Mode.SLEEPING


async def test_braiins_os_slow_device_within_and_beyond_the_deadline(farm: SimFarm) -> None:
    await farm.set_fault("m1", Fault.SLOW, slow_s=0.1)
    assert (await driver(farm, "m1").read()).power_w == 3250
    await farm.set_fault("m1", Fault.SLOW, slow_s=1.0)
    with pytest.raises(DeviceTimeoutError, match=r"m1: login: no complete reply within 0\.5 s"):
        await driver(farm, "m1").read()


@pytest.mark.parametrize("write", ["pause", "power-target", "quick-ramping", "pause-fans"])
async def test_braiins_os_lying_miner_is_detected_by_read_back(farm: SimFarm, write: str) -> None:
    await farm.set_fault("m1", Fault.LIE)
    miner = driver(farm, "m1")
    writes: dict[str, Callable[[], Awaitable[object]]] = {
        "pause": miner.sleep,
        "power-target": lambda: miner.set_power_target(2500),
        "quick-ramping": lambda: miner.set_quick_ramping(9, 9),
        "pause-fans": lambda: miner.set_pause_fans(0.5),
    }
    with pytest.raises(VerificationError, match=f"m1: {write}: acknowledged") as err:
        await writes[write]()
    assert err.value.kind == "lying"
    if write in ("pause", "power-target"):
        assert err.value.reading is not None  # what the miner really reports
        assert err.value.reading.mode is Mode.MINING
        assert err.value.reading.power_w == 3250
    if write == "power-target":
        assert err.value.reading is not None
        assert err.value.reading.profile == "3250W"
    assert list(device(farm, "m1").commands) == []


async def test_braiins_os_lying_sleep_names_what_it_reads(farm: SimFarm) -> None:
    await farm.set_fault("m1", Fault.LIE)
    with pytest.raises(
        VerificationError, match="acknowledged pause but reads back mining at 3250 W"
    ):
        await driver(farm, "m1").sleep()


async def test_braiins_os_one_call_in_flight_per_miner(farm: SimFarm) -> None:
    await farm.set_fault("m0", Fault.SLOW, slow_s=0.05)
    miner = driver(farm, timeout_s=2.0)
    results = await asyncio.gather(miner.read(), miner.sleep(), miner.read())
    assert [r.mode for r in results] == [Mode.MINING, Mode.SLEEPING, Mode.SLEEPING]
    assert device(farm).peak_in_flight == 1
    # login, the quick-ramping check, 4 reads; pause, 2 read-back; 4 reads: strictly one
    # after another
    assert farm.miners["m0"].server.requests == 13


async def test_braiins_os_read_back_reads_what_it_verifies(farm: SimFarm) -> None:
    miner = driver(farm)
    full = await miner.read()
    before = dict(farm.commands)
    asleep = await miner.sleep()
    new = {k: v - before.get(k, 0) for k, v in farm.commands.items() if v != before.get(k, 0)}
    assert new == {
        "PUT /api/v1/actions/pause": 1,
        "GET /api/v1/miner/details": 1,
        "GET /api/v1/miner/stats": 1,
    }
    assert asleep.board_temps_c == full.board_temps_c  # carried over from the full read
    assert asleep.profile == full.profile
    assert asleep.hashrate_ths == 0.0


# -- parsing recorded replies ----------------------------------------------------------------


def test_braiins_os_parses_a_mining_miner() -> None:
    replies = {
        "details": fixture("miner_details"),
        "stats": fixture("miner_stats"),
        "hashboards": fixture("miner_hw_hashboards"),
        "mode": fixture("performance_mode"),
    }
    reading = parse_reading(replies, "m0")
    assert reading.mode is Mode.MINING
    assert reading.power_w == 3046
    assert reading.hashrate_ths == pytest.approx(103.85, abs=0.001)
    assert reading.board_temps_c == (61.0, 59.5, 63.25)  # sorted by board id
    assert reading.profile == "3050W"


def test_braiins_os_parses_a_paused_miner_without_a_power_estimate() -> None:
    last = parse_reading(
        {
            "details": fixture("miner_details"),
            "stats": fixture("miner_stats"),
            "hashboards": fixture("miner_hw_hashboards"),
            "mode": fixture("performance_mode"),
        },
        "m0",
    )
    replies = {"details": fixture("miner_details_paused"), "stats": fixture("miner_stats_paused")}
    reading = parse_reading(replies, "m0", last)
    assert reading.mode is Mode.SLEEPING
    assert reading.power_w == TRAITS.sleep_power_w
    assert reading.hashrate_ths == 0.0
    assert reading.board_temps_c == last.board_temps_c
    assert reading.profile == "3050W"


def test_braiins_os_parses_configuration() -> None:
    config = fixture("configuration_miner")
    assert quick_ramping(config, "m0") == QuickRamping(**fixture("performance_quick_ramping"))
    kind, mode = cooling_mode(config, "m0")
    assert kind == "auto"
    assert pause_fans(mode["pause_mode"], "m0") == PauseFans(0.3, indefinite=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("details", "status", 0), "unknown miner status 0"),
        (("details", "status", None), "unknown miner status None"),
        (("stats", "power_stats", {"approximated_consumption": {"watt": 1e999}}), "finite"),
        (("stats", "power_stats", {"approximated_consumption": {"watt": "3000"}}), "number"),
        (("stats", "power_stats", None), "mining but no power estimate"),
        (("hashboards", "hashboards", [{"enabled": True}]), "KeyError"),
        (("mode", "tunermode", {"target": {"powertarget": {"power_target": {}}}}), "watt"),
    ],
)
def test_braiins_os_bad_replies_are_protocol_errors(
    change: tuple[str, str, object], message: str
) -> None:
    replies = {
        "details": fixture("miner_details"),
        "stats": fixture("miner_stats"),
        "hashboards": fixture("miner_hw_hashboards"),
        "mode": fixture("performance_mode"),
    }
    part, key, value = change
    replies[part][key] = value
    with pytest.raises(ProtocolError, match=message):
        parse_reading(replies, "m0")


async def test_braiins_os_first_read_applies_the_quick_ramping_the_traits_assume(
    farm: SimFarm,
) -> None:
    # The planner times deadlines by TRAITS; a miner left on slower ramps would make
    # "lands in 3 s" false. Checked once: later reads send nothing more.
    sim = device(farm, "m1")
    sim.quick_up_s, sim.quick_down_s = 30, 30
    miner = driver(farm, "m1")
    await miner.read()
    assert list(sim.commands) == [f"quick-ramping {QUICK_RAMP_UP_S}/{QUICK_RAMP_DOWN_S}"]
    assert miner.quick_ramping == QuickRamping(QUICK_RAMP_UP_S, QUICK_RAMP_DOWN_S)
    requests = farm.miners["m1"].server.requests
    await miner.read()
    assert farm.miners["m1"].server.requests == requests + len(READ_PARTS)
    assert list(sim.commands) == [f"quick-ramping {QUICK_RAMP_UP_S}/{QUICK_RAMP_DOWN_S}"]


# -- a gentle wake, for cold boards --------------------------------------------------------

CONSTRAINTS = "GET /api/v1/configuration/constraints"


def test_braiins_os_gentle_start_is_counted_at_the_ladders_floor() -> None:
    assert TRAITS.gentle_fraction == TRAITS.power_floor_fraction == 0.60
    assert TRAITS.gentle_extra_s > 0  # the target and its read-back come first


async def test_braiins_os_gentle_wake_resumes_at_the_ladder_floor_not_below_the_minimum(
    farm: SimFarm, clock: Time
) -> None:
    miner = driver(farm)
    await miner.sleep()
    clock.now += 60
    low, _ = device(farm).target_range_w()  # what configuration/constraints reports
    rated = farm.miners["m0"].physics.model.rated_power_w  # the default target
    gentle = round(rated * 0.60)  # what the planner counts (DriverTraits.gentle_fraction)
    assert gentle > low
    reading = await miner.wake(gentle=True)
    assert reading.mode is Mode.MINING
    assert reading.profile == f"{gentle}W"
    assert list(device(farm).commands) == ["pause", f"power-target {gentle}", "resume"]
    clock.now += 10  # quick ramping up: 5 s
    assert farm.power_w("m0") == gentle
    assert (await miner.read()).power_w == gentle
    # Asleep and gently woken again: the constraints are not read twice.
    await miner.sleep()
    assert (await miner.wake(gentle=True)).profile == f"{gentle}W"
    assert farm.commands[CONSTRAINTS] == 1
    # The supervisor steps it up after the warm-up.
    assert (await miner.set_power_target(3250)).profile == "3250W"


async def test_braiins_os_cold_boards_start_only_gently(make_farm: MakeFarm, clock: Time) -> None:
    farm = await make_farm(
        1, 3250, 29.5, driver="braiins-os", port=REST_PORT, ambient_c={"c1": -35.0}
    )
    physics = farm.miners["m0"].physics
    miner = driver(farm)
    await miner.sleep()
    clock.now += 3600  # the boards cool to the container's -35 degC
    physics.advance(clock.now)
    assert max(physics.board_temps_c) < 0
    with pytest.raises(VerificationError, match="acknowledged resume but reads back sleeping"):
        await miner.wake()
    assert physics.failed_cold_boots == 1
    assert (await miner.wake(gentle=True)).mode is Mode.MINING
    assert physics.failed_cold_boots == 1  # the gentle start took


async def test_braiins_os_gentle_wake_stops_when_the_low_target_does_not_land(
    farm: SimFarm,
) -> None:
    farm.reset(Mode.SLEEPING)
    await farm.set_fault("m1", Fault.LIE)  # acknowledges the target and does nothing
    with pytest.raises(VerificationError, match="m1: power-target: acknowledged") as err:
        await driver(farm, "m1").wake(gentle=True)
    assert err.value.reading is not None
    assert err.value.reading.profile == "3250W"
    assert farm.commands["PUT /api/v1/actions/resume"] == 0  # never resumed at full power
    assert farm.miners["m1"].physics.mode is Mode.SLEEPING


def test_braiins_os_gentle_target_from_the_constraints() -> None:
    constraints = fixture("configuration_constraints")
    assert target_limits(constraints, "m0") == (1220, 3050)
    constraints["tuner_constraints"]["power_target"]["min"] = None
    assert target_limits(constraints, "m0") == (None, 3050)
    assert target_limits(None, "m0") == (None, None)  # firmware without the endpoint
    constraints["tuner_constraints"]["power_target"]["min"] = {"watt": "many"}
    with pytest.raises(ProtocolError, match="m0: constraints: unexpected power"):
        target_limits(constraints, "m0")


async def test_braiins_os_gentle_wake_without_a_minimum_takes_60_percent_of_the_default(
    farm: SimFarm,
) -> None:
    farm.reset(Mode.SLEEPING)
    miner = driver(farm)
    miner._target_limits = (None, 3250)  # as firmware that reports no minimum
    assert (await miner.wake(gentle=True)).profile == "1950W"
    assert farm.commands[CONSTRAINTS] == 0
