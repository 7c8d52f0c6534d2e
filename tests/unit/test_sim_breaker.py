"""A simulated PDU's breaker, driven over real Modbus TCP with the project's PDU driver, and
the simulated farm's PDUs and ambient sensors as built from a site config."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo.farm import farm_from_config
from drivers.errors import VerificationError
from drivers.meter.sensor import ModbusTemperature
from drivers.modbus_map import load_map
from drivers.pdu.modbus_pdu import ModbusPdu
from drivers.transport.modbus import ModbusLink
from drivers.types import Mode
from sim.control import SimControl
from sim.farm import SimFarm, SimMinerSpec
from sim.faults import Fault
from sim.modbus import SimPdu, SimSensor
from tests.conftest import load_site, site_dict
from tests.unit.conftest import Time

NET = "127.77"  # this file's loopback addresses
MINERS = 10
RATED_W = 3250


def farm_of(clock: Time) -> SimFarm:
    """Ten LuxOS miners, mining; only their outlets are used, so nothing listens for them."""
    specs = [
        SimMinerSpec(
            f"m{i}",
            "luxos",
            f"{NET}.30.{i + 1}",
            4028,
            "c1",
            RATED_W,
            29.5,
            Mode.MINING,
            Fault.NONE,
        )
        for i in range(MINERS)
    ]
    return SimFarm(specs, time_fn=clock, default_ambient_c=15.0)


@asynccontextmanager
async def pdu_rig(
    clock: Time, host: str, *, max_on: int | None = 8
) -> AsyncIterator[tuple[SimFarm, SimPdu, ModbusPdu]]:
    farm = farm_of(clock)
    regmap = load_map("pdu-coil-24")
    sim = SimPdu(
        "pdu-1",
        host,
        0,
        regmap,
        [farm.outlet(f"m{i}") for i in range(MINERS)],
        time_fn=clock,
        breaker_max_on=max_on,
        breaker_window_s=1.0,
    )
    farm.add_device("pdu-1", sim)
    await sim.start()
    link = ModbusLink("pdu-1", host, sim.port, timeout_s=0.5, retries=1)
    pdu = ModbusPdu("pdu-1", link, regmap, readback_interval_s=0.02)
    try:
        yield farm, sim, pdu
    finally:
        await pdu.close()
        await sim.stop()


async def all_off(pdu: ModbusPdu, clock: Time) -> None:
    """Every miner's outlet off (cuts draw no inrush), then long enough for the window."""
    for outlet in range(1, MINERS + 1):
        await pdu.switch(outlet, on=False)
    clock.now += 60


async def test_eight_outlets_on_within_a_second_hold(clock: Time) -> None:
    async with pdu_rig(clock, f"{NET}.1.1") as (farm, sim, pdu):
        await all_off(pdu, clock)
        for outlet in range(1, 9):
            assert (await pdu.switch(outlet, on=True)).on
            clock.now += 0.1
        assert (sim.breaker_trips, farm.breaker_trips()) == (0, 0)
        reading = await pdu.read()
        assert [o.on for o in reading.outlets[:MINERS]] == [True] * 8 + [False] * 2
        clock.now += 1.0  # the window has passed: the next switch-ons start a new count
        for outlet in (9, 10):
            assert (await pdu.switch(outlet, on=True)).on
        assert farm.breaker_trips() == 0
        assert len(farm.starts) == MINERS


async def test_the_ninth_outlet_on_within_a_second_trips_the_breaker(clock: Time) -> None:
    async with pdu_rig(clock, f"{NET}.1.2") as (farm, sim, pdu):
        await all_off(pdu, clock)
        cuts_before = len(farm.cuts)
        for outlet in range(1, 9):
            await pdu.switch(outlet, on=True)
            clock.now += 0.1
        with pytest.raises(VerificationError, match="outlet_state\\[9\\] still reads off"):
            await pdu.switch(9, on=True)
        assert (sim.breaker_trips, farm.breaker_trips()) == (1, 1)
        # The PDU still answers; every outlet reads off and draws nothing.
        reading = await pdu.read()
        assert not any(o.on for o in reading.outlets)
        assert reading.total_w == 0
        # Its miners lost power: the nine booting ones were cut again.
        assert all(not m.physics.powered for m in farm.miners.values())
        assert farm.total_power_w() == 0
        assert sorted(m for _, m, _, _ in farm.cuts[cuts_before:]) == [f"m{i}" for i in range(9)]
        # The relays can be switched on again, one at a time.
        clock.now += 60
        assert (await pdu.switch(1, on=True)).on
        assert farm.breaker_trips() == 1


async def test_switching_on_an_outlet_already_on_draws_no_inrush(clock: Time) -> None:
    async with pdu_rig(clock, f"{NET}.1.3") as (farm, sim, pdu):
        for _ in range(3):
            for outlet in range(1, MINERS + 1):
                await pdu.switch(outlet, on=True)
        assert sim.breaker_trips == 0
        assert farm.starts == []  # nothing restarted either


async def test_a_pdu_without_a_breaker_never_trips(clock: Time) -> None:
    async with pdu_rig(clock, f"{NET}.1.4", max_on=None) as (farm, sim, pdu):
        await all_off(pdu, clock)
        for outlet in range(1, MINERS + 1):
            await pdu.switch(outlet, on=True)
        assert (sim.breaker_trips, farm.breaker_trips()) == (0, 0)
        assert all(m.physics.powered for m in farm.miners.values())


def test_breaker_settings_are_checked() -> None:
    regmap = load_map("pdu-coil-24")
    with pytest.raises(ValueError, match="breaker_max_on must be at least 1"):
        SimPdu("p", f"{NET}.1.5", 0, regmap, [], breaker_max_on=0)
    with pytest.raises(ValueError, match="breaker_window_s must be positive"):
        SimPdu("p", f"{NET}.1.5", 0, regmap, [], breaker_max_on=8, breaker_window_s=0)


# ---- built from a site config ----


def winter_site(tmp_path: Path) -> dict[str, Any]:
    data = site_dict(tmp_path, miners=MINERS)
    for i, miner in enumerate(data["miners"]):
        miner["host"] = f"{NET}.20.{i + 1}"
    data["pdus"] = [
        {
            "id": "pdu-1",
            "host": f"{NET}.21.1",
            "port": 15502,
            "map": "pdu-coil-24",
            "outlets": {i + 1: f"m{i:03d}" for i in range(MINERS)},
        }
    ]
    data["sensors"] = [
        {
            "id": f"temp-{c}",
            "host": f"{NET}.21.{n}",
            "port": 15502,
            "map": "sensor-temp",
            "container": c,
        }
        for n, c in ((2, "c1"), (3, "c2"))
    ]
    data["simulation"] |= {
        "ambient_c": {"c1": -35.0},
        "default_ambient_c": 5.0,
        "breaker": {"max_switch_on": 3, "window_s": 2.0},
    }
    return data


async def test_config_wires_breakers_on_the_farm_clock_and_live_sensors(
    tmp_path: Path, clock: Time
) -> None:
    loaded = load_site(winter_site(tmp_path))
    farm = farm_from_config(loaded, clock)
    pdu_sim = farm.devices["pdu-1"]
    assert isinstance(pdu_sim, SimPdu)
    assert (pdu_sim.breaker_max_on, pdu_sim.breaker_window_s) == (3, 2.0)
    assert pdu_sim.time_fn() == clock.now  # inrush judged on the farm's clock
    assert all(isinstance(farm.devices[f"temp-{c}"], SimSensor) for c in ("c1", "c2"))
    links = [
        ModbusLink(name, f"{NET}.21.{n}", 15502, timeout_s=0.5, retries=1)
        for name, n in (("pdu-1", 1), ("temp-c1", 2), ("temp-c2", 3))
    ]
    pdu = ModbusPdu("pdu-1", links[0], loaded.maps["pdu-1"], readback_interval_s=0.02)
    c1 = ModbusTemperature("temp-c1", links[1], loaded.maps["temp-c1"])
    c2 = ModbusTemperature("temp-c2", links[2], loaded.maps["temp-c2"])
    try:
        # Only the devices listen: the miners' outlets are all this test needs.
        for device in farm.devices.values():
            await device.start()
        assert await c1.read() == pytest.approx(-35.0)
        assert await c2.read() == pytest.approx(5.0)  # no scripted ambient: the default
        farm.set_ambient("c1", -12.5)  # as the control API's PUT .../ambient does
        assert await c1.read() == pytest.approx(-12.5)
        for outlet in range(1, 5):
            await pdu.switch(outlet, on=False)
        assert [c[1:] for c in farm.cuts] == [
            ("m000", "c1", -12.5),
            ("m001", "c2", 5.0),
            ("m002", "c1", -12.5),
            ("m003", "c2", 5.0),
        ]
        clock.now += 10
        for outlet in range(1, 4):
            await pdu.switch(outlet, on=True)
        with pytest.raises(VerificationError):  # four on within 2 s: this site allows three
            await pdu.switch(4, on=True)
        assert farm.breaker_trips() == 1
    finally:
        for link in links:
            await link.close()
        for device in farm.devices.values():
            await device.stop()


async def test_control_api_shows_trips_cold_boots_and_starts_to_a_witness(clock: Time) -> None:
    async with pdu_rig(clock, f"{NET}.1.6") as (farm, _, pdu):
        await all_off(pdu, clock)
        for outlet in range(1, 10):  # the ninth trips the breaker
            with contextlib.suppress(VerificationError):
                await pdu.switch(outlet, on=True)
        clock.now += 3600  # the boards cool to the container's ambient
        farm.set_ambient("c1", -35.0)
        clock.now += 3600
        await pdu.switch(1, on=True)  # a cold full-power boot: faults
        control = SimControl(farm, host=f"{NET}.1.7")
        await control.start()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://{NET}.1.7:{control.port}/v1/farm") as reply:
                    summary = await reply.json()
                async with http.get(f"http://{NET}.1.7:{control.port}/v1/miners/m0") as reply:
                    m0 = await reply.json()
        finally:
            await control.stop()
    assert summary["breaker_trips"] == 1
    assert summary["failed_cold_boots"] == 1
    assert summary["starts"] == 9  # the nine restores before the trip; the cold one failed
    assert summary["peak_start_w_per_s"] == 9 * RATED_W  # all nine within the same second
    assert summary["ambient_c"] == {"c1": -35.0}
    assert (m0["powered"], m0["cold_failed"], m0["failed_cold_boots"]) == (True, True, 1)
    assert m0["mode"] == "sleeping"
