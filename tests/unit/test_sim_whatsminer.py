"""The Whatsminer simulator speaks btminer's API v2 and v3 as real clients do, with physics.

The requests here are written by hand from the research notes (pyasic's exact bytes where
they were captured), independently of the driver's request code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from drivers.miners.whatsminer import v2_credentials, v3_token
from drivers.types import Mode
from sim.catalog import family_for
from sim.farm import SimFarm
from sim.faults import Fault
from sim.whatsminer import (
    FAMILY,
    MAX_TOKENS,
    PREHEAT_S,
    RESTART_S,
    UPFREQ_PREHEATED_S,
    UPFREQ_S,
    WhatsminerDevice,
)
from tests.unit.conftest import MakeFarm, Time

V2_PORT = 14028
V3_PORT = 14433
RATED_W = 3400
PYASIC_V3_CUTOFF = 20241101  # pyasic: a firmware date after 2024.11.0 means API v3


@pytest.fixture
async def v2farm(make_farm: MakeFarm) -> SimFarm:
    return await make_farm(1, RATED_W, 34.0, driver="whatsminer-v2", port=V2_PORT)


@pytest.fixture
async def v3farm(make_farm: MakeFarm) -> SimFarm:
    return await make_farm(1, RATED_W, 29.0, driver="whatsminer", port=V2_PORT, web_port=V3_PORT)


def host(farm: SimFarm, miner: str = "m0") -> str:
    return farm.miners[miner].spec.host


def device(farm: SimFarm) -> WhatsminerDevice:
    found = farm.miners["m0"].device
    assert isinstance(found, WhatsminerDevice)
    return found


async def raw(farm: SimFarm, payload: bytes, *, pieces: int = 1, miner: str = "m0") -> bytes:
    """Send `payload` (in pieces) and read until the miner closes; no half-close, like pyasic."""
    reader, writer = await asyncio.open_connection(host(farm, miner), V2_PORT)
    step = max(1, len(payload) // pieces)
    for i in range(0, len(payload), step):
        writer.write(payload[i : i + step])
        await writer.drain()
        await asyncio.sleep(0.01)
    data = await asyncio.wait_for(reader.read(), 2)
    writer.close()
    return data


async def v2(farm: SimFarm, request: dict[str, Any], miner: str = "m0") -> dict[str, Any]:
    reply: dict[str, Any] = json.loads(await raw(farm, json.dumps(request).encode(), miner=miner))
    return reply


async def token(farm: SimFarm, password: str = "admin", miner: str = "m0") -> tuple[str, bytes]:
    """(sign, key) from get_token, derived as pyasic does."""
    msg = (await v2(farm, {"command": "get_token"}, miner))["Msg"]
    creds = v2_credentials(password, msg["salt"], msg["newsalt"], msg["time"])
    return creds.sign, creds.key


def seal(key: bytes, body: bytes) -> str:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return base64.b64encode(encryptor.update(body) + encryptor.finalize()).decode()


def zero_padded(body: bytes) -> bytes:
    return body + b"\0" * (-len(body) % 16)


def unseal(key: bytes, data: str) -> bytes:
    """The decrypted reply with its padding left in place."""
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    return decryptor.update(base64.b64decode(data)) + decryptor.finalize()


async def command(
    farm: SimFarm, key: bytes, body: dict[str, Any], miner: str = "m0"
) -> dict[str, Any]:
    """An encrypted command; the reply decrypted if it is encrypted."""
    envelope = {"enc": 1, "data": seal(key, zero_padded(json.dumps(body).encode()))}
    reply = await v2(farm, envelope, miner)
    if "enc" in reply:
        opened: dict[str, Any] = json.loads(unseal(key, reply["enc"]).rstrip(b"\0"))
        return opened
    return reply


async def frames(
    farm: SimFarm, *requests: dict[str, Any] | bytes, port: int = V3_PORT
) -> list[dict[str, Any]]:
    """Several v3 frames on one connection, each answered before the next is sent."""
    reader, writer = await asyncio.open_connection(host(farm), port)
    replies = []
    try:
        for request in requests:
            body = request if isinstance(request, bytes) else json.dumps(request).encode()
            writer.write(struct.pack("<I", len(body)) + body)
            (size,) = struct.unpack("<I", await asyncio.wait_for(reader.readexactly(4), 2))
            replies.append(json.loads(await reader.readexactly(size)))
    finally:
        writer.close()
    return replies


# -- family and firmware -------------------------------------------------------------------


def test_sim_whatsminer_family_serves_three_drivers() -> None:
    for name in ("whatsminer", "whatsminer-v2", "whatsminer-v3"):
        assert family_for(name) is FAMILY


async def test_sim_whatsminer_firmware_dates_steer_pyasic(v2farm: SimFarm, v3farm: SimFarm) -> None:
    old = (await v2(v2farm, {"command": "get_version"}))["Msg"]["fw_ver"]
    new = (await v2(v3farm, {"command": "get_version"}))["Msg"]["fw_ver"]
    assert int(old[:8]) < PYASIC_V3_CUTOFF <= int(new[:8])
    assert len(v2farm.miners["m0"].servers) == 1  # no API v3 on old firmware
    assert len(v3farm.miners["m0"].servers) == 2
    # pyasic's factory needs "bitmicro" or "btminer" in devdetails or version.
    details = await v2(v2farm, {"command": "devdetails"})
    assert details["DEVDETAILS"][0]["Driver"] == "bitmicro"


# -- API v2: framing and plaintext reads ---------------------------------------------------


async def test_sim_whatsminer_v2_replies_then_closes_without_nul(v2farm: SimFarm) -> None:
    data = await raw(v2farm, b'{"command": "summary"}')
    assert data.endswith(b"}")  # no NUL: MicroBT's own client json.loads the bytes as they are
    reply = json.loads(data)
    assert reply["STATUS"] == [{"STATUS": "S", "Msg": "Summary"}]
    row = reply["SUMMARY"][0]
    assert row["Power"] == RATED_W
    assert row["MHS 1m"] == pytest.approx(RATED_W / 34.0 * 1e6, rel=0.01)
    assert row["Power Limit"] == RATED_W


async def test_sim_whatsminer_v2_accepts_cmd_and_requests_in_pieces(v2farm: SimFarm) -> None:
    pretty = json.dumps({"cmd": "get_version"}, indent=2).encode()
    reply = json.loads(await raw(v2farm, pretty, pieces=4))
    assert reply["STATUS"] == "S"  # btminer style: a string
    assert reply["Code"] == 131
    assert reply["Msg"]["api_ver"] == "2.0.5"


async def test_sim_whatsminer_v2_joins_and_errors(v2farm: SimFarm) -> None:
    joined = await v2(v2farm, {"command": "pools+devs+summary"})  # pyasic's get_data
    assert {"pools", "devs", "summary", "id"} == set(joined)
    assert joined["devs"][0]["STATUS"][0]["Msg"] == "3 ASC(s)"
    refused = await v2(v2farm, {"command": "summary+get_version"})
    assert (refused["STATUS"], refused["Code"]) == ("E", 45)
    unknown = await v2(v2farm, {"cmd": "rm -rf"})
    assert (unknown["Code"], unknown["Msg"]) == (14, "invalid cmd")
    bad = json.loads(await raw(v2farm, b'{"cmd": ]'))
    assert bad["Code"] == 23
    plain_write = await v2(v2farm, {"cmd": "power_off", "respbefore": "true"})
    assert plain_write["Code"] == 45  # writes only travel encrypted
    assert v2farm.miners["m0"].physics.mode is Mode.MINING


async def test_sim_whatsminer_v2_status_shows_power_off(v2farm: SimFarm) -> None:
    sign, key = await token(v2farm)
    await command(v2farm, key, {"cmd": "power_off", "respbefore": "true", "token": sign})
    msg = (await v2(v2farm, {"command": "status"}))["Msg"]
    assert (msg["mineroff"], msg["mineroff_reason"]) == ("true", "by whatsminer api")


# -- API v2: tokens and the encrypted envelope ---------------------------------------------


async def test_sim_whatsminer_v2_accepts_pyasics_exact_power_off_bytes(
    v2farm: SimFarm, clock: Time
) -> None:
    # The token pyasic derived from salt BQ5hoXV9 / newsalt YhTbhUdm / time 7869, and the
    # bytes it sent with it, as captured.
    device(v2farm).tokens["VigUx/NwA3kF2wDhMjLaU/"] = clock.now
    captured = (
        b'{"enc": 1, "data": "YJracrWpLn2XvqWuNiNqyg70K64pfivIJhwE32DXNCeyv4iYIDyJ6mJuwbGpytIytePy'
        b'AqG9YCpK0THuFkWrUVofx0e3VtPvUFYaVjYKqvg="}'
    )
    reply = json.loads(await raw(v2farm, captured))
    key = v2_credentials("admin", "BQ5hoXV9", "YhTbhUdm", "7869").key
    opened = unseal(key, reply["enc"])
    assert len(opened) % 16 == 0
    body = opened.rstrip(b"\0")
    assert set(opened[len(body) :]) <= {0}  # zero padding: pyasic cannot undo PKCS#7
    assert json.loads(body)["Msg"] == "API command OK"  # what pyasic's stop_mining checks
    assert list(device(v2farm).commands) == ["power_off"]


async def test_sim_whatsminer_v2_token_round_trip_and_pkcs7_requests(v2farm: SimFarm) -> None:
    reply = await v2(v2farm, {"cmd": "get_token"})
    assert reply["Code"] == 134
    assert len(reply["Msg"]["time"]) == 4
    assert reply["Msg"]["salt"] == "BQ5hoXV9"
    sign, key = await token(v2farm)
    set_pct = {"cmd": "set_power_pct", "percent": "50", "token": sign}
    assert (await command(v2farm, key, set_pct))["Msg"] == "API command OK"
    # CryptoJS clients (Tether's) pad with PKCS#7: accepted too.
    body = json.dumps({"cmd": "set_power_pct", "percent": "80", "token": sign}).encode()
    pad = 16 - len(body) % 16
    reply = await v2(v2farm, {"enc": 1, "data": seal(key, body + bytes([pad]) * pad)})
    assert "enc" in reply
    assert list(device(v2farm).commands) == ["set_power_pct 50", "set_power_pct 80"]
    read = await command(v2farm, key, {"cmd": "status", "token": sign})  # encrypted read
    assert read["Msg"]["power_pct"] == "80"


async def test_sim_whatsminer_v2_token_errors(v2farm: SimFarm, clock: Time) -> None:
    sign, key = await token(v2farm)
    unknown = await command(v2farm, key, {"cmd": "power_on", "token": "nope"})
    assert (unknown["STATUS"], unknown["Code"], unknown["Msg"]) == ("E", 135, "check token err")
    _, wrong_key = await token(v2farm, password="wrong")
    garbled = await command(v2farm, wrong_key, {"cmd": "power_on", "token": sign})
    assert garbled["Code"] == 23  # the miner cannot read a command under another key
    clock.now += 1801  # tokens live 30 minutes
    expired = await command(v2farm, key, {"cmd": "power_on", "token": sign})
    assert expired["Code"] == 135
    device(v2farm).write_enabled = False
    sign, key = await token(v2farm)
    locked = await command(v2farm, key, {"cmd": "power_on", "token": sign})
    assert locked["Msg"] == "can't access write cmd"


async def test_sim_whatsminer_v2_sixteen_live_tokens_at_most(v2farm: SimFarm, clock: Time) -> None:
    for _ in range(MAX_TOKENS):
        assert (await v2(v2farm, {"cmd": "get_token"}))["Code"] == 134
    full = await v2(v2farm, {"cmd": "get_token"})
    assert (full["STATUS"], full["Code"], full["Msg"]) == ("E", 136, "over max connect")
    clock.now += 1801
    assert (await v2(v2farm, {"cmd": "get_token"}))["Code"] == 134
    device(v2farm).reset(Mode.MINING)
    assert device(v2farm).tokens == {}


async def test_sim_whatsminer_v2_expire_fault_and_lie(v2farm: SimFarm) -> None:
    await v2farm.set_fault("m0", Fault.EXPIRE_SESSIONS)
    sign, key = await token(v2farm)
    assert (await command(v2farm, key, {"cmd": "power_off", "token": sign}))["Code"] == 135
    await v2farm.set_fault("m0", Fault.LIE)
    sign, key = await token(v2farm)
    ack = await command(v2farm, key, {"cmd": "power_off", "token": sign})
    assert ack["Msg"] == "API command OK"
    assert v2farm.miners["m0"].physics.mode is Mode.MINING
    assert not device(v2farm).commands


async def test_sim_whatsminer_v2_no_close_keeps_the_socket(v2farm: SimFarm) -> None:
    await v2farm.set_fault("m0", Fault.NO_CLOSE)
    reader, writer = await asyncio.open_connection(host(v2farm), V2_PORT)
    writer.write(b'{"cmd": "status"}')
    data = await asyncio.wait_for(reader.read(4096), 2)
    assert json.loads(data)["Code"] == 131
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(), 0.3)  # still open
    writer.close()


# -- API v3 --------------------------------------------------------------------------------


async def test_sim_whatsminer_v3_frames_on_one_connection(v3farm: SimFarm) -> None:
    info, summary, salt, setting = await frames(
        v3farm,
        b'{"cmd": "get.device.info"}',  # pyasic's factory probe: no param at all
        {"cmd": "get.miner.status", "param": "summary+edevs"},
        {"cmd": "get.device.info", "param": "salt"},
        {"cmd": "get.miner.setting", "param": None},  # pyasic sends an explicit null
    )
    assert info["code"] == 0
    assert info["desc"] == "get.device.info"
    assert info["msg"]["miner"]["working"] == "true"
    assert info["msg"]["system"]["api"].startswith("3.")
    assert set(summary["msg"]) == {"summary", "edevs"}
    assert summary["msg"]["summary"]["power-realtime"] == RATED_W
    assert summary["msg"]["summary"]["hash-realtime"] == pytest.approx(RATED_W / 29.0, rel=0.01)
    assert salt["msg"] == {"salt": device(v3farm).salt}
    assert setting["msg"]["power-limit"] == RATED_W


async def test_sim_whatsminer_v3_errors(v3farm: SimFarm) -> None:
    missing, bad_param, unknown, junk = await frames(
        v3farm,
        {"cmd": "get.miner.status"},
        {"cmd": "get.miner.status", "param": "everything"},
        {"cmd": "get.nothing"},
        b"{not json",
    )
    assert (missing["code"], missing["msg"]) == (-3, "param item is null")
    assert bad_param["code"] == -2
    assert unknown["code"] == -2
    assert junk["code"] == -1


async def test_sim_whatsminer_v3_checks_the_token(v3farm: SimFarm) -> None:
    salt = device(v3farm).salt
    ts = 1_795_000_123
    good = v3_token("set.miner.service", "super", salt, ts)
    # The token does not cover param: the same token is valid for "stop".
    wrong, other_account, stopped = await frames(
        v3farm,
        {"cmd": "set.miner.service", "param": "stop", "ts": ts, "account": "super", "token": "x"},
        {"cmd": "set.miner.service", "param": "stop", "ts": ts, "account": "user1", "token": good},
        {"cmd": "set.miner.service", "param": "stop", "ts": ts, "account": "super", "token": good},
    )
    assert wrong["code"] == -1
    assert other_account["code"] == -1
    assert (stopped["code"], stopped["msg"], stopped["desc"]) == (0, "ok", "set.miner.service")
    assert v3farm.miners["m0"].physics.mode is Mode.SLEEPING
    (info,) = await frames(v3farm, {"cmd": "get.device.info", "param": "miner"})
    assert info["msg"]["miner"]["working"] == "false"
    device(v3farm).write_enabled = False
    (locked,) = await frames(
        v3farm,
        {"cmd": "set.miner.service", "param": "start", "ts": ts, "account": "super", "token": good},
    )
    assert (locked["code"], locked["msg"]) == (-4, "no permission for write command")


async def test_sim_whatsminer_v3_token_matches_an_independent_derivation(v3farm: SimFarm) -> None:
    salt = device(v3farm).salt
    ts = 1_795_000_456
    digest = hashlib.sha256(f"set.miner.power_limit super{salt}{ts}".replace(" ", "").encode())
    tok = base64.b64encode(digest.digest()).decode()[:8]
    (reply,) = await frames(
        v3farm,
        {
            "cmd": "set.miner.power_limit",
            "param": 3000.0,
            "ts": ts,
            "account": "super",
            "token": tok,
        },
    )
    assert reply["code"] == 0  # asic-rs sends the watts as a float: accepted
    assert device(v3farm).power_limit_w == 3000


@pytest.mark.parametrize("fault", [Fault.GARBAGE, Fault.TRUNCATE])
async def test_sim_whatsminer_v3_wire_faults_break_the_frame(v3farm: SimFarm, fault: Fault) -> None:
    await v3farm.set_fault("m0", fault)
    with pytest.raises((asyncio.IncompleteReadError, ValueError, struct.error)):
        await frames(v3farm, {"cmd": "get.miner.setting"})


# -- physics -------------------------------------------------------------------------------


async def test_sim_whatsminer_power_off_drops_in_seconds(v2farm: SimFarm, clock: Time) -> None:
    sign, key = await token(v2farm)
    await command(v2farm, key, {"cmd": "power_off", "respbefore": "true", "token": sign})
    clock.now += 1
    assert v2farm.power_w("m0") > 1000  # still falling
    clock.now += 6
    assert v2farm.power_w("m0") == 13  # the control board only


async def test_sim_whatsminer_power_on_power_fast_hashrate_slow(
    v2farm: SimFarm, clock: Time
) -> None:
    sign, key = await token(v2farm)
    await command(v2farm, key, {"cmd": "power_off", "token": sign})
    clock.now += 30
    await command(v2farm, key, {"cmd": "power_on", "token": sign})
    clock.now += 30
    row = (await v2(v2farm, {"cmd": "summary"}))["SUMMARY"][0]
    assert row["Power"] == RATED_W  # draw is back within seconds
    assert row["Hash Stable"] is False
    assert row["MHS 1m"] < 0.7 * row["Target MHS"]  # frequency still climbing
    clock.now += UPFREQ_S
    row = (await v2(v2farm, {"cmd": "summary"}))["SUMMARY"][0]
    assert row["Hash Stable"] is True
    assert row["MHS 1m"] == pytest.approx(row["Target MHS"], rel=0.01)


async def test_sim_whatsminer_pre_power_on_warms_cold_boards_first(
    make_farm: MakeFarm, clock: Time
) -> None:
    farm = await make_farm(
        2, RATED_W, 34.0, driver="whatsminer-v2", port=V2_PORT, ambient_c={"c1": -30.0}
    )
    for miner in ("m0", "m1"):
        sign, key = await token(farm, miner=miner)
        await command(farm, key, {"cmd": "power_off", "token": sign}, miner)
    clock.now += 3600  # boards at the container's -30 degC
    sign, key = await token(farm)
    first = await command(farm, key, {"cmd": "pre_power_on", "token": sign})
    assert first["Msg"] == {"complete": "false", "msg": "wait for adjust temp"}
    clock.now += PREHEAT_S
    done = await command(farm, key, {"cmd": "pre_power_on", "token": sign})
    assert done["Msg"] == {"complete": "true", "msg": "adjust complete"}
    for miner in ("m0", "m1"):  # m1 starts cold, without pre_power_on
        sign, key = await token(farm, miner=miner)
        await command(farm, key, {"cmd": "power_on", "token": sign}, miner)
    clock.now += UPFREQ_PREHEATED_S
    warm = (await v2(farm, {"cmd": "summary"}, "m0"))["SUMMARY"][0]
    cold = (await v2(farm, {"cmd": "summary"}, "m1"))["SUMMARY"][0]
    assert (warm["Hash Stable"], cold["Hash Stable"]) == (True, False)
    assert warm["MHS 1m"] > cold["MHS 1m"]


async def test_sim_whatsminer_v3_pre_power_on_lets_a_cold_start_succeed(
    make_farm: MakeFarm, clock: Time
) -> None:
    farm = await make_farm(
        1, RATED_W, 29.0, driver="whatsminer-v3", port=V2_PORT, web_port=V3_PORT,
        ambient_c={"c1": -30.0},
    )  # fmt: skip

    def signed(cmd: str, param: str | None = None) -> dict[str, Any]:
        ts = int(clock.now)
        tok = v3_token(cmd, "super", device(farm).salt, ts)
        return {"cmd": cmd, "param": param, "ts": ts, "account": "super", "token": tok}

    await frames(farm, signed("set.miner.service", "stop"))
    clock.now += 3600  # boards at the container's -30 degC
    (first,) = await frames(farm, signed("set.miner.pre_power_on"))
    assert (first["code"], first["msg"]["complete"]) == (0, "false")
    clock.now += PREHEAT_S
    (done,) = await frames(farm, signed("set.miner.pre_power_on"))
    assert done["msg"] == {"complete": "true", "msg": "adjust complete"}
    await frames(farm, signed("set.miner.service", "start"))
    physics = farm.miners["m0"].physics
    assert (physics.mode, physics.failed_cold_boots) == (Mode.MINING, 0)
    assert list(device(farm).commands) == [
        "set.miner.service stop",
        "set.miner.pre_power_on",
        "set.miner.service start",
    ]
    device(farm).has_pre_power_on = False  # firmware without it
    (unknown,) = await frames(farm, signed("set.miner.pre_power_on"))
    assert (unknown["code"], unknown["msg"]) == (-2, "invalid command")


@pytest.mark.parametrize("api", ["v2", "v3"])
async def test_sim_whatsminer_power_limit_restarts_btminer(
    v3farm: SimFarm, clock: Time, api: str
) -> None:
    if api == "v2":
        sign, key = await token(v3farm)  # new firmware still takes v2 writes on 4028
        ack = await command(
            v3farm, key, {"cmd": "adjust_power_limit", "power_limit": "3000", "token": sign}
        )
        assert ack["Msg"] == "API command OK"
    else:
        ts = 1_795_000_789
        tok = v3_token("set.miner.power_limit", "super", device(v3farm).salt, ts)
        request = {"cmd": "set.miner.power_limit", "param": 3000, "ts": ts, "account": "super"}
        (ack,) = await frames(v3farm, {**request, "token": tok})
        assert ack["msg"] == "ok"
    assert v3farm.power_w("m0") == 13  # boards out at once
    (status,) = await frames(v3farm, {"cmd": "get.miner.status", "param": "summary"})
    assert status["msg"]["summary"]["elapsed"] == 0  # btminer restarted
    clock.now += RESTART_S / 3
    assert 13 < v3farm.power_w("m0") < 3000  # minutes to come back
    clock.now += RESTART_S
    assert v3farm.power_w("m0") == 3000
    assert v3farm.miners["m0"].physics.mode is Mode.MINING


async def test_sim_whatsminer_reset_restores_defaults(v2farm: SimFarm) -> None:
    sign, key = await token(v2farm)
    await command(v2farm, key, {"cmd": "set_power_pct", "percent": "60", "token": sign})
    device(v2farm).reset(Mode.SLEEPING)
    assert device(v2farm).power_pct == 100
    assert device(v2farm).tokens == {}
    assert v2farm.power_w("m0") == 13
    assert (await v2(v2farm, {"cmd": "status"}))["Msg"]["mineroff"] == "true"
