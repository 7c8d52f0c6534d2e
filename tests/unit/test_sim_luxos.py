"""The LuxOS simulator speaks the protocol real clients speak, with physics."""

from __future__ import annotations

import asyncio
import json

import pytest

from drivers.errors import RejectedError, UnreachableError
from drivers.transport import cgminer_tcp
from drivers.types import Mode
from sim.farm import SimFarm, SimMinerSpec, UnsupportedSimError
from sim.faults import Fault
from tests.unit.conftest import MakeFarm, Time


@pytest.fixture
async def farm(make_farm: MakeFarm) -> SimFarm:
    return await make_farm(3, 3250, 29.5, ambient_c={"c1": -30.0})


def host(farm: SimFarm, miner: str = "m0") -> str:
    return farm.miners[miner].spec.host


async def raw(host_: str, payload: bytes, *, half_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection(host_, 4028)
    writer.write(payload)
    if half_close:
        writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 2)
    writer.close()
    return data


async def cmd(
    farm: SimFarm, command: str, parameter: str | None = None, miner: str = "m0"
) -> cgminer_tcp.Reply:
    return await cgminer_tcp.request(
        host(farm, miner), 4028, command, parameter, timeout_s=2, device=miner
    )


async def test_sim_accepts_pretty_printed_json_without_newline_and_closes(farm: SimFarm) -> None:
    # Luxor's own client sends json.dumps(indent=2) and reads up to the NUL.
    data = await raw(host(farm), b'{\n  "command": "version"\n}')
    assert data.endswith(b"}\x00")
    reply = json.loads(data[:-1])
    assert reply["VERSION"][0]["LUXminer"].startswith("2024.")
    assert reply["STATUS"][0]["Code"] == 22
    assert "LUXminer" in reply["STATUS"][0]["Description"]


async def test_sim_accepts_json_in_pieces_and_the_plain_form(farm: SimFarm) -> None:
    reader, writer = await asyncio.open_connection(host(farm), 4028)
    for piece in (b'{"comm', b'and": "po', b'wer"}'):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.02)
    data = await asyncio.wait_for(reader.read(), 2)
    writer.close()
    assert json.loads(data[:-1])["POWER"][0]["Watts"] == 3250
    assert b"SUMMARY" in await raw(host(farm), b"summary", half_close=True)


async def test_sim_invalid_command_and_json(farm: SimFarm) -> None:
    with pytest.raises(RejectedError, match="code 14: Invalid command"):
        await cmd(farm, "rm-rf")
    reply = json.loads((await raw(host(farm), b'{"command": }')).rstrip(b"\x00"))
    assert reply["STATUS"][0]["Code"] == 23


async def test_sim_joined_reads(farm: SimFarm) -> None:
    reply = await cmd(farm, "power+summary+stats+events+config")
    assert set(reply) == {"power", "summary", "stats", "events", "config", "id"}
    assert reply["stats"][0]["STATS"][1]["chain_acn1"] == 76
    with pytest.raises(RejectedError, match="code 45"):
        await cmd(farm, "power+logon")


async def test_sim_single_session_with_idle_expiry(farm: SimFarm, clock: Time) -> None:
    sid = (await cmd(farm, "logon"))["SESSION"][0]["SessionID"]
    assert len(sid) == 8
    assert (await cmd(farm, "session"))["SESSION"][0]["SessionID"] == sid
    with pytest.raises(RejectedError, match="code 402: Another session is active"):
        await cmd(farm, "logon")
    clock.now += 59  # each use refreshes the minute
    await cmd(farm, "curtail", f"{sid},wakeup")
    clock.now += 59
    with pytest.raises(RejectedError, match="code 402"):
        await cmd(farm, "logon")
    clock.now += 2
    assert (await cmd(farm, "session"))["SESSION"][0]["SessionID"] == ""
    with pytest.raises(RejectedError, match="Invalid session_id"):
        await cmd(farm, "curtail", f"{sid},sleep")
    new = (await cmd(farm, "logon"))["SESSION"][0]["SessionID"]
    await cmd(farm, "logoff", new)
    assert (await cmd(farm, "session"))["SESSION"][0]["SessionID"] == ""


async def test_sim_sleep_ramps_down_and_wake_ramps_up(farm: SimFarm, clock: Time) -> None:
    sid = (await cmd(farm, "logon"))["SESSION"][0]["SessionID"]
    reply = await cmd(farm, "curtail", f"{sid},sleep")
    assert reply["CURTAIL"][0]["Action"] == "sleep mode"
    assert reply["STATUS"][0]["Code"] == 335
    events = (await cmd(farm, "events"))["EVENTS"]
    assert [e["Code"] for e in events] == ["SLEEP"]
    assert farm.power_w("m0") > 3000  # the PSU has not wound down yet
    clock.now += 2
    assert 25 < farm.power_w("m0") < 3250
    clock.now += 3  # LuxOS: ~25 W in under 5 s
    assert farm.power_w("m0") == 25
    assert (await cmd(farm, "summary"))["SUMMARY"][0]["GHS 5s"] == 0
    await cmd(farm, "curtail", f"{sid},wakeup")
    assert (await cmd(farm, "events"))["EVENTS"] == []
    clock.now += 5
    assert 500 < farm.power_w("m0") < 3250
    clock.now += 6  # full power in under 10 s (+15 % unit spread)
    assert farm.power_w("m0") == 3250
    assert list(farm.miners["m0"].device.commands) == ["sleep", "wakeup"]


async def test_sim_boards_cool_toward_ambient_when_asleep(farm: SimFarm, clock: Time) -> None:
    hot = farm.miners["m0"].physics.board_temps_c[0]
    assert hot > 0  # -30 degC ambient, but mining at full power
    sid = (await cmd(farm, "logon"))["SESSION"][0]["SessionID"]
    await cmd(farm, "curtail", f"{sid},sleep")
    clock.now += 600
    stats = (await cmd(farm, "stats"))["STATS"][1]
    pcb = stats["temp_pcb1"]
    assert pcb.startswith("-")  # below freezing now, dash-joined like real LuxOS
    assert farm.miners["m0"].physics.board_temps_c[0] < -25


async def test_sim_profiles_and_profileset(farm: SimFarm, clock: Time) -> None:
    profiles = (await cmd(farm, "profiles"))["PROFILES"]
    names = [p["Profile Name"] for p in profiles]
    assert "default" in names
    assert all(isinstance(p["Watts"], int) for p in profiles)
    low = min(profiles, key=lambda p: p["Watts"])
    sid = (await cmd(farm, "logon"))["SESSION"][0]["SessionID"]
    reply = await cmd(farm, "profileset", f"{sid},{low['Profile Name']}")
    assert reply["PROFILE"][0]["Profile"] == low["Profile Name"]
    clock.now += 15
    assert farm.power_w("m0") == low["Watts"]
    assert (await cmd(farm, "config"))["CONFIG"][0]["Profile"] == low["Profile Name"]


async def test_sim_lying_miner_acknowledges_and_does_nothing(farm: SimFarm, clock: Time) -> None:
    await farm.set_fault("m1", Fault.LIE)
    sid = (await cmd(farm, "logon", miner="m1"))["SESSION"][0]["SessionID"]
    reply = await cmd(farm, "curtail", f"{sid},sleep", miner="m1")
    assert reply["STATUS"][0]["Msg"] == "Curtailment command sent"
    clock.now += 10
    assert farm.power_w("m1") == 3250
    assert farm.miners["m1"].physics.mode is Mode.MINING


async def test_sim_refuse_then_recover(farm: SimFarm) -> None:
    await farm.set_fault("m2", Fault.REFUSE)
    with pytest.raises(UnreachableError):
        await cmd(farm, "version", miner="m2")
    await farm.set_fault("m2", Fault.NONE)
    assert "VERSION" in await cmd(farm, "version", miner="m2")


def test_sim_unknown_family_is_refused(clock: Time) -> None:
    with pytest.raises(UnsupportedSimError, match="no simulator for driver 'vnish'"):
        SimFarm([SimMinerSpec("x", "vnish", "127.0.0.1", 4028, "c", 1, 1.0)], time_fn=clock)
