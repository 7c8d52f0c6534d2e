"""The stock Antminer simulator speaks 4028 and the digest-protected CGI as real units do:
reply shapes checked against captures from real units, with the restart physics."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drivers.errors import ProtocolError, RejectedError, UnreachableError
from drivers.transport import cgminer_tcp, http
from drivers.types import Mode
from sim.antminer_stock import (
    NONCE_TTL_S,
    RESTART_S,
    SLEEP_FAN_RPM,
    SLEEP_POWER_W,
    AntminerStockDevice,
)
from sim.farm import SimFarm
from sim.faults import Fault
from tests.unit.conftest import MakeFarm, Time

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "antminer_stock"
S21 = FIXTURES / "s21_uart_trans.1.3_2024-07-11"
WEB_PORT = 18081
RATED_W = 3250
REALM = "antMiner Configuration"


@pytest.fixture
async def farm(make_farm: MakeFarm) -> SimFarm:
    farm = await make_farm(
        2, RATED_W, 29.5, driver="antminer-stock", web_port=WEB_PORT, default_ambient_c=5.0
    )
    for miner in farm.miners:
        device(farm, miner).conf_reply_delay_s = 0.01
    return farm


@pytest.fixture
async def web() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
    await http.close_sessions()


def device(farm: SimFarm, miner: str = "m0") -> AntminerStockDevice:
    found = farm.miners[miner].device
    assert isinstance(found, AntminerStockDevice)
    return found


def url(farm: SimFarm, cgi: str, miner: str = "m0") -> str:
    return f"http://{farm.miners[miner].spec.host}:{WEB_PORT}/cgi-bin/{cgi}.cgi"


async def rpc(
    farm: SimFarm, command: str, miner: str = "m0", parameter: str | None = None
) -> cgminer_tcp.Reply:
    return await cgminer_tcp.request(
        farm.miners[miner].spec.host, 4028, command, parameter, timeout_s=2, device=miner
    )


async def cgi(
    web: aiohttp.ClientSession,
    farm: SimFarm,
    name: str,
    body: dict[str, Any] | None = None,
    *,
    miner: str = "m0",
    password: str = "root",
    auth: aiohttp.DigestAuthMiddleware | None = None,
) -> Any:
    """A CGI call through aiohttp's own Digest client, as a third-party client makes it."""
    auth = auth or aiohttp.DigestAuthMiddleware("root", password)
    method = "GET" if body is None else "POST"
    async with web.request(method, url(farm, name, miner), json=body, middlewares=(auth,)) as r:
        assert r.status == 200, r.status
        return json.loads(await r.text())


def keys(path: Path) -> set[str]:
    return set(json.loads(path.read_text()))


# -- 4028 ------------------------------------------------------------------------------------


async def test_sim_rpc_replies_have_the_captured_shapes(farm: SimFarm) -> None:
    version = await rpc(farm, "version")
    assert version["STATUS"][0]["Code"] == 22
    assert version["STATUS"][0]["Description"] == "cgminer 1.0.0"
    captured = json.loads((S21 / "rpc_version.json").read_text())
    assert set(version["VERSION"][0]) == set(captured["VERSION"][0])
    assert version["VERSION"][0]["Type"] == "Antminer S19j Pro"
    summary = (await rpc(farm, "summary"))["SUMMARY"][0]
    assert float(summary["GHS 5s"]) == pytest.approx(RATED_W / 29.5 * 1000, rel=0.01)
    pools = await rpc(farm, "pools")
    captured_pool = json.loads((S21 / "rpc_pools.json").read_text())["POOLS"][0]
    assert pools["STATUS"][0]["Msg"] == "3 Pool(s)"
    assert [set(p) for p in pools["POOLS"]] == [set(captured_pool)] * 3
    assert pools["POOLS"][2]["Status"] == "Deed"  # sic, as real units spell an unused slot
    devs = (await rpc(farm, "devs"))["DEVS"]
    assert set(devs[0]) == set(json.loads((S21 / "rpc_devs.json").read_text())["DEVS"][0])


async def test_sim_rpc_stats_has_the_captured_key_set_and_mode(farm: SimFarm) -> None:
    stats = (await rpc(farm, "stats"))["STATS"]
    captured = json.loads(
        (FIXTURES / "s21xphyd_71.0.1.3_2026-01-08" / "rpc_stats.json").read_text()
    )["STATS"]
    assert set(stats[0]) == set(captured[0])
    assert set(stats[1]) == set(captured[1])
    board = stats[1]
    assert board["Mode"] == 0
    assert re.fullmatch(r"\d+-\d+-\d+-\d+", board["temp_pcb1"])
    assert board["temp_pcb4"] == "0-0-0-0"  # a three-board unit: chain 4 absent
    assert (board["chain_rate4"], board["chain_acs4"]) == ("", "")
    assert float(board["chain_rate1"]) > 0
    assert board["rate_unit"] == "GH"


@pytest.mark.parametrize(
    "command", ["ascset", "switchpool", "addpool", "restart", "quit", "config", "devdetails"]
)
async def test_sim_rpc_denies_all_but_the_stock_read_group(farm: SimFarm, command: str) -> None:
    with pytest.raises(RejectedError, match=f"code 45: Access denied to '{command}' command"):
        await rpc(farm, command, parameter="0,1")


async def test_sim_rpc_unknown_commands_and_joins(farm: SimFarm) -> None:
    with pytest.raises(RejectedError, match="code 14: Invalid command"):
        await rpc(farm, "rm-rf")
    joined = await rpc(farm, "summary+stats+version+pools")
    assert set(joined) == {"summary", "stats", "version", "pools", "id"}
    with pytest.raises(RejectedError, match="code 45"):
        await rpc(farm, "summary+ascset")
    device(farm).joinable = frozenset()  # builds without joins
    with pytest.raises(RejectedError, match="code 45"):
        await rpc(farm, "summary+stats")


# -- digest auth -------------------------------------------------------------------------------


async def test_sim_challenges_every_path_like_lighttpd(
    farm: SimFarm, web: aiohttp.ClientSession
) -> None:
    for path in ("/", "/cgi-bin/get_miner_conf.cgi", "/kaonsu/v1/brief"):
        host = farm.miners["m0"].spec.host
        async with web.get(f"http://{host}:{WEB_PORT}{path}") as reply:
            assert reply.status == 401
            challenge = reply.headers["WWW-Authenticate"]
            assert "401 Unauthorized" in await reply.text()
        assert re.fullmatch(
            r'Digest realm="antMiner Configuration", nonce="[0-9a-f]{32}", qop="auth"', challenge
        )
    # Authenticated, an unknown path is a 404: pyasic must not take the unit for a MARA one.
    auth = aiohttp.DigestAuthMiddleware("root", "root")
    async with web.get(
        f"http://{farm.miners['m0'].spec.host}:{WEB_PORT}/kaonsu/v1/brief", middlewares=(auth,)
    ) as reply:
        assert reply.status == 404


async def test_sim_digest_accepts_a_correct_client_and_refuses_a_wrong_password(
    farm: SimFarm, web: aiohttp.ClientSession
) -> None:
    conf = await cgi(web, farm, "get_miner_conf")
    assert conf["api-allow"] == "A:0/0,W:*"
    wrong = aiohttp.DigestAuthMiddleware("root", "toor")
    async with web.get(url(farm, "get_miner_conf"), middlewares=(wrong,)) as reply:
        assert reply.status == 401
        assert "stale" not in reply.headers["WWW-Authenticate"]


async def test_sim_digest_by_hand_nonce_counts_and_expiry(
    farm: SimFarm, web: aiohttp.ClientSession, clock: Time
) -> None:
    target = url(farm, "get_system_info")
    uri = "/cgi-bin/get_system_info.cgi"
    async with web.get(target) as reply:
        nonce = re.search(r'nonce="(\w+)"', reply.headers["WWW-Authenticate"])
    assert nonce is not None

    def header(nc: int, password: str = "root", path: str = uri) -> str:
        # RFC 2617 with qop=auth, computed here with hashlib alone.
        ha1 = hashlib.md5(f"root:{REALM}:{password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"GET:{path}".encode()).hexdigest()
        count = f"{nc:08x}"
        response = hashlib.md5(f"{ha1}:{nonce[1]}:{count}:abc123:auth:{ha2}".encode()).hexdigest()
        return (
            f'Digest username="root", realm="{REALM}", nonce="{nonce[1]}", uri="{path}", '
            f'response="{response}", qop=auth, nc={count}, cnonce="abc123"'
        )

    async def status(value: str) -> tuple[int, str]:
        async with web.get(target, headers={"Authorization": value}) as reply:
            return reply.status, reply.headers.get("WWW-Authenticate", "")

    assert (await status(header(1)))[0] == 200
    assert (await status(header(1)))[0] == 401  # the same count again is a replay
    assert (await status(header(2)))[0] == 200
    assert (await status(header(3, password="bad")))[0] == 401
    assert (await status(header(3, path="/cgi-bin/other.cgi")))[0] == 401  # uri mismatch
    assert (await status(header(3).replace("Digest", "Basic")))[0] == 401
    clock.now += NONCE_TTL_S + 1
    code, challenge = await status(header(3))
    assert code == 401
    assert challenge.endswith(", stale=true")  # right password, dead nonce


async def test_sim_expire_sessions_kills_every_nonce_at_once(
    farm: SimFarm, web: aiohttp.ClientSession
) -> None:
    await farm.set_fault("m1", Fault.EXPIRE_SESSIONS)
    auth = aiohttp.DigestAuthMiddleware("root", "root")
    async with web.get(url(farm, "get_miner_conf", "m1"), middlewares=(auth,)) as reply:
        assert reply.status == 401  # the fresh nonce was already dead on the retry
        assert "stale=true" in reply.headers["WWW-Authenticate"]
    assert (await rpc(farm, "summary", "m1"))["SUMMARY"]  # 4028 has no sessions to expire


async def test_sim_uses_the_configured_password(
    make_farm: MakeFarm, web: aiohttp.ClientSession
) -> None:
    farm = await make_farm(
        1, RATED_W, 29.5, driver="antminer-stock", web_port=WEB_PORT, password="s3"
    )
    assert (await cgi(web, farm, "get_system_info", password="s3"))["minertype"]
    with pytest.raises(AssertionError, match="401"):
        await cgi(web, farm, "get_system_info")


# -- the CGIs ----------------------------------------------------------------------------------


async def test_sim_cgi_replies_have_the_captured_shapes(
    farm: SimFarm, web: aiohttp.ClientSession
) -> None:
    conf = await cgi(web, farm, "get_miner_conf")
    assert list(conf) == list(json.loads((S21 / "web_get_miner_conf.json").read_text()))
    assert len(conf["pools"]) == 3
    info = await cgi(web, farm, "get_system_info")
    assert set(info) == keys(S21 / "web_get_system_info.json")
    assert info["minertype"] == "Antminer S19j Pro"
    stats = await cgi(web, farm, "stats")
    captured = json.loads((S21 / "web_stats.json").read_text())
    assert set(stats["STATS"][0]) == set(captured["STATS"][0]) | {"miner-mode"}
    assert set(stats["STATS"][0]["chain"][0]) == set(captured["STATS"][0]["chain"][0])
    assert stats["STATS"][0]["miner-mode"] == 0
    assert set(stats["STATUS"]) == {"STATUS", "when", "Msg", "api_version"}
    summary = await cgi(web, farm, "summary")
    assert [s["status"] for s in summary["SUMMARY"][0]["status"]] == ["s"] * 4
    assert (await cgi(web, farm, "get_blink_status")) == {"blink": False}


async def test_sim_sleep_restarts_bmminer_and_power_falls_over_tens_of_seconds(
    farm: SimFarm, web: aiohttp.ClientSession, clock: Time
) -> None:
    conf = await cgi(web, farm, "get_miner_conf")
    reply = await cgi(web, farm, "set_miner_conf", conf | {"miner-mode": 1})
    assert reply == {"stats": "success", "code": "M000", "msg": "OK!"}
    assert (await cgi(web, farm, "get_miner_conf"))["bitmain-work-mode"] == "1"  # intent at once
    with pytest.raises(UnreachableError):
        await rpc(farm, "stats")  # the mining process is restarting
    assert (await cgi(web, farm, "stats"))["STATS"] == []
    assert device(farm).refused_connections == 1
    clock.now += 5
    assert SLEEP_POWER_W < farm.power_w("m0") < RATED_W  # still winding down
    clock.now += RESTART_S
    board = (await rpc(farm, "stats"))["STATS"][1]
    assert (board["Mode"], board["GHS 5s"], board["chain_rate1"]) == (1, 0, "0.00")
    assert board["fan1"] == SLEEP_FAN_RPM
    assert (await cgi(web, farm, "stats"))["STATS"][0]["miner-mode"] == 1
    clock.now += 20
    assert farm.power_w("m0") == SLEEP_POWER_W
    assert list(device(farm).commands) == ["sleep"]


async def test_sim_wake_takes_a_longer_board_init(
    farm: SimFarm, web: aiohttp.ClientSession, clock: Time
) -> None:
    farm.reset(Mode.SLEEPING)
    conf = await cgi(web, farm, "get_miner_conf")
    assert conf["bitmain-work-mode"] == "1"
    await cgi(web, farm, "set_miner_conf", conf | {"miner-mode": 0})
    clock.now += RESTART_S + 1
    assert (await rpc(farm, "stats"))["STATS"][1]["Mode"] == 0
    clock.now += 30
    assert SLEEP_POWER_W < farm.power_w("m0") < RATED_W * 0.8  # boards still coming up
    clock.now += 60
    assert farm.power_w("m0") == RATED_W


async def test_sim_low_power_mode(farm: SimFarm, web: aiohttp.ClientSession, clock: Time) -> None:
    conf = await cgi(web, farm, "get_miner_conf")
    await cgi(web, farm, "set_miner_conf", conf | {"miner-mode": 3})
    clock.now += 120
    assert (await rpc(farm, "stats"))["STATS"][1]["Mode"] == 3
    assert farm.power_w("m0") == pytest.approx(RATED_W * 0.7, abs=1)
    assert list(device(farm).commands) == ["low"]


async def test_sim_reply_comes_after_the_change_is_applied(
    farm: SimFarm, web: aiohttp.ClientSession
) -> None:
    # A client that gives up before the (slow) reply has still changed the unit: the
    # 5 s-timeout trap of real S19s.
    device(farm).conf_reply_delay_s = 1.0
    conf = await cgi(web, farm, "get_miner_conf")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await cgi(web, farm, "set_miner_conf", conf | {"miner-mode": 1})
    assert list(device(farm).commands) == ["sleep"]


@pytest.mark.parametrize(
    ("honoured", "ignored"),
    [("miner-mode", "bitmain-work-mode"), ("bitmain-work-mode", "miner-mode")],
)
async def test_sim_builds_act_on_one_write_key_and_ack_the_other(
    farm: SimFarm, web: aiohttp.ClientSession, honoured: str, ignored: str
) -> None:
    sim = device(farm)
    sim.mode_key = honoured
    ack = await cgi(web, farm, "set_miner_conf", {ignored: 1})
    assert ack["code"] == "M000"  # acknowledged, and nothing happens (asic-rs #245)
    assert sim.conf["bitmain-work-mode"] == "0"
    assert not sim.commands
    await cgi(web, farm, "set_miner_conf", {honoured: "1"})  # pyasic's string option too
    assert sim.conf["bitmain-work-mode"] == "1"
    assert list(sim.commands) == ["sleep"]


async def test_sim_write_overwrites_only_what_it_is_sent(
    farm: SimFarm, web: aiohttp.ClientSession
) -> None:
    sim = device(farm)
    before = json.loads(json.dumps(sim.conf))
    new_pool = {"url": "stratum+tcp://new.example:3333", "user": "w.9", "pass": "y"}
    body = {
        "pools": [new_pool],
        "bitmain-fan-ctrl": True,
        "bitmain-fan-pwm": "70",
        "freq-level": "95",
    }
    await cgi(web, farm, "set_miner_conf", body)
    assert sim.conf["pools"] == [new_pool, *before["pools"][1:]]  # slots 2 and 3 untouched
    assert (sim.conf["bitmain-fan-ctrl"], sim.conf["bitmain-fan-pwm"]) == (True, "70")
    assert sim.conf["bitmain-freq-level"] == "95"
    assert sim.conf["bitmain-work-mode"] == "0"
    bad = await cgi(web, farm, "set_miner_conf", {"pools": [{"url": 1}], "miner-mode": 1})
    assert bad == {"stats": "error", "code": "M001", "msg": "Invalid pool!"}
    assert sim.conf["pools"][0] == new_pool
    assert (await cgi(web, farm, "set_miner_conf", {"miner-mode": 7}))["code"] == "M001"
    assert not sim.commands


async def test_sim_config_read_failure_knob(farm: SimFarm, web: aiohttp.ClientSession) -> None:
    device(farm).conf_error_status = 500
    auth = aiohttp.DigestAuthMiddleware("root", "root")
    async with web.get(url(farm, "get_miner_conf"), middlewares=(auth,)) as reply:
        assert reply.status == 500


async def test_sim_lying_unit_acks_stores_intent_and_keeps_hashing(
    farm: SimFarm, web: aiohttp.ClientSession, clock: Time
) -> None:
    await farm.set_fault("m1", Fault.LIE)
    conf = await cgi(web, farm, "get_miner_conf", miner="m1")
    ack = await cgi(web, farm, "set_miner_conf", conf | {"miner-mode": 1}, miner="m1")
    assert ack["code"] == "M000"
    assert device(farm, "m1").conf["bitmain-work-mode"] == "1"
    clock.now += 60
    assert (await rpc(farm, "stats", "m1"))["STATS"][1]["Mode"] == 0
    assert (await cgi(web, farm, "stats", miner="m1"))["STATS"][0]["miner-mode"] == 0
    assert farm.power_w("m1") == RATED_W
    assert not device(farm, "m1").commands


@pytest.mark.parametrize(
    ("fault", "rpc_error", "web_error"),
    [
        (Fault.REFUSE, UnreachableError, aiohttp.ClientConnectorError),
        (Fault.GARBAGE, ProtocolError, ValueError),  # a 200 whose body is not JSON
    ],
)
async def test_sim_faults_reach_both_endpoints(
    farm: SimFarm,
    web: aiohttp.ClientSession,
    fault: Fault,
    rpc_error: type[Exception],
    web_error: type[Exception],
) -> None:
    await farm.set_fault("m1", fault)
    with pytest.raises(rpc_error):
        await rpc(farm, "summary", "m1")
    with pytest.raises(web_error):
        await cgi(web, farm, "get_system_info", miner="m1")
    await farm.set_fault("m1", Fault.NONE)
    assert (await rpc(farm, "summary", "m1"))["SUMMARY"]
    assert (await cgi(web, farm, "get_system_info", miner="m1"))["serinum"]


async def test_sim_stalled_cgi_does_not_hold_up_shutdown(
    farm: SimFarm, web: aiohttp.ClientSession
) -> None:
    await farm.miners["m1"].servers[1].set_fault(Fault.STALL)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await cgi(web, farm, "get_system_info", miner="m1")
    assert device(farm, "m1").in_flight == 1
    await farm.miners["m1"].servers[1].stop()  # cancels the stalled reply, not 60 s later
    assert device(farm, "m1").in_flight == 0


async def test_sim_reset_forces_the_mode_and_forgets_nonces(
    farm: SimFarm, web: aiohttp.ClientSession
) -> None:
    auth = aiohttp.DigestAuthMiddleware("root", "root")
    sim = device(farm)
    await cgi(web, farm, "get_miner_conf", auth=auth)
    await cgi(web, farm, "get_miner_conf", auth=auth)
    assert sim.challenges == 1  # the client reuses its nonce
    farm.reset(Mode.SLEEPING)
    assert farm.power_w("m0") == SLEEP_POWER_W
    assert (await rpc(farm, "stats"))["STATS"][1]["Mode"] == 1
    assert (await cgi(web, farm, "get_miner_conf", auth=auth))["bitmain-work-mode"] == "1"
    assert sim.challenges == 2  # the nonce was forgotten: challenged again
