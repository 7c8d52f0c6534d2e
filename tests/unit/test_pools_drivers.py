"""Every family reads its miner's pools from its simulator over the real protocol: the
pools the simulated miner is configured with, moved while it runs, and a firmware that
lacks the pools read, which is learnt once and blinds nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest

from drivers.errors import UnsupportedError
from drivers.miners.antminer_stock import AntminerStockMiner
from drivers.miners.braiins_os import BraiinsOsMiner
from drivers.miners.luxos import LuxosMiner
from drivers.miners.whatsminer import WhatsminerMiner, WhatsminerV2Miner, WhatsminerV3Miner
from drivers.transport import http
from drivers.types import MinerDriver, MinerEndpoint, Mode
from sim.antminer_stock import AntminerStockDevice
from sim.control import SimControl
from sim.farm import SimFarm
from sim.pools import SimPool
from tests.unit.conftest import MakeFarm


@pytest.fixture(autouse=True)
async def _close_http_session() -> AsyncIterator[None]:
    yield
    await http.close_sessions()


@dataclass(frozen=True)
class Family:
    driver: str
    port: int
    web_port: int | None
    factory: Callable[[MinerEndpoint], MinerDriver]
    lacks: str  # the name sim.missing removes the pools read by
    disables: bool = True  # the firmware can keep a pool configured but disabled


FAMILIES = [
    Family("luxos", 4028, None, LuxosMiner, "pools"),
    Family("braiins-os", 8080, None, BraiinsOsMiner, "/api/v1/pools/"),
    Family("whatsminer-v2", 14028, 14433, WhatsminerV2Miner, "pools"),
    Family("whatsminer-v3", 14028, 14433, WhatsminerV3Miner, "get.miner.status:pools"),
    Family("whatsminer-v3", 14028, 14433, WhatsminerMiner, "get.miner.status:pools"),
    Family("antminer-stock", 4028, 18080, AntminerStockMiner, "pools", disables=False),
]
IDS = [f"{f.driver}-{f.factory.__name__}" for f in FAMILIES]


async def family_farm(make_farm: MakeFarm, family: Family) -> tuple[SimFarm, MinerDriver]:
    farm = await make_farm(
        1, 3250, 29.5, driver=family.driver, port=family.port, web_port=family.web_port
    )
    spec = farm.miners["m0"].spec
    # A generous timeout: these tests are about what is read, and a shared CI machine can
    # take more than half a second over a first login.
    endpoint = MinerEndpoint("m0", spec.host, spec.port, 5.0, web_port=spec.web_port)
    return farm, family.factory(endpoint)


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
async def test_every_family_reads_the_pools_its_miner_is_configured_with(
    make_farm: MakeFarm, family: Family
) -> None:
    farm, driver = await family_farm(make_farm, family)
    configured = farm.miners["m0"].pools.get()
    assert configured, "every simulated firmware ships with a pool"
    pools = await driver.pools()
    assert [(p.url, p.user) for p in pools] == [(p.url, p.user) for p in configured]
    assert [p.priority for p in pools] == sorted(p.priority for p in pools)
    assert sum(p.active for p in pools) == 1  # a mining miner hashes for one of them
    assert pools[0].active
    assert all(p.enabled for p in pools)


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
async def test_a_miner_moved_to_other_pools_while_running_reads_them(
    make_farm: MakeFarm, family: Family
) -> None:
    farm, driver = await family_farm(make_farm, family)
    await driver.pools()
    moved = [
        SimPool("stratum+tcp://elsewhere.example:4444", "thief.1"),
        SimPool("stratum+ssl://backup.pool.kz:443", "farm.77"),
        SimPool("stratum+tcp://off.example:3333", "farm.77", enabled=False),
    ]
    farm.set_pools("m0", moved)
    pools = await driver.pools()
    expected = [p for p in moved if p.enabled or family.disables]
    assert [(p.url, p.user, p.enabled) for p in pools] == [
        (p.url, p.user, p.enabled) for p in expected
    ]
    assert [p.active for p in pools][:2] == [True, False]
    assert (await driver.read()).mode is Mode.MINING  # reading goes on as before


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.driver != "antminer-stock"], ids=str)
async def test_a_dead_first_pool_fails_over_to_the_next(
    make_farm: MakeFarm, family: Family
) -> None:
    farm, driver = await family_farm(make_farm, family)
    farm.set_pools(
        "m0",
        [
            SimPool("stratum+tcp://down.example:3333", "w.1", alive=False),
            SimPool("stratum+tcp://up.example:3333", "w.1"),
        ],
    )
    pools = await driver.pools()
    assert [(p.alive, p.active) for p in pools] == [(False, False), (True, True)]


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
async def test_a_firmware_without_a_pools_read_says_so_once_and_is_not_blinded(
    make_farm: MakeFarm, family: Family
) -> None:
    farm, driver = await family_farm(make_farm, family)
    farm.set_missing("m0", [family.lacks])
    for _ in range(3):
        with pytest.raises(UnsupportedError, match="pools check"):
            await driver.pools()
    assert farm.miners["m0"].missing.asked[family.lacks] == 1  # learnt once, not asked again
    reading = await driver.read()
    assert reading.mode is Mode.MINING
    assert reading.power_w > 0
    if family.driver != "antminer-stock":  # its sleep restarts bmminer: tested elsewhere
        assert (await driver.sleep()).mode is Mode.SLEEPING


async def test_the_control_api_moves_a_running_miner_to_other_pools(
    make_farm: MakeFarm,
) -> None:
    farm, driver = await family_farm(make_farm, FAMILIES[-1])  # the stock Antminer's CGI slots
    control = SimControl(farm)
    await control.start()
    base = f"http://127.0.0.1:{control.port}/v1/miners/m0"
    moved = {"url": "stratum+tcp://elsewhere.example:4444", "user": "thief.1"}
    try:
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{base}/pools", json={"pools": [moved]}) as reply:
                assert reply.status == 200
                state = await reply.json()
            assert [(p["url"], p["user"]) for p in state["pools"]] == [
                (moved["url"], moved["user"])
            ]
            for bad in ({"pools": "x"}, {"pools": [{"user": "w"}]}, {"pools": [{"url": 3}]}):
                async with session.put(f"{base}/pools", json=bad) as reply:
                    assert reply.status == 400
    finally:
        await control.stop()
    pools = await driver.pools()
    assert [(p.url, p.user, p.active) for p in pools] == [(moved["url"], moved["user"], True)]
    device = farm.miners["m0"].device
    assert isinstance(device, AntminerStockDevice)
    # The firmware's own config holds them: its CGI serves what 4028 reports.
    assert device.conf["pools"][0] == {**moved, "pass": "x"}
    assert device.conf["pools"][1:] == [{"url": "", "user": "", "pass": ""}] * 2
