"""The Braiins OS+ simulator speaks REST v1, gRPC and 4028 as real clients expect."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError

from drivers.errors import RejectedError, UnreachableError
from drivers.transport import cgminer_tcp, http
from drivers.types import Mode
from sim.braiins_os import BraiinsDevice
from sim.farm import SimFarm, SimMinerSpec
from sim.faults import Fault
from tests.unit.conftest import MakeFarm, Time

FIXTURES = Path(__file__).parent.parent / "fixtures" / "braiins_os" / "25.07"
REST_PORT = 8080
GRPC_PORT = 50051  # pyasic's fixed port; each test has its own loopback /16
V1 = "/braiins.bos.v1."


@pytest.fixture(autouse=True)
async def _shared_http_session() -> AsyncIterator[None]:
    yield
    await http.close_sessions()


@pytest.fixture
async def farm(make_farm: MakeFarm) -> SimFarm:
    return await make_farm(2, 3250, 29.5, driver="braiins-os", port=REST_PORT)


def host(farm: SimFarm, miner: str = "m0") -> str:
    return farm.miners[miner].spec.host


def mode(farm: SimFarm, miner: str = "m0") -> Mode:
    return farm.miners[miner].physics.mode


def device(farm: SimFarm, miner: str = "m0") -> BraiinsDevice:
    dev = farm.miners[miner].device
    assert isinstance(dev, BraiinsDevice)
    return dev


async def rest(
    farm: SimFarm,
    method: str,
    path: str,
    body: object = None,
    *,
    token: str | None = None,
    miner: str = "m0",
) -> tuple[int, Any]:
    headers = {"Authorization": token} if token is not None else None
    reply = await http.request(
        method,
        f"http://{host(farm, miner)}:{REST_PORT}/api/v1{path}",
        device=miner,
        op=path,
        timeout_s=2,
        json_body=body,
        headers=headers,
    )
    if reply.headers.get("Content-Type", "").startswith("application/json"):
        return reply.status, reply.json(device=miner, op=path)
    return reply.status, reply.body.decode()


async def login(farm: SimFarm, miner: str = "m0") -> str:
    status, body = await rest(
        farm, "POST", "/auth/login", {"username": "root", "password": "root"}, miner=miner
    )
    assert status == 200
    token: str = body["token"]
    return token


# -- REST -----------------------------------------------------------------------------------


async def test_sim_login_and_raw_token_auth(farm: SimFarm) -> None:
    status, body = await rest(farm, "POST", "/auth/login", {"username": "root", "password": "root"})
    assert status == 200
    assert set(body) == {"token", "timeout_s"}
    assert body["timeout_s"] == 3600
    token = body["token"]
    assert (await rest(farm, "GET", "/miner/details"))[0] == 401
    assert (await rest(farm, "GET", "/miner/details", token=f"Bearer {token}")) == (401, "")
    status, details = await rest(farm, "GET", "/miner/details", token=token)
    assert status == 200
    assert details["status"] == 2
    bad = await rest(farm, "POST", "/auth/login", {"username": "root", "password": "x"})
    assert bad == (401, "")
    status, text = await rest(farm, "POST", "/auth/login", {"username": "root"})
    assert status == 400
    assert "password" in text


async def test_sim_token_expiry_slides_with_use(farm: SimFarm, clock: Time) -> None:
    token = await login(farm)
    for _ in range(3):
        clock.now += 3500
        assert (await rest(farm, "GET", "/miner/stats", token=token))[0] == 200
    clock.now += 3601
    assert (await rest(farm, "GET", "/miner/stats", token=token))[0] == 401
    assert (await rest(farm, "GET", "/miner/stats", token=await login(farm)))[0] == 200


async def test_sim_expire_sessions_and_reset_drop_tokens(farm: SimFarm) -> None:
    token = await login(farm)
    device(farm).reset(Mode.MINING)  # a reboot: tokens live in memory only
    assert (await rest(farm, "GET", "/miner/stats", token=token))[0] == 401
    await farm.set_fault("m0", Fault.EXPIRE_SESSIONS)
    token = await login(farm)  # login still works; the token dies at once
    assert (await rest(farm, "GET", "/miner/stats", token=token))[0] == 401


async def test_sim_pause_and_resume_answer_already_in_that_state(farm: SimFarm) -> None:
    token = await login(farm)
    assert await rest(farm, "PUT", "/actions/pause", token=token) == (200, False)
    assert await rest(farm, "PUT", "/actions/pause", token=token) == (200, True)
    assert (await rest(farm, "GET", "/miner/details", token=token))[1]["status"] == 3
    assert await rest(farm, "PUT", "/actions/resume", token=token) == (200, False)
    assert await rest(farm, "PUT", "/actions/resume", token=token) == (200, True)
    details = (await rest(farm, "GET", "/miner/details", token=token))[1]
    assert details["status"] == 2
    assert details["detailed_status"]["status"] == {"running": {"reason": {"normal": {}}}}
    assert list(device(farm).commands) == ["pause", "resume"]


async def test_sim_pause_ramps_down_and_resume_ramps_up(farm: SimFarm, clock: Time) -> None:
    token = await login(farm)
    await rest(farm, "PUT", "/actions/pause", token=token)
    assert farm.power_w("m0") > 3000  # the hashboards have not wound down yet
    clock.now += 1
    assert 30 < farm.power_w("m0") < 3250
    clock.now += 1.5  # quick ramping down: 2 s (+15 % unit spread)
    assert farm.power_w("m0") == 30
    stats = (await rest(farm, "GET", "/miner/stats", token=token))[1]
    assert stats["power_stats"]["approximated_consumption"]["watt"] == 30
    assert stats["miner_stats"]["real_hashrate"]["last_5s"]["gigahash_per_second"] == 0
    await rest(farm, "PUT", "/actions/resume", token=token)
    clock.now += 2.5
    assert 500 < farm.power_w("m0") < 3250
    clock.now += 3.5  # quick ramping up: 5 s (+15 %)
    assert farm.power_w("m0") == 3250


async def test_sim_quick_ramping_changes_the_ramps(farm: SimFarm, clock: Time) -> None:
    token = await login(farm)
    reply = await rest(
        farm, "PUT", "/performance/quick-ramping", {"up_s": 20, "down_s": 10}, token=token
    )
    assert reply == (200, {"up_s": 20, "down_s": 10})
    config = (await rest(farm, "GET", "/configuration/miner", token=token))[1]
    assert config["hashboard_config"]["quick_ramping_time_up_s"] == 20
    assert config["hashboard_config"]["quick_ramping_time_down_s"] == 10
    await rest(farm, "PUT", "/actions/pause", token=token)
    clock.now += 7
    assert farm.power_w("m0") > 30  # 10 s now
    clock.now += 5
    assert farm.power_w("m0") == 30
    status, text = await rest(farm, "PUT", "/performance/quick-ramping", {"up_s": 5}, token=token)
    assert status == 400
    assert "down_s" in text
    reply = await rest(farm, "PUT", "/performance/quick-ramping/default", token=token)
    assert reply == (200, {"up_s": 5, "down_s": 2})


async def test_sim_power_target_retunes_over_time(farm: SimFarm, clock: Time) -> None:
    token = await login(farm)
    assert await rest(farm, "PUT", "/performance/power-target", {"watt": 2500}, token=token) == (
        200,
        {"watt": 2500},
    )
    mode = (await rest(farm, "GET", "/performance/mode", token=token))[1]
    assert mode == {"tunermode": {"target": {"powertarget": {"power_target": {"watt": 2500}}}}}
    tuner = (await rest(farm, "GET", "/performance/tuner-state", token=token))[1]
    assert tuner["overall_tuner_state"] == 3  # tuning
    clock.now += 5
    assert 2500 < farm.power_w("m0") < 3250  # the tuner walks there, it does not jump
    clock.now += 60
    assert farm.power_w("m0") == 2500
    tuner = (await rest(farm, "GET", "/performance/tuner-state", token=token))[1]
    assert tuner["overall_tuner_state"] == 2  # stable
    status, text = await rest(farm, "PUT", "/performance/power-target", {"watt": 100}, token=token)
    assert status == 412
    assert text == "power target [100W] is not in allowed range [Some(1300), Some(4225)]"
    # The OpenAPI offers PUT only; the target is read from /performance/mode.
    assert (await rest(farm, "GET", "/performance/power-target", token=token))[0] == 405


async def test_sim_pause_fans_follow_the_pause_mode(farm: SimFarm, clock: Time) -> None:
    token = await login(farm)
    fans = (await rest(farm, "GET", "/cooling/state", token=token))[1]["fans"]
    mining_ratio = fans[0]["target_speed_ratio"]
    assert len(fans) == 4
    assert mining_ratio > 0.5
    await rest(farm, "PUT", "/actions/pause", token=token)
    clock.now += 150  # auto: from the last mining speed slowly down to 0 %
    ratio = (await rest(farm, "GET", "/cooling/state", token=token))[1]["fans"][0]
    assert ratio["target_speed_ratio"] == pytest.approx(mining_ratio / 2, abs=0.01)
    clock.now += 200
    assert (await rest(farm, "GET", "/cooling/state", token=token))[1]["fans"][0]["rpm"] == 0
    manual = {"mode": {"manual": {"pause_cooldown_fan_speed_ratio": 0.3, "fan_pause_runtime": 1}}}
    status, mode = await rest(
        farm, "PUT", "/cooling/mode", {"auto": {"pause_mode": manual}}, token=token
    )
    assert status == 200
    assert mode["auto"]["pause_mode"] == manual
    assert mode["auto"]["target_temperature"] == {"degree_c": 75.0}  # updated in place
    assert (await rest(farm, "GET", "/cooling/state", token=token))[1]["fans"][0]["rpm"] == 1800
    clock.now += 600  # limited: off after fan_pause_runtime_limited_duration_s
    assert (await rest(farm, "GET", "/cooling/state", token=token))[1]["fans"][0]["rpm"] == 0
    no_ratio = {"auto": {"pause_mode": {"mode": {"manual": {"fan_pause_runtime": 2}}}}}
    status, text = await rest(farm, "PUT", "/cooling/mode", no_ratio, token=token)
    assert status == 400
    assert "pause_cooldown_fan_speed_ratio" in text
    status, mode = await rest(farm, "PUT", "/cooling/mode", {"manual": {}}, token=token)
    assert mode["manual"]["pause_mode"] == {"mode": {"auto": {}}}  # a new mode: defaults


async def test_sim_lying_miner_acknowledges_and_does_nothing(farm: SimFarm, clock: Time) -> None:
    await farm.set_fault("m1", Fault.LIE)
    token = await login(farm, "m1")
    assert await rest(farm, "PUT", "/actions/pause", token=token, miner="m1") == (200, False)
    reply = await rest(
        farm, "PUT", "/performance/power-target", {"watt": 2000}, token=token, miner="m1"
    )
    assert reply == (200, {"watt": 2000})
    clock.now += 120
    assert farm.power_w("m1") == 3250
    assert mode(farm, "m1") is Mode.MINING
    assert list(device(farm, "m1").commands) == []


async def test_sim_version_with_and_without_slash_and_unknown_paths(farm: SimFarm) -> None:
    token = await login(farm)
    for path in ("/version/", "/version"):
        assert await rest(farm, "GET", path, token=token) == (
            200,
            {"major": 1, "minor": 7, "patch": 0},
        )
    assert (await rest(farm, "GET", "/no/such/thing", token=token))[0] == 404


@pytest.mark.parametrize(
    ("fixture", "path"),
    [
        ("miner_details", "/miner/details"),
        ("miner_stats", "/miner/stats"),
        ("miner_hw_hashboards", "/miner/hw/hashboards"),
        ("cooling_state", "/cooling/state"),
        ("performance_mode", "/performance/mode"),
        ("configuration_miner", "/configuration/miner"),
        ("configuration_constraints", "/configuration/constraints"),
        ("version", "/version/"),
    ],
)
async def test_sim_replies_have_the_documented_shape(
    farm: SimFarm, fixture: str, path: str
) -> None:
    token = await login(farm)
    manual = {"mode": {"manual": {"pause_cooldown_fan_speed_ratio": 0.3, "fan_pause_runtime": 2}}}
    await rest(farm, "PUT", "/cooling/mode", {"auto": {"pause_mode": manual}}, token=token)
    recorded = json.loads((FIXTURES / f"{fixture}.json").read_text())
    status, served = await rest(farm, "GET", path, token=token)
    assert status == 200
    assert_same_shape(served, recorded, fixture)


def assert_same_shape(served: object, recorded: object, where: str) -> None:
    """The same keys and value types throughout; null matches anything (nullable fields)."""
    if served is None or recorded is None:
        return
    if isinstance(recorded, dict):
        assert isinstance(served, dict), where
        assert sorted(served) == sorted(recorded), where
        for key, value in recorded.items():
            assert_same_shape(served[key], value, f"{where}.{key}")
    elif isinstance(recorded, list):
        assert isinstance(served, list), where
        if served and recorded:
            assert_same_shape(served[0], recorded[0], f"{where}[0]")
    else:
        assert _kind(served) == _kind(recorded), where


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


async def test_sim_refuse_then_recover(farm: SimFarm) -> None:
    await farm.set_fault("m1", Fault.REFUSE)
    with pytest.raises(UnreachableError):
        await rest(farm, "POST", "/auth/login", {}, miner="m1")
    with pytest.raises(UnreachableError):
        await cgminer_tcp.request(host(farm, "m1"), 4028, "version", timeout_s=1, device="m1")
    with pytest.raises(ConnectionRefusedError):
        await grpc(farm, "AuthenticationService/Login", miner="m1")
    await farm.set_fault("m1", Fault.NONE)
    assert await login(farm, "m1")


def test_sim_ports_must_differ(clock: Time) -> None:
    spec = SimMinerSpec("x", "braiins-os", "127.0.0.1", 4028, "c", 3000, 20.0)
    with pytest.raises(ValueError, match="must differ"):
        SimFarm([spec], time_fn=clock)


# -- gRPC, as pyasic speaks it ---------------------------------------------------------------


class Raw(CodecBase):
    """Bytes in, bytes out: the test writes the protobuf by hand."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


async def grpc(
    farm: SimFarm,
    method: str,
    body: bytes = b"",
    *,
    token: str | None = None,
    miner: str = "m0",
    service: str = V1,
) -> tuple[bytes, dict[str, str]]:
    """One unary call on a new HTTP/2 connection (as pyasic does): reply and headers."""
    metadata = {"authorization": token} if token is not None else None
    async with (
        Channel(host(farm, miner), GRPC_PORT, codec=Raw()) as channel,
        channel.request(
            service + method, Cardinality.UNARY_UNARY, bytes, bytes, metadata=metadata
        ) as stream,
    ):
        await stream.send_message(body, end=True)
        await stream.recv_initial_metadata()
        reply = await stream.recv_message()
        await stream.recv_trailing_metadata()
        headers = {k: v for k, v in (stream.initial_metadata or {}).items() if isinstance(v, str)}
        return reply or b"", headers


async def grpc_login(farm: SimFarm, password: bytes = b"root") -> str:
    body = b"\x0a\x04root\x12" + bytes([len(password)]) + password
    reply, headers = await grpc(farm, "AuthenticationService/Login", body)
    token = headers["authorization"]
    # LoginResponse{token=1, timeout_s=2}: 3600 = 0x90 0x1c as a varint
    assert reply == b"\x0a\x10" + token.encode() + b"\x10\x90\x1c"
    return token


async def test_sim_grpc_login_pause_resume_round_trip(farm: SimFarm) -> None:
    token = await grpc_login(farm)
    assert len(token) == 16
    assert (await grpc(farm, "ActionsService/PauseMining", token=token))[0] == b""
    assert mode(farm) is Mode.SLEEPING
    # already_paused=true; pyasic ignores it
    assert (await grpc(farm, "ActionsService/PauseMining", token=token))[0] == b"\x08\x01"
    assert (await grpc(farm, "ActionsService/ResumeMining", token=token))[0] == b""
    assert mode(farm) is Mode.MINING
    assert list(device(farm).commands) == ["pause", "resume"]
    # One token store behind both APIs: a gRPC token works on REST too (inferred).
    assert (await rest(farm, "GET", "/miner/stats", token=token))[0] == 200


async def test_sim_grpc_power_target_wire_format(farm: SimFarm) -> None:
    token = await grpc_login(farm)
    # SetPowerTargetRequest{save_action=SAVE_AND_FORCE_APPLY, power_target{watt=2500}}, the
    # bytes pyasic 0.79.0 sent in our experiment
    request = bytes.fromhex("0803 1203 08c413")
    reply, _ = await grpc(farm, "PerformanceService/SetPowerTarget", request, token=token)
    assert reply == bytes.fromhex("0a0308c413")
    reply, _ = await grpc(farm, "PerformanceService/GetActivePerformanceMode", token=token)
    assert reply == bytes.fromhex("1207 0a05 0a03 08c413")
    with pytest.raises(GRPCError, match="not in allowed range") as err:
        await grpc(farm, "PerformanceService/SetPowerTarget", b"\x12\x02\x08\x64", token=token)
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_sim_grpc_refuses_missing_tokens_and_bad_passwords(farm: SimFarm) -> None:
    with pytest.raises(GRPCError, match="Missing or invalid authentication token") as err:
        await grpc(farm, "ActionsService/PauseMining")
    assert err.value.status is Status.UNAUTHENTICATED
    with pytest.raises(GRPCError, match="Bad credentials"):
        await grpc_login(farm, b"wrong")
    reply, _ = await grpc(farm, "ApiVersionService/GetApiVersion", service="/braiins.bos.")
    assert reply == b"\x08\x01\x10\x07"  # 1.7.0 without a token
    await farm.set_fault("m0", Fault.EXPIRE_SESSIONS)
    token = await grpc_login(farm)
    with pytest.raises(GRPCError, match="Missing or invalid"):
        await grpc(farm, "ActionsService/PauseMining", token=token)
    assert mode(farm) is Mode.MINING


async def test_sim_grpc_wire_faults(farm: SimFarm) -> None:
    token = await grpc_login(farm)
    await farm.set_fault("m0", Fault.SLOW, slow_s=0.1)
    assert (await grpc(farm, "ActionsService/PauseMining", token=token))[0] == b""
    await farm.set_fault("m0", Fault.GARBAGE)
    reply, _ = await grpc(farm, "ActionsService/PauseMining", token=token)
    assert reply.startswith(b"\xff")  # field 31, wire type 7: no protobuf decoder takes it
    await farm.set_fault("m0", Fault.STALL)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(grpc(farm, "ActionsService/ResumeMining", token=token), 0.3)
    assert mode(farm) is Mode.SLEEPING


async def test_sim_grpc_reads_pyasic_needs(farm: SimFarm) -> None:
    token = await grpc_login(farm)
    details, _ = await grpc(farm, "MinerService/GetMinerDetails", token=token)
    assert b"2025-07-24-0-3c4b8a5f-25.07-plus" in details
    assert b"\x60\x02" in details  # status=12: NORMAL
    boards, _ = await grpc(farm, "MinerService/GetHashboards", token=token)
    assert boards.count(b"\x0a\x01") == 3  # three boards with ids "1".."3"
    for method in (
        "MinerService/GetMinerStats",
        "CoolingService/GetCoolingState",
        "ConfigurationService/GetMinerConfiguration",
        "PoolService/GetPoolGroups",
    ):
        reply, _ = await grpc(farm, method, token=token)
        assert reply


# -- 4028 -----------------------------------------------------------------------------------


async def test_sim_bosminer_api_on_4028(farm: SimFarm, clock: Time) -> None:
    async def cmd(command: str) -> cgminer_tcp.Reply:
        return await cgminer_tcp.request(host(farm), 4028, command, timeout_s=2, device="m0")

    version = await cmd("version")
    assert "BOSminer" in version["STATUS"][0]["Description"]  # how pyasic's factory tells
    assert (await cmd("devdetails"))["DEVDETAILS"][0]["Model"] == "Bitmain Antminer S19j Pro"
    joined = await cmd("tunerstatus+version+summary+devs")
    assert set(joined) == {"tunerstatus", "version", "summary", "devs", "id"}
    assert joined["summary"][0]["SUMMARY"][0]["MHS 1m"] > 100e6
    token = await login(farm)
    await rest(farm, "PUT", "/actions/pause", token=token)
    assert all(d["MHS 5s"] == 0 for d in (await cmd("devs"))["DEVS"])
    with pytest.raises(RejectedError, match="code 14"):
        await cmd("rm-rf")
