"""Drivers degrade, never go blind: every family against its real simulator over loopback,
with the optional parts older or newer firmware lacks missing one at a time.

Each optional part is asked for once, learnt, warned about once and never asked for again;
the reading goes on with its mode and power right, and sleep and wake still verify. A
missing essential part leaves the miner unknown with a reason that names it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, MutableMapping
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from drivers.errors import UnsupportedError, VerificationError
from drivers.miners.antminer_stock import SLEEP_POWER_W, AntminerStockMiner
from drivers.miners.braiins_os import BraiinsOsMiner
from drivers.miners.braiins_os import parse_reading as parse_bos
from drivers.miners.luxos import LuxosMiner
from drivers.miners.whatsminer import WhatsminerMiner, WhatsminerV2Miner, WhatsminerV3Miner
from drivers.transport import cgminer_tcp, http
from drivers.types import Capability, MinerEndpoint, Mode
from sim.antminer_stock import RESTART_S, AntminerStockDevice
from sim.farm import SimFarm
from sim.faults import Fault
from sim.luxos import LuxosDevice
from tests.unit.conftest import MakeFarm, Time

T = TypeVar("T")
BOS_PORT = 8080
CGI_PORT = 18080
WM_V3_PORT = 14433


@pytest.fixture(autouse=True)
async def _close_http_session() -> AsyncIterator[None]:
    yield
    await http.close_sessions()  # the loop's shared session, as the daemon does on shutdown


def endpoint(farm: SimFarm, miner: str = "m0", timeout_s: float = 0.5) -> MinerEndpoint:
    spec = farm.miners[miner].spec
    return MinerEndpoint(miner, spec.host, spec.port, timeout_s, web_port=spec.web_port)


def warned(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    """The warnings that the firmware lacks `name`."""
    return [e for e in logs if e.get("missing") == name and e["log_level"] == "warning"]


def asked(farm: SimFarm, name: str, miner: str = "m0") -> int:
    """How often the simulator was asked for something its firmware lacks."""
    return farm.miners[miner].missing.asked[name]


def true_power(farm: SimFarm, miner: str = "m0") -> int:
    return round(farm.power_w(miner))


async def meanwhile(clock: Time, call: Awaitable[T], seconds: float) -> T:
    """Run a command while simulated time moves on `seconds` (firmware that proves a change
    only by hashing or by draw needs the hardware to get there). Time moves in steps, and
    on while the command still waits, up to three times as far: one jump after a fixed
    moment of real time came before a loaded machine had sent the command (CI: a gentle
    wake's power-on sent after the jump, its boards never given the time to start)."""
    task = asyncio.ensure_future(call)

    async def later() -> None:
        moved, step = 0.0, seconds / 10
        while not task.done() and moved < 3 * seconds:
            await asyncio.sleep(0.05)
            clock.now += step
            moved += step

    result, _ = await asyncio.wait_for(asyncio.gather(task, later()), 10)
    return result


# -- Braiins OS+ ------------------------------------------------------------------------------

HASHBOARDS = "/api/v1/miner/hw/hashboards"
PERF_MODE = "/api/v1/performance/mode"
CONFIGURATION = "/api/v1/configuration/miner"
POWER_TARGET = "/api/v1/performance/power-target"


async def bos_farm(make_farm: MakeFarm, *missing: str) -> SimFarm:
    farm = await make_farm(1, 3250, 29.5, driver="braiins-os", port=BOS_PORT)
    farm.set_missing("m0", missing)
    return farm


async def test_braiins_os_without_hashboards_and_performance_mode_reads_its_true_state(
    make_farm: MakeFarm, clock: Time
) -> None:
    # The field report: a BOS+ that 404s both was blinded (every read "unsupported"), so
    # it counted at rated power through a deadline it had in fact met.
    farm = await bos_farm(make_farm, HASHBOARDS, PERF_MODE)
    miner = BraiinsOsMiner(endpoint(farm))
    reading = await miner.read()
    assert reading.mode is Mode.MINING
    assert reading.power_w == true_power(farm) == 3250
    assert (reading.board_temps_c, reading.profile) == ((), None)
    assert (await miner.sleep()).mode is Mode.SLEEPING
    clock.now += 10
    asleep = await miner.read()
    assert (asleep.mode, asleep.power_w) == (Mode.SLEEPING, true_power(farm))
    assert (await miner.wake()).mode is Mode.MINING
    assert {asked(farm, HASHBOARDS), asked(farm, PERF_MODE)} == {1}


@pytest.mark.parametrize("path", [HASHBOARDS, PERF_MODE, CONFIGURATION])
async def test_braiins_os_goes_on_without_an_optional_endpoint(
    make_farm: MakeFarm, clock: Time, path: str
) -> None:
    farm = await bos_farm(make_farm, path)
    miner = BraiinsOsMiner(endpoint(farm))
    with capture_logs() as logs:
        for _ in range(3):
            reading = await miner.read()
            assert (reading.mode, reading.power_w) == (Mode.MINING, true_power(farm))
        assert (await miner.sleep()).mode is Mode.SLEEPING
        clock.now += 10
        assert (await miner.read()).power_w == true_power(farm) < 100
        assert (await miner.wake()).mode is Mode.MINING
    assert asked(farm, path) == 1
    [warning] = warned(logs, path)
    assert warning["miner"] == "m0"
    assert "without" in warning["event"]
    assert path in miner.lacking
    assert miner.capabilities == {Capability.SLEEP, Capability.POWER_TARGET}
    if path == HASHBOARDS:
        assert reading.board_temps_c == ()  # unknown: the warm-restart rules count it cold
    if path == PERF_MODE:
        assert reading.profile is None
    if path == CONFIGURATION:
        assert miner.quick_ramping is None  # left as the firmware has it


async def test_braiins_os_power_target_without_performance_mode_is_proven_by_the_config(
    make_farm: MakeFarm, clock: Time
) -> None:
    farm = await bos_farm(make_farm, PERF_MODE)
    miner = BraiinsOsMiner(endpoint(farm))
    assert (await miner.set_power_target(2500)).profile is None  # no reading carries it
    assert list(farm.miners["m0"].device.commands)[-1] == "power-target 2500"
    clock.now += 200  # the tuner walks there
    assert (await miner.read()).power_w == true_power(farm) == 2500
    # A lying miner echoes the PUT; the configuration shows the target it really kept.
    await farm.set_fault("m0", Fault.LIE)
    with pytest.raises(VerificationError, match="the configuration keeps 2500 W"):
        await miner.set_power_target(2000)
    # Gently woken: the low target, then the resume, with nothing to read the target from.
    await farm.set_fault("m0", Fault.NONE)
    await miner.sleep()
    assert (await miner.wake(gentle=True)).mode is Mode.MINING
    assert list(farm.miners["m0"].device.commands)[-2:] == ["power-target 1950", "resume"]


async def test_braiins_os_power_target_without_mode_or_configuration_rests_on_its_ack(
    make_farm: MakeFarm,
) -> None:
    farm = await bos_farm(make_farm, PERF_MODE, CONFIGURATION)
    miner = BraiinsOsMiner(endpoint(farm))
    assert (await miner.set_power_target(2500)).mode is Mode.MINING
    assert (await miner.set_power_target(2400)).mode is Mode.MINING
    assert asked(farm, CONFIGURATION) == 1


async def test_braiins_os_without_a_power_target_drops_it_and_wakes_plainly(
    make_farm: MakeFarm,
) -> None:
    farm = await bos_farm(make_farm, POWER_TARGET)
    miner = BraiinsOsMiner(endpoint(farm))
    with capture_logs() as logs:
        with pytest.raises(UnsupportedError, match="lacks /api/v1/performance/power-target"):
            await miner.set_power_target(2500)
        assert miner.capabilities == {Capability.SLEEP}  # the supervisor wakes, not raises
        with pytest.raises(UnsupportedError, match="which a power target needs"):
            await miner.set_power_target(2500)
        await miner.sleep()
        assert (await miner.wake(gentle=True)).mode is Mode.MINING
    assert asked(farm, POWER_TARGET) == 1
    assert len(warned(logs, POWER_TARGET)) == 1
    assert list(farm.miners["m0"].device.commands)[-2:] == ["pause", "resume"]


async def test_braiins_os_without_stats_stays_unknown_and_says_why(make_farm: MakeFarm) -> None:
    farm = await bos_farm(make_farm, "/api/v1/miner/stats")
    with pytest.raises(UnsupportedError) as err:
        await BraiinsOsMiner(endpoint(farm)).read()
    assert err.value.kind == "unsupported"  # the health reason: "unsupported: ..."
    assert "lacks /api/v1/miner/stats, which every reading needs" in err.value.detail


# -- LuxOS ----------------------------------------------------------------------------------


async def lux_farm(make_farm: MakeFarm, *missing: str, joins: bool = True) -> SimFarm:
    farm = await make_farm(1, 3010, 21.5)
    farm.set_missing("m0", missing)
    if not joins:
        device = farm.miners["m0"].device
        assert isinstance(device, LuxosDevice)
        device.joinable = frozenset()  # a build that answers one command at a time
    return farm


@pytest.mark.parametrize("joins", [True, False])
@pytest.mark.parametrize("command", ["summary", "stats", "config", "config:Profile"])
async def test_luxos_goes_on_without_an_optional_command(
    make_farm: MakeFarm, clock: Time, command: str, joins: bool
) -> None:
    farm = await lux_farm(make_farm, command, joins=joins)
    miner = LuxosMiner(endpoint(farm))
    with capture_logs() as logs:
        for _ in range(3):
            reading = await miner.read()
            assert (reading.mode, reading.power_w) == (Mode.MINING, true_power(farm))
        assert (await miner.sleep()).mode is Mode.SLEEPING
        clock.now += 10
        assert (await miner.read()).power_w == true_power(farm) < 100
        assert (await miner.wake()).mode is Mode.MINING
        lowest = min(farm.miners["m0"].physics.model.all_profiles(), key=lambda p: p.power_w)
        await miner.set_profile(lowest.name)  # without config: proven by its ack
    assert asked(farm, command) >= 1
    if ":" not in command:  # a command is asked for once; a field comes with every reply
        assert asked(farm, command) == 1
    assert len(warned(logs, command)) == 1
    assert miner._joined is joins  # one missing part does not end the joins
    expected = {"summary": reading.hashrate_ths == 0.0, "stats": reading.board_temps_c == ()}
    assert expected.get(command, reading.profile is None)


async def test_luxos_without_profiles_drops_the_power_target_and_wakes_plainly(
    make_farm: MakeFarm,
) -> None:
    farm = await lux_farm(make_farm, "profiles")
    miner = LuxosMiner(endpoint(farm))
    with pytest.raises(UnsupportedError, match="lacks profiles, which a power target needs"):
        await miner.set_power_target(2500)
    assert miner.capabilities == {Capability.SLEEP, Capability.POWER_PROFILE}
    await miner.sleep()
    assert (await miner.wake(gentle=True)).mode is Mode.MINING
    with pytest.raises(UnsupportedError):
        await miner.set_power_target(2500)
    assert asked(farm, "profiles") == 1
    assert list(farm.miners["m0"].device.commands) == ["sleep", "wakeup"]


async def test_luxos_without_profileset_drops_profiles_and_wakes_plainly(
    make_farm: MakeFarm,
) -> None:
    farm = await lux_farm(make_farm, "profileset")
    miner = LuxosMiner(endpoint(farm))
    await miner.sleep()
    assert (await miner.wake(gentle=True)).mode is Mode.MINING
    assert miner.capabilities == {Capability.SLEEP}
    with pytest.raises(UnsupportedError, match="lacks profileset"):
        await miner.set_profile("default")
    assert asked(farm, "profileset") == 1
    assert await session(farm) == ""  # the logon around the refused command was released


@pytest.mark.parametrize("command", ["power", "events"])
async def test_luxos_without_an_essential_command_stays_unknown(
    make_farm: MakeFarm, command: str
) -> None:
    farm = await lux_farm(make_farm, command)
    with pytest.raises(UnsupportedError, match=f"lacks {command}, which every reading needs"):
        await LuxosMiner(endpoint(farm)).read()


async def session(farm: SimFarm) -> str:
    device = farm.miners["m0"].device
    assert isinstance(device, LuxosDevice)
    return device.session_id


# -- Whatsminer -----------------------------------------------------------------------------


async def wm_farm(make_farm: MakeFarm, api: str, *missing: str) -> SimFarm:
    farm = await make_farm(
        1, 3400, 29.0, driver=f"whatsminer-{api}", port=14028, web_port=WM_V3_PORT
    )
    farm.set_missing("m0", missing)
    return farm


def wm_driver(farm: SimFarm) -> WhatsminerV2Miner | WhatsminerV3Miner:
    if farm.miners["m0"].spec.driver == "whatsminer-v2":
        return WhatsminerV2Miner(endpoint(farm))
    return WhatsminerV3Miner(endpoint(farm))


WM_OPTIONAL = [
    ("v2", "status"),
    ("v2", "edevs"),
    ("v2", "pre_power_on"),
    ("v2", "summary:Power Limit"),
    ("v2", "set_power_pct"),
    ("v3", "get.miner.setting"),
    ("v3", "set.miner.pre_power_on"),
    ("v3", "get.miner.status:power-limit"),
    ("v3", "set.miner.power_percent"),
]
TARGET_NEEDS = {"summary:Power Limit", "set_power_pct"} | {
    "get.miner.status:power-limit",
    "set.miner.power_percent",
}


@pytest.mark.parametrize(("api", "name"), WM_OPTIONAL)
async def test_whatsminer_goes_on_without_an_optional_part(
    make_farm: MakeFarm, clock: Time, api: str, name: str
) -> None:
    farm = await wm_farm(make_farm, api, name)
    miner = wm_driver(farm)
    with capture_logs() as logs:
        for _ in range(3):
            reading = await miner.read()
            assert (reading.mode, reading.power_w) == (Mode.MINING, true_power(farm))
        if name in TARGET_NEEDS:
            for _ in range(2):
                with pytest.raises(UnsupportedError, match="which a power target needs"):
                    await miner.set_power_target(2500)
            assert miner.capabilities == {Capability.SLEEP}
        else:
            await meanwhile(clock, miner.set_power_target(2500), 120)
            assert miner.capabilities == {Capability.SLEEP, Capability.POWER_TARGET}
        assert (await miner.sleep()).mode is Mode.SLEEPING
        clock.now += 30
        assert (await miner.read()).power_w == true_power(farm) < 100
        # Without `status` only hashing shows the wake: the boards need a moment.
        assert (await meanwhile(clock, miner.wake(), 30)).mode is Mode.MINING
        await miner.sleep()
        assert (await meanwhile(clock, miner.wake(gentle=True), 70)).mode is Mode.MINING
    assert asked(farm, name) >= 1
    if ":" not in name:  # a command is asked for once; a field comes with every reply
        assert asked(farm, name) == 1
    assert len(warned(logs, name)) == 1
    assert name in miner.lacking
    if name == "edevs":
        assert reading.board_temps_c == ()


async def test_whatsminer_v3_fans_without_their_setting_are_checked_while_asleep(
    make_farm: MakeFarm, clock: Time
) -> None:
    farm = await wm_farm(make_farm, "v3", "get.fan.setting")
    miner = WhatsminerV3Miner(endpoint(farm))
    await miner.sleep()
    clock.now += 30
    assert (await miner.set_fans_when_asleep(True)).mode is Mode.SLEEPING
    assert (await miner.set_fans_when_asleep(False)).mode is Mode.SLEEPING
    assert asked(farm, "get.fan.setting") == 1


async def test_whatsminer_chosen_api_reports_what_its_firmware_lacks(
    make_farm: MakeFarm,
) -> None:
    farm = await make_farm(
        1, 3400, 29.0, driver="whatsminer", port=14028, web_port=WM_V3_PORT
    )  # new firmware: the driver chooses API v3
    farm.set_missing("m0", ["get.miner.status:power-limit"])
    miner = WhatsminerMiner(endpoint(farm))
    assert miner.capabilities == {Capability.SLEEP, Capability.POWER_TARGET}
    await miner.read()
    assert miner.capabilities == {Capability.SLEEP}
    assert miner.lacking is not None
    assert list(miner.lacking) == ["get.miner.status:power-limit"]


@pytest.mark.parametrize(("api", "name"), [("v2", "summary"), ("v3", "get.miner.status")])
async def test_whatsminer_without_an_essential_read_stays_unknown(
    make_farm: MakeFarm, api: str, name: str
) -> None:
    farm = await wm_farm(make_farm, api, name)
    with pytest.raises(UnsupportedError, match=f"lacks {name}, which every reading needs"):
        await wm_driver(farm).read()


# -- stock Antminer -------------------------------------------------------------------------


async def am_farm(make_farm: MakeFarm, *missing: str) -> SimFarm:
    farm = await make_farm(1, 3250, 29.5, driver="antminer-stock", web_port=CGI_PORT)
    device = farm.miners["m0"].device
    assert isinstance(device, AntminerStockDevice)
    device.conf_reply_delay_s = 0.01
    farm.set_missing("m0", missing)
    return farm


def am_driver(farm: SimFarm) -> AntminerStockMiner:
    return AntminerStockMiner(
        endpoint(farm), verify_window_s=2.0, poll_interval_s=0.02, write_timeout_s=2.0
    )


async def across_restart(farm: SimFarm, clock: Time, call: Awaitable[T], changes: int) -> T:
    """A write while bmminer restarts: once the mode has changed, time moves past it."""
    device = farm.miners["m0"].device

    async def restart_ends() -> None:
        while len(device.commands) < changes:  # noqa: ASYNC110 - the simulator has no event
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        clock.now += RESTART_S + 1

    result, _ = await asyncio.wait_for(asyncio.gather(call, restart_ends()), 10)
    return result


@pytest.mark.parametrize(
    "name", ["summary", "stats", "/cgi-bin/stats.cgi", "stats:Mode", "/cgi-bin/get_system_info.cgi"]
)
async def test_antminer_stock_goes_on_without_an_optional_part(
    make_farm: MakeFarm, clock: Time, name: str
) -> None:
    farm = await am_farm(make_farm, name)
    miner = am_driver(farm)
    with capture_logs() as logs:
        await miner.probe()
        for _ in range(3):
            reading = await miner.read()
            assert reading.mode is Mode.MINING
            assert reading.power_w == pytest.approx(3250, rel=0.02)  # estimated, as always
        asleep = await across_restart(farm, clock, miner.sleep(), changes=1)
        assert (asleep.mode, asleep.power_w) == (Mode.SLEEPING, SLEEP_POWER_W)
        awake = await across_restart(farm, clock, miner.wake(), changes=2)
        assert awake.mode is Mode.MINING
    assert asked(farm, name) >= 1
    if ":" not in name:
        assert asked(farm, name) == 1
    assert len(warned(logs, name)) == 1
    assert miner.capabilities == {Capability.SLEEP}
    if name == "stats":
        assert reading.board_temps_c == ()


@pytest.mark.parametrize("cgi", ["get_miner_conf", "set_miner_conf"])
async def test_antminer_stock_without_its_write_cgi_cannot_sleep_and_says_so(
    make_farm: MakeFarm, cgi: str
) -> None:
    path = f"/cgi-bin/{cgi}.cgi"
    farm = await am_farm(make_farm, path)
    miner = am_driver(farm)
    for _ in range(2):
        with pytest.raises(UnsupportedError, match=f"lacks {path}, which every sleep and wake"):
            await miner.sleep()
    assert miner.capabilities == frozenset()
    assert asked(farm, path) == 1
    assert farm.miners["m0"].physics.mode is Mode.MINING
    assert (await miner.read()).mode is Mode.MINING  # still read, and counted by its reading


async def test_antminer_stock_without_both_reads_stays_unknown(make_farm: MakeFarm) -> None:
    farm = await am_farm(make_farm, "summary", "stats")
    with pytest.raises(UnsupportedError, match="lacks summary and stats"):
        await am_driver(farm).read()


# -- a board of unknown temperature -----------------------------------------------------------


def test_braiins_os_one_board_without_a_temperature_makes_the_boards_unknown() -> None:
    # min() over a NaN can come out as NaN, which compares as warm: the warm-restart rules
    # must see unknown boards as cold, so the reading carries none.
    boards: list[dict[str, Any]] = [
        {"id": "1", "board_temp": None, "highest_chip_temp": None},
        {"id": "2", "board_temp": {"degree_c": -20.0}},
    ]
    replies = {
        "details": {"status": 2},
        "stats": {"power_stats": {"approximated_consumption": {"watt": 3000}}},
        "hashboards": {"hashboards": boards},
    }
    assert parse_bos(replies, "m0").board_temps_c == ()
    boards[0]["board_temp"] = {"degree_c": -25.0}
    assert parse_bos(replies, "m0").board_temps_c == (-25.0, -20.0)


async def test_luxos_one_board_without_sensors_makes_the_boards_unknown(
    make_farm: MakeFarm,
) -> None:
    farm = await lux_farm(make_farm)
    miner = LuxosMiner(endpoint(farm))
    reading = await miner.read()
    assert len(reading.board_temps_c) == 3
    stats = await cgminer_tcp.request(host(farm), 4028, "stats", timeout_s=1, device="m0")
    stats["STATS"][1]["temp_pcb1"] = "0-0-0-0"  # no sensor answered
    replies = {
        part: await cgminer_tcp.request(host(farm), 4028, part, timeout_s=1, device="m0")
        for part in ("power", "events")
    }
    assert miner._parse({**replies, "stats": stats}).board_temps_c == ()


def host(farm: SimFarm) -> str:
    return farm.miners["m0"].spec.host


def test_a_part_learnt_missing_is_asked_for_again_after_an_hour() -> None:
    """A 404 from an API still starting after a boot, or a firmware upgraded in place,
    must not cost the part for the life of the daemon; the warning is not repeated."""
    from drivers.lacking import RECHECK_S, Lacking  # noqa: PLC0415 - the module under test

    now = [0.0]
    lacking = Lacking("m0", clock=lambda: now[0])
    with capture_logs() as logs:
        lacking.learn("/miner/hw/hashboards", "no board temperatures")
        assert "/miner/hw/hashboards" in lacking
        now[0] += RECHECK_S
        assert "/miner/hw/hashboards" not in lacking  # ask once more
        lacking.learn("/miner/hw/hashboards", "no board temperatures")  # still missing
        assert "/miner/hw/hashboards" in lacking
    assert [e["event"] for e in logs].count(
        "firmware lacks an optional part; the driver goes on without it"
    ) == 1
