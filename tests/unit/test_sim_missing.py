"""Simulated firmware that lacks commands, endpoints and fields answers as the real
firmware answers anything it does not know; the lacks come from the site config or the
control API, and the simulator counts every request for them."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.config import ConfigError
from demo.farm import farm_from_config
from demo.simulation import simulation
from drivers.transport import cgminer_tcp
from sim.control import SimControl
from sim.farm import SimFarm
from tests.conftest import load_site, site_dict
from tests.unit.conftest import MakeFarm

INVALID = {"STATUS": "E", "Code": 14, "Msg": "Invalid command"}


def host(farm: SimFarm) -> str:
    return farm.miners["m0"].spec.host


async def rpc(farm: SimFarm, command: str, port: int = 4028) -> dict[str, Any]:
    raw = await cgminer_tcp.exchange(
        host(farm), port, cgminer_tcp.encode(command), timeout_s=1, device="m0", op=command
    )
    return cgminer_tcp.decode(raw, device="m0", op=command)


def status(reply: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = reply["STATUS"][0]
    return {k: entry[k] for k in ("STATUS", "Code", "Msg")}


async def test_sim_luxos_lacks_a_command_alone_and_in_a_join(make_farm: MakeFarm) -> None:
    farm = await make_farm(1, 3010, 21.5)
    farm.set_missing("m0", ["stats"])
    assert status(await rpc(farm, "stats")) == INVALID
    # cgminer's api.c answers a command it does not know in its own part of a join.
    joined = await rpc(farm, "power+stats")
    assert status(joined["power"][0])["STATUS"] == "S"
    assert status(joined["stats"][0]) == INVALID
    assert farm.miners["m0"].missing.asked["stats"] == 2
    farm.set_missing("m0", [])  # an upgrade, live
    assert status(await rpc(farm, "stats"))["STATUS"] == "S"


async def test_sim_luxos_lacks_a_field(make_farm: MakeFarm) -> None:
    farm = await make_farm(1, 3010, 21.5)
    farm.set_missing("m0", ["config:Profile"])
    config = (await rpc(farm, "config"))["CONFIG"][0]
    assert "Profile" not in config
    assert "Model" in config


async def test_sim_braiins_os_lacks_an_endpoint_as_it_lacks_any_unknown_path(
    make_farm: MakeFarm,
) -> None:
    farm = await make_farm(1, 3250, 29.5, driver="braiins-os", port=8080)
    farm.set_missing("m0", ["/api/v1/miner/hw/hashboards"])
    base = f"http://{host(farm)}:8080/api/v1"
    async with aiohttp.ClientSession() as web:
        async with web.post(f"{base}/auth/login", json={"username": "root", "password": "root"}):
            pass
        answers = []
        for path in ("/miner/hw/hashboards", "/no/such/thing"):
            async with web.get(base + path) as reply:
                answers.append((reply.status, reply.content_type, await reply.read()))
    assert answers[0] == answers[1]
    assert answers[0][0] == 404
    assert farm.miners["m0"].missing.asked["/api/v1/miner/hw/hashboards"] == 1


async def test_sim_antminer_lacks_a_cgi_behind_its_digest_auth_and_a_4028_command(
    make_farm: MakeFarm,
) -> None:
    farm = await make_farm(1, 3250, 29.5, driver="antminer-stock", web_port=18080)
    farm.set_missing("m0", ["/cgi-bin/stats.cgi", "summary"])
    url = f"http://{host(farm)}:18080/cgi-bin/stats.cgi"
    async with aiohttp.ClientSession() as web:
        async with web.get(url) as reply:
            assert reply.status == 401  # lighttpd asks for credentials first, as for any path
        auth = aiohttp.DigestAuthMiddleware("root", "root")
        async with web.get(url, middlewares=(auth,)) as reply:
            assert reply.status == 404
    assert status(await rpc(farm, "summary")) == INVALID
    assert status(await rpc(farm, "stats"))["STATUS"] == "S"


async def test_sim_whatsminer_lacks_commands_in_each_api(make_farm: MakeFarm) -> None:
    farm = await make_farm(1, 3400, 29.0, driver="whatsminer-v3", port=14028, web_port=14433)
    farm.set_missing("m0", ["edevs", "get.miner.setting", "summary:Power Limit"])
    raw = await cgminer_tcp.exchange(
        host(farm), 14028, b'{"cmd":"edevs"}', timeout_s=1, device="m0", op="edevs"
    )
    reply = json.loads(raw)
    assert (reply["STATUS"], reply["Code"], reply["Msg"]) == ("E", 14, "invalid cmd")
    summary = json.loads(
        await cgminer_tcp.exchange(
            host(farm), 14028, b'{"cmd":"summary"}', timeout_s=1, device="m0", op="summary"
        )
    )
    assert "Power Limit" not in summary["SUMMARY"][0]
    assert "Power" in summary["SUMMARY"][0]
    v3 = await v3_call(host(farm), 14433, {"cmd": "get.miner.setting"})
    assert (v3["code"], v3["msg"]) == (-2, "invalid command")


async def v3_call(address: str, port: int, request: dict[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(address, port)
    try:
        body = json.dumps(request).encode()
        writer.write(struct.pack("<I", len(body)) + body)
        (size,) = struct.unpack("<I", await reader.readexactly(4))
        reply: dict[str, Any] = json.loads(await reader.readexactly(size))
        return reply
    finally:
        writer.close()


async def test_sim_control_api_sets_what_a_miner_lacks(make_farm: MakeFarm) -> None:
    farm = await make_farm(1, 3010, 21.5)
    control = SimControl(farm)
    await control.start()
    base = f"http://127.0.0.1:{control.port}/v1/miners/m0"
    try:
        async with aiohttp.ClientSession() as web:
            async with web.put(f"{base}/missing", json={"missing": ["stats"]}) as reply:
                assert reply.status == 200
                assert (await reply.json())["missing"] == ["stats"]
            await rpc(farm, "stats")
            async with web.get(base) as reply:
                assert (await reply.json())["missing_asked"] == {"stats": 1}
            async with web.put(f"{base}/missing", json={"missing": "stats"}) as reply:
                assert reply.status == 400
    finally:
        await control.stop()


def test_sim_config_names_what_each_miner_lacks(tmp_path: Path) -> None:
    data = site_dict(tmp_path, miners=2)
    data["simulation"]["missing"] = {"m001": ["profiles", "stats"]}
    loaded = load_site(data)
    farm = farm_from_config(loaded, lambda: 0.0)
    assert farm.miners["m001"].missing.names == {"profiles", "stats"}
    assert farm.miners["m000"].missing.names == frozenset()
    data["simulation"]["missing"] = {"m009": ["stats"]}
    with pytest.raises(ConfigError, match=r"simulation\.missing\.m009: no such miner"):
        simulation(load_site(data))
    data["simulation"]["missing"] = {"m001": [""]}
    with pytest.raises(ConfigError, match=r"simulation\.missing"):
        farm_from_config(load_site(data), lambda: 0.0)
