"""The Whatsminer drivers (API v2, API v3, and the one that chooses) against the simulator
over real TCP, through every fault mode; the crypto against the research's vectors; the
parsers against recorded replies."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from drivers.errors import (
    AuthError,
    DeviceTimeoutError,
    DriverError,
    ProtocolError,
    RejectedError,
    SessionBusyError,
    UnreachableError,
    UnsupportedError,
    VerificationError,
)
from drivers.miners.whatsminer import (
    ENTRIES,
    TOKEN_RENEW_S,
    TRAITS,
    WhatsminerMiner,
    WhatsminerV2Miner,
    WhatsminerV3Miner,
    dialect,
    firmware_date,
    parse_v2,
    parse_v3,
    v2_credentials,
    v2_decrypt,
    v2_encrypt,
    v3_token,
)
from drivers.miners.whatsminer.v3 import _mentions_auth
from drivers.registry import MinerRegistry
from drivers.transport import cgminer_tcp
from drivers.types import Capability, FanPause, MinerEndpoint, Mode
from sim.farm import SimFarm
from sim.faults import Fault
from sim.whatsminer import MAX_TOKENS, PREHEAT_S, WhatsminerDevice
from tests.unit.conftest import MakeFarm, Time

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "whatsminer"
V2_PORT = 14028
V3_PORT = 14433
RATED_W = 3400

Driver = WhatsminerV2Miner | WhatsminerV3Miner | WhatsminerMiner


@pytest.fixture
async def v2farm(make_farm: MakeFarm) -> SimFarm:
    return await make_farm(2, RATED_W, 34.0, driver="whatsminer-v2", port=V2_PORT)


@pytest.fixture
async def v3farm(make_farm: MakeFarm) -> SimFarm:
    return await make_farm(2, RATED_W, 29.0, driver="whatsminer-v3", port=V2_PORT, web_port=V3_PORT)


@pytest.fixture(params=["v2", "v3"])
async def farm(request: pytest.FixtureRequest, make_farm: MakeFarm) -> SimFarm:
    """A farm of each API's firmware, for tests that hold for both."""
    driver = "whatsminer-v2" if request.param == "v2" else "whatsminer-v3"
    return await make_farm(2, RATED_W, 29.0, driver=driver, port=V2_PORT, web_port=V3_PORT)


def endpoint(farm: SimFarm, miner: str, timeout_s: float, password: str | None) -> MinerEndpoint:
    spec = farm.miners[miner].spec
    return MinerEndpoint(
        miner, spec.host, spec.port, timeout_s, password=password, web_port=spec.web_port
    )


def driver(
    farm: SimFarm, miner: str = "m0", timeout_s: float = 0.5, password: str | None = None
) -> WhatsminerV2Miner | WhatsminerV3Miner:
    """The forced driver for the farm's firmware."""
    ep = endpoint(farm, miner, timeout_s, password)
    if farm.miners[miner].spec.driver == "whatsminer-v2":
        return WhatsminerV2Miner(ep)
    return WhatsminerV3Miner(ep)


def device(farm: SimFarm, miner: str = "m0") -> WhatsminerDevice:
    found = farm.miners[miner].device
    assert isinstance(found, WhatsminerDevice)
    return found


def mode(farm: SimFarm, miner: str = "m0") -> Mode:
    """The simulated miner's true mode (a call, so type checkers do not narrow it)."""
    return farm.miners[miner].physics.mode


def api(miner: WhatsminerMiner) -> str | None:
    return miner.api


def fixture(firmware: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / firmware / f"{name}.json").read_text())
    return loaded


# -- registration and crypto ---------------------------------------------------------------


def test_whatsminer_entries_register_with_ports_and_traits() -> None:
    registry = MinerRegistry()
    for entry in ENTRIES:
        registry.register(entry)
        assert entry.default_port == 4028
        assert entry.default_web_port == 4433
        assert entry.traits is TRAITS
        assert "restarts" in entry.summary
    assert registry.names() == ["whatsminer", "whatsminer-v2", "whatsminer-v3"]
    assert TRAITS.fans_when_asleep is FanPause.CONFIGURABLE
    assert TRAITS.ramp_down_s < TRAITS.ramp_up_s
    for entry in ENTRIES:
        miner = entry.factory(MinerEndpoint("x", "127.0.0.1", 4028, 1.0))
        assert miner.capabilities == {Capability.SLEEP, Capability.POWER_TARGET}


def test_whatsminer_v2_credentials_match_the_research_vectors() -> None:
    creds = v2_credentials("admin", "BQ5hoXV9", "YhTbhUdm", "7869")
    assert creds.host_passwd_md5 == "RxmaDUO33TS7O26yeMHZ81"
    assert creds.sign == "VigUx/NwA3kF2wDhMjLaU/"
    assert creds.key.hex() == "199e0a202039bb7b558db7a54697dca29cb278055b7e659a127fb844d5a2fbf6"
    tether = v2_credentials("admin", "5QAHiKMb", "kowEj187", "0000")
    assert (tether.host_passwd_md5, tether.sign) == (
        "x5JSSQzqF0lEACIGSL0Ld1",
        "FuAsr25h02Hee7J8zszS71",
    )


def test_whatsminer_v2_envelope_matches_the_bytes_pyasic_sends() -> None:
    key = v2_credentials("admin", "BQ5hoXV9", "YhTbhUdm", "7869").key
    plain = b'{"cmd": "power_off", "respbefore": "true", "token": "VigUx/NwA3kF2wDhMjLaU/"}'
    assert v2_encrypt(key, plain) == (
        "YJracrWpLn2XvqWuNiNqyg70K64pfivIJhwE32DXNCeyv4iYIDyJ6mJuwbGpytIytePyAqG9YCpK0THuFkWrUVof"
        "x0e3VtPvUFYaVjYKqvg="
    )
    assert v2_decrypt(key, v2_encrypt(key, plain)) == plain


def test_whatsminer_v2_decrypts_a_recorded_reply_and_tolerates_pkcs7() -> None:
    key = v2_credentials("admin", "BQ5hoXV9", "YhTbhUdm", "7869").key
    recorded = (
        "1ww+tNh5//HYOjcgatcGiMdwBdhLSm8+ZDfkoyFQ3GA0KoC1n/oosi34gHPtExquuvY5clFZAn+uAHUeYE2XGfIZ"
        "dvh87YTBj9hDmJW5oegIp6h3fPrsuJ+yf9rT3Rp7"
    )
    assert json.loads(v2_decrypt(key, recorded))["Msg"] == "API command OK"
    plain = b'{"STATUS": "S", "Msg": "API command OK"}'
    pkcs7 = plain + bytes([16 - len(plain) % 16]) * (16 - len(plain) % 16)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    sealed = base64.b64encode(encryptor.update(pkcs7) + encryptor.finalize()).decode()
    assert v2_decrypt(key, sealed) == plain
    with pytest.raises(ValueError, match="AES blocks"):
        v2_decrypt(key, base64.b64encode(b"short").decode())


def test_whatsminer_v3_token_and_firmware_dates() -> None:
    assert v3_token("set.miner.service", "super", "Abc123xy", 1759800000) == "Cg2iuKaj"
    assert firmware_date("20250915.16.Rel2") == 20250915
    assert firmware_date("'20190912.15.REL'") == 20190912
    assert firmware_date("unknown") is None
    assert firmware_date(None) is None


# -- the parsers against recorded replies --------------------------------------------------


def test_whatsminer_parse_v2_recorded_m30s_plus() -> None:
    fw = "20230911.12.Rel"
    state = parse_v2("m0", fixture(fw, "status"), fixture(fw, "summary"), fixture(fw, "edevs"))
    assert state.reading.mode is Mode.MINING
    assert state.reading.power_w == 3593
    assert state.reading.hashrate_ths == pytest.approx(86.361, abs=0.001)  # MHS 1m
    assert state.reading.board_temps_c == (80.0, 80.0, 80.0)
    assert state.reading.profile == "normal"
    assert state.power_limit_w == 3600
    assert state.power_pct is None  # this firmware does not report it
    assert state.fan_rpm == 4530
    off = parse_v2("m0", fixture(fw, "status_off"), fixture(fw, "summary"), fixture(fw, "edevs"))
    assert off.reading.mode is Mode.SLEEPING
    assert off.reading.hashrate_ths == 0.0


def test_whatsminer_parse_v2_old_status_generation() -> None:
    old = fixture("20190912.15.REL", "status")
    fw = "20230911.12.Rel"
    assert parse_v2("m0", old, fixture(fw, "summary"), fixture(fw, "edevs")).reading.mode is (
        Mode.MINING
    )
    old["Msg"]["btmineroff"] = "true"
    assert parse_v2("m0", old, fixture(fw, "summary"), fixture(fw, "edevs")).reading.mode is (
        Mode.SLEEPING
    )


def test_whatsminer_parse_v3_recorded_m50() -> None:
    fw = "20250915.16.Rel2"
    info, status, setting = (
        fixture(fw, "get.device.info"),
        fixture(fw, "get.miner.status"),
        fixture(fw, "get.miner.setting"),
    )
    state = parse_v3("m0", info, status, setting)
    assert state.reading.mode is Mode.MINING
    assert state.reading.power_w == 3573
    assert state.reading.hashrate_ths == pytest.approx(122.317)
    assert state.reading.board_temps_c == (61.25, 62.0, 60.75)
    assert state.reading.profile == "normal"
    assert state.power_limit_w == 3600
    assert state.power_pct == 100  # 0: no percent set
    stopped = parse_v3("m0", fixture(fw, "get.device.info_stopped"), status, setting)
    assert stopped.reading.mode is Mode.SLEEPING
    del status["msg"]["summary"]["board-temperature"]
    assert parse_v3("m0", info, status, setting).reading.board_temps_c == (75.42, 76.42, 77.42)


def test_whatsminer_parse_v3_wrong_section_shapes_are_protocol_errors() -> None:
    fw = "20250915.16.Rel2"
    info, status, setting = (
        fixture(fw, "get.device.info"),
        fixture(fw, "get.miner.status"),
        fixture(fw, "get.miner.setting"),
    )
    listed = {**status, "msg": {**status["msg"], "summary": []}}
    with pytest.raises(ProtocolError, match="unexpected reply layout"):
        parse_v3("m0", info, listed, setting)
    with pytest.raises(ProtocolError, match="unexpected reply layout"):
        parse_v3("m0", info, status, {**setting, "msg": "ok"})


@pytest.mark.parametrize(
    ("field", "value"),
    [("Power", "1e999"), ("Power", None), ("MHS 1m", "fast"), ("Power", -1)],
)
def test_whatsminer_parse_v2_rejects_absurd_values(field: str, value: object) -> None:
    fw = "20230911.12.Rel"
    summary = fixture(fw, "summary")
    summary["SUMMARY"][0][field] = value
    with pytest.raises(ProtocolError, match="m0: read: "):
        parse_v2("m0", fixture(fw, "status"), summary, fixture(fw, "edevs"))


def test_whatsminer_parse_v3_missing_sections_are_protocol_errors() -> None:
    fw = "20250915.16.Rel2"
    with pytest.raises(ProtocolError, match="unexpected reply layout"):
        parse_v3("m0", {"code": 0, "msg": {}}, fixture(fw, "get.miner.status"), {"msg": {}})


# -- both APIs against the simulator -------------------------------------------------------


async def test_whatsminer_probe_and_read(farm: SimFarm) -> None:
    miner = driver(farm)
    await miner.probe()
    assert miner.model == farm.miners["m0"].physics.model.name
    assert firmware_date(miner.firmware) is not None
    reading = await miner.read()
    assert reading.mode is Mode.MINING
    assert reading.power_w == RATED_W
    assert reading.hashrate_ths == pytest.approx(RATED_W / 29.0, rel=0.01)
    assert len(reading.board_temps_c) == 3


async def test_whatsminer_sleep_and_wake_are_verified(farm: SimFarm, clock: Time) -> None:
    miner = driver(farm)
    assert (await miner.sleep()).mode is Mode.SLEEPING
    assert mode(farm) is Mode.SLEEPING
    clock.now += 10
    asleep = await miner.read()
    assert asleep.power_w == farm.miners["m0"].physics.model.sleep_power_w
    assert asleep.hashrate_ths == 0.0
    assert (await miner.wake()).mode is Mode.MINING
    assert mode(farm) is Mode.MINING
    expected = (
        ["power_off", "power_on"]
        if isinstance(miner, WhatsminerV2Miner)
        else ["set.miner.service stop", "set.miner.service start"]
    )
    assert [c for c in device(farm).commands if c != "pre_power_on"] == expected


async def test_whatsminer_power_target_is_verified_without_a_restart(
    farm: SimFarm, clock: Time
) -> None:
    miner = driver(farm)
    reading = await miner.set_power_target(2720)  # 80 % of the 3400 W limit
    assert reading.mode is Mode.MINING
    assert device(farm).power_pct == 80
    clock.now += 30
    assert (await miner.read()).power_w == 2720
    assert (await miner.set_power_target(99_000)).mode is Mode.MINING  # back to 100 %
    assert device(farm).power_pct == 100
    with pytest.raises(RejectedError, match="invalid power target"):
        await miner.set_power_target(0)


async def test_whatsminer_power_limit_restarts_the_miner(farm: SimFarm, clock: Time) -> None:
    miner = driver(farm)
    reading = await miner.set_power_limit(3000)
    assert reading.mode is Mode.MINING
    assert reading.power_w < 100  # btminer restarted: only the control board draws
    clock.now += 60
    assert 100 < (await miner.read()).power_w < 3000  # the boards come back over minutes
    clock.now += 600
    assert (await miner.read()).power_w == 3000
    with pytest.raises(RejectedError):
        await miner.set_power_limit(RATED_W + 1)  # above the rated power


async def test_whatsminer_fans_while_asleep_are_set_and_checked(farm: SimFarm, clock: Time) -> None:
    miner = driver(farm)
    await miner.sleep()
    clock.now += 10
    await miner.set_fans_when_asleep(True)
    assert device(farm).poweroff_cool is True
    assert mode(farm) is Mode.SLEEPING
    await miner.set_fans_when_asleep(False)
    assert device(farm).poweroff_cool is False


async def test_whatsminer_has_no_named_profiles(farm: SimFarm) -> None:
    with pytest.raises(UnsupportedError, match="no named profiles"):
        await driver(farm).set_profile("low")


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault.REFUSE, UnreachableError, "connection refused"),
        (Fault.STALL, DeviceTimeoutError, "no complete reply within 0.5 s"),
        (Fault.GARBAGE, ProtocolError, None),
        (Fault.TRUNCATE, ProtocolError, None),
    ],
)
async def test_whatsminer_faults_raise_typed_errors(
    farm: SimFarm, fault: Fault, error: type[DriverError], message: str | None
) -> None:
    await farm.set_fault("m1", fault)
    for call in ("read", "sleep"):
        with pytest.raises(error, match=message) as err:
            await getattr(driver(farm, "m1"), call)()
        assert str(err.value).startswith("m1: ")
    await farm.set_fault("m1", Fault.NONE)
    assert (await driver(farm, "m1").read()).power_w == RATED_W  # recovers


@pytest.mark.parametrize("fault", [Fault.QUIRKS, Fault.NO_CLOSE])
async def test_whatsminer_survives_quirky_json_and_open_sockets(
    farm: SimFarm, fault: Fault
) -> None:
    # v2 replies are complete JSON objects and v3 frames carry their length: neither needs
    # the close to know a reply has ended.
    await farm.set_fault("m1", fault)
    miner = driver(farm, "m1", timeout_s=2.0)
    assert (await miner.read()).power_w == RATED_W
    assert (await miner.sleep()).mode is Mode.SLEEPING


async def test_whatsminer_slow_within_and_beyond_the_deadline(farm: SimFarm) -> None:
    await farm.set_fault("m1", Fault.SLOW, slow_s=0.05)
    assert (await driver(farm, "m1", timeout_s=2.0).read()).power_w == RATED_W
    await farm.set_fault("m1", Fault.SLOW, slow_s=1.0)
    with pytest.raises(DeviceTimeoutError, match="m1: "):
        await driver(farm, "m1").read()


async def test_whatsminer_v3_each_frame_has_its_own_deadline(v3farm: SimFarm) -> None:
    # A v3 read is several frames on one connection; each frame gets the deadline, as a
    # request of any other family does, so a slow but steady miner reads fine.
    await v3farm.set_fault("m1", Fault.SLOW, slow_s=0.3)
    assert (await driver(v3farm, "m1", timeout_s=0.5).read()).power_w == RATED_W


async def test_whatsminer_lying_miner_is_detected_by_read_back(farm: SimFarm) -> None:
    await farm.set_fault("m1", Fault.LIE)
    miner = driver(farm, "m1")
    with pytest.raises(VerificationError, match="acknowledged sleep but reads back mining") as err:
        await miner.sleep()
    assert err.value.kind == "lying"
    assert err.value.reading is not None
    assert err.value.reading.mode is Mode.MINING
    with pytest.raises(VerificationError, match="acknowledged set_power_target"):
        await miner.set_power_target(2000)
    assert not device(farm, "m1").commands


async def test_whatsminer_one_call_in_flight_per_miner(farm: SimFarm) -> None:
    await farm.set_fault("m0", Fault.SLOW, slow_s=0.05)
    miner = driver(farm, timeout_s=2.0)
    results = await asyncio.gather(miner.read(), miner.sleep(), miner.read())
    assert [r.mode for r in results] == [Mode.MINING, Mode.SLEEPING, Mode.SLEEPING]
    assert device(farm).peak_in_flight == 1


async def test_whatsminer_wrong_password_is_an_auth_error(farm: SimFarm) -> None:
    with pytest.raises(AuthError, match="password") as err:
        await driver(farm, password="not-the-password").sleep()
    assert not err.value.retryable
    assert mode(farm) is Mode.MINING


async def test_whatsminer_write_api_switched_off_is_an_auth_error(farm: SimFarm) -> None:
    device(farm).write_enabled = False
    with pytest.raises(AuthError, match="write API refused"):
        await driver(farm).sleep()
    assert (await driver(farm).read()).mode is Mode.MINING  # reads still work


# -- API v2 specifics ----------------------------------------------------------------------


async def test_whatsminer_v2_reuses_its_token(v2farm: SimFarm) -> None:
    miner = driver(v2farm)
    await miner.sleep()
    await miner.wake()
    await miner.sleep()
    assert v2farm.commands["get_token"] == 1
    assert len(device(v2farm).tokens) == 1


async def test_whatsminer_v2_reads_keep_a_token_ready_for_commands(v2farm: SimFarm) -> None:
    # A token costs an md5-crypt; thousands at a curtailment's start would delay the
    # fan-out, so reads fetch and renew it and commands find it ready.
    miner = WhatsminerV2Miner(endpoint(v2farm, "m0", 0.5, None))
    await miner.read()
    await miner.read()
    assert v2farm.commands["get_token"] == 1
    await miner.sleep()
    assert v2farm.commands["get_token"] == 1
    token = miner._token
    assert token is not None
    miner._token = replace(token, obtained_s=token.obtained_s - TOKEN_RENEW_S)
    await miner.read()
    assert v2farm.commands["get_token"] == 2
    assert (await miner.wake()).mode is Mode.MINING
    assert v2farm.commands["get_token"] == 2


async def test_whatsminer_v2_renews_an_expired_token(v2farm: SimFarm, clock: Time) -> None:
    miner = driver(v2farm)
    await miner.sleep()
    clock.now += 31 * 60  # the miner forgets the token after 30 minutes; ours is still fresh
    assert (await miner.wake()).mode is Mode.MINING
    assert v2farm.commands["get_token"] == 2
    assert v2farm.commands["power_on"] == 1


async def test_whatsminer_v2_expiring_tokens_renew_once_then_fail(v2farm: SimFarm) -> None:
    await v2farm.set_fault("m1", Fault.EXPIRE_SESSIONS)
    with pytest.raises(RejectedError, match="check token err, again with a fresh token") as err:
        await driver(v2farm, "m1").sleep()
    assert err.value.code == 135
    assert v2farm.commands["get_token"] == 2
    assert mode(v2farm, "m1") is Mode.MINING


async def test_whatsminer_v2_full_token_table_is_session_busy(v2farm: SimFarm, clock: Time) -> None:
    host = v2farm.miners["m0"].spec.host
    for _ in range(MAX_TOKENS):  # other clients take every slot
        await cgminer_tcp.request(host, V2_PORT, "get_token", timeout_s=1, device="other")
    with pytest.raises(SessionBusyError, match="token table is full") as err:
        await driver(v2farm).sleep()
    assert err.value.code == 136
    clock.now += 30 * 60 + 1  # their tokens expire
    assert (await driver(v2farm).sleep()).mode is Mode.SLEEPING


async def test_whatsminer_v2_power_off_without_an_answer_is_judged_by_read_back(
    v2farm: SimFarm,
) -> None:
    device(v2farm).answers_power_off = False  # as asic-rs saw live: acts, never answers
    assert (await driver(v2farm).sleep()).mode is Mode.SLEEPING
    assert device(v2farm).commands[-1] == "power_off"


@pytest.mark.parametrize("lying", [False, True])
async def test_whatsminer_v2_power_target_judged_by_draw_without_power_pct(
    v2farm: SimFarm, clock: Time, lying: bool
) -> None:
    original = device(v2farm).handle_v2

    def without_power_pct(request: object) -> Any:
        answer = original(request)
        if answer.name == "status" and answer.body is not None:
            reply = json.loads(answer.body)
            del reply["Msg"]["power_pct"]  # firmware that does not report it
            return type(answer)(answer.name, json.dumps(reply).encode())
        return answer

    device(v2farm).handle_v2 = without_power_pct  # type: ignore[method-assign]
    if lying:
        await v2farm.set_fault("m0", Fault.LIE)

    async def time_passes() -> None:
        while True:
            await asyncio.sleep(0.05)
            clock.now += 1.0

    ticker = asyncio.create_task(time_passes())
    try:
        if lying:
            with pytest.raises(VerificationError, match="set_power_target"):
                await driver(v2farm, timeout_s=1.0).set_power_target(1700)
        else:
            reading = await driver(v2farm, timeout_s=1.0).set_power_target(1700)
            assert reading.power_w < RATED_W
    finally:
        ticker.cancel()


async def test_whatsminer_v2_falls_back_when_joins_are_refused(v2farm: SimFarm) -> None:
    miner = WhatsminerV2Miner(endpoint(v2farm, "m0", 0.5, None))
    original = device(v2farm).handle_v2

    def no_joins(request: object) -> Any:
        if isinstance(request, dict) and "+" in str(request.get("cmd", "")):
            request = {"cmd": "summary+get_version"}  # a join this firmware refuses
        return original(request)

    device(v2farm).handle_v2 = no_joins  # type: ignore[method-assign]
    assert (await miner.read()).power_w == RATED_W
    assert miner._joined is False


# -- API v3 specifics ----------------------------------------------------------------------


async def test_whatsminer_v3_fetches_the_salt_once(v3farm: SimFarm) -> None:
    miner = driver(v3farm)
    await miner.sleep()
    await miner.wake()
    await miner.sleep()
    assert v3farm.commands["set.miner.service"] == 3
    assert v3farm.commands["get.device.info"] == 4  # one salt, three read-backs


async def test_whatsminer_v3_refetches_a_changed_salt(v3farm: SimFarm) -> None:
    miner = driver(v3farm)
    await miner.sleep()
    device(v3farm).salt = "Zz9Yy8Xx"  # btminer restarted with a new salt
    assert (await miner.wake()).mode is Mode.MINING


async def test_whatsminer_v3_expiring_salts_renew_once_then_fail(v3farm: SimFarm) -> None:
    await v3farm.set_fault("m1", Fault.EXPIRE_SESSIONS)
    with pytest.raises(AuthError, match="token refused again with a fresh salt"):
        await driver(v3farm, "m1").sleep()
    assert mode(v3farm, "m1") is Mode.MINING


# -- the driver that chooses ---------------------------------------------------------------


@pytest.mark.parametrize(("firmware", "expected"), [("whatsminer-v2", "v2"), ("whatsminer", "v3")])
async def test_whatsminer_auto_chooses_the_api_from_the_firmware_date(
    make_farm: MakeFarm, firmware: str, expected: str
) -> None:
    farm = await make_farm(1, RATED_W, 29.0, driver=firmware, port=V2_PORT, web_port=V3_PORT)
    miner = WhatsminerMiner(endpoint(farm, "m0", 1.0, None))
    assert api(miner) is None
    await miner.probe()
    assert api(miner) == expected
    assert miner.model == farm.miners["m0"].physics.model.name
    probed = farm.commands["get_version"]
    assert (await miner.sleep()).mode is Mode.SLEEPING
    assert (await miner.wake()).mode is Mode.MINING
    assert (await miner.set_power_target(3000)).mode is Mode.MINING
    assert farm.commands["get_version"] == probed  # chosen once, then kept
    if expected == "v3":
        assert device(farm).commands[0] == "set.miner.service stop"
        v3_server = farm.miners["m0"].servers[1]
        assert v3_server.requests > 0


async def test_whatsminer_auto_tries_api_v3_when_4028_is_closed(v3farm: SimFarm) -> None:
    await v3farm.miners["m0"].servers[0].stop()  # only the v2 port closed
    miner = WhatsminerMiner(endpoint(v3farm, "m0", 1.0, None))
    assert (await miner.read()).mode is Mode.MINING
    assert api(miner) == "v3"
    await v3farm.set_fault("m1", Fault.REFUSE)
    with pytest.raises(UnreachableError, match=f"m1: get_version: .*:{V2_PORT}"):
        await WhatsminerMiner(endpoint(v3farm, "m1", 1.0, None)).read()


async def test_whatsminer_auto_chooses_once_under_concurrency(v3farm: SimFarm) -> None:
    miner = WhatsminerMiner(endpoint(v3farm, "m0", 2.0, None))
    readings = await asyncio.gather(miner.read(), miner.read(), miner.read())
    assert {r.mode for r in readings} == {Mode.MINING}
    assert v3farm.commands["get_version"] == 1
    await miner.close()


def test_whatsminer_v3_only_a_failure_naming_the_token_is_an_auth_error() -> None:
    # v3 answers -1 for any failure; a wrong password shows as "invalid token". Calling
    # every -1 an auth error would send the operator to check a password that is right.
    assert _mentions_auth("invalid token")
    assert _mentions_auth("Permission denied")
    assert not _mentions_auth("power limit out of range")
    assert not _mentions_auth(None)


# -- a gentle wake: the vendor's pre-heat, for cold boards ---------------------------------

PREHEAT_POLL = {"v2": "pre_power_on", "v3": "set.miner.pre_power_on"}


@pytest.fixture(params=["v2", "v3"])
async def cold(request: pytest.FixtureRequest, make_farm: MakeFarm, clock: Time) -> SimFarm:
    """Two miners of each API's firmware asleep for an hour at -30 degC: cold boards."""
    driver_name = f"whatsminer-{request.param}"
    farm = await make_farm(
        2, RATED_W, 29.0, driver=driver_name, port=V2_PORT, web_port=V3_PORT,
        ambient_c={"c1": -30.0},
    )  # fmt: skip
    for miner in farm.miners:
        await driver(farm, miner).sleep()
    clock.now += 3600
    for miner in farm.miners:
        physics = farm.miners[miner].physics
        physics.advance(clock.now)
        assert max(physics.board_temps_c) < 0
    return farm


def api_of(farm: SimFarm) -> str:
    return "v2" if farm.miners["m0"].spec.driver == "whatsminer-v2" else "v3"


def warming(farm: SimFarm, clock: Time, monkeypatch: pytest.MonkeyPatch, miner: str) -> None:
    """Each pre-heat poll finds the simulated clock 15 s on, and the driver polls at once."""
    sim = device(farm, miner)
    original = sim._pre_power_on

    def later(now: float, **options: Any) -> dict[str, str]:
        del now
        clock.now += 15.0
        return original(clock.now, **options)

    monkeypatch.setattr(sim, "_pre_power_on", later)
    monkeypatch.setattr(dialect, "PREHEAT_POLL_S", 0.0)


def test_whatsminer_gentle_wake_is_the_pre_heat_at_full_power() -> None:
    assert TRAITS.gentle_fraction is None  # no low start: full power after the pre-heat
    assert TRAITS.gentle_extra_s > dialect.PREHEAT_WAIT_S > PREHEAT_S


async def test_whatsminer_gentle_wake_pre_heats_until_complete_then_starts(
    cold: SimFarm, clock: Time, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = api_of(cold)
    warming(cold, clock, monkeypatch, "m1")
    # A plain wake does not wait for the pre-heat: cold boards fail a full-power start.
    with pytest.raises(VerificationError, match="acknowledged wake but reads back sleeping"):
        await driver(cold, "m0").wake()
    assert cold.miners["m0"].physics.failed_cold_boots == 1
    polls = cold.commands[PREHEAT_POLL[api]]
    reading = await driver(cold, "m1").wake(gentle=True)
    assert reading.mode is Mode.MINING
    physics = cold.miners["m1"].physics
    assert (physics.mode, physics.failed_cold_boots) == (Mode.MINING, 0)
    # Polled 15 s apart until the minute's pre-heat was complete, then started.
    assert cold.commands[PREHEAT_POLL[api]] - polls == 5
    expected = {
        "v2": ["power_off", "pre_power_on", "power_on"],
        "v3": ["set.miner.service stop", "set.miner.pre_power_on", "set.miner.service start"],
    }
    assert list(device(cold, "m1").commands) == expected[api]


async def test_whatsminer_gentle_wake_never_starts_boards_still_warming(
    cold: SimFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dialect, "PREHEAT_WAIT_S", 0.3)  # the simulated clock stands still
    monkeypatch.setattr(dialect, "PREHEAT_POLL_S", 0.05)
    with pytest.raises(DeviceTimeoutError, match=r"pre-heat not complete within 0\.3 s") as err:
        await driver(cold, "m1").wake(gentle=True)
    assert err.value.op == "pre_power_on"
    assert cold.commands[PREHEAT_POLL[api_of(cold)]] >= 2
    assert len(device(cold, "m1").commands) == 2  # the sleep and the pre-heat: no start
    assert cold.miners["m1"].physics.mode is Mode.SLEEPING


async def test_whatsminer_gentle_wake_without_pre_power_on_is_a_plain_start(
    farm: SimFarm,
) -> None:
    farm.reset(Mode.SLEEPING)
    device(farm).has_pre_power_on = False  # firmware without the command
    miner = WhatsminerMiner(endpoint(farm, "m0", 0.5, None))  # the API it chooses
    assert (await miner.wake(gentle=True)).mode is Mode.MINING
    api = api_of(farm)
    assert farm.commands[PREHEAT_POLL[api]] == 1  # refused once, then not asked again
    await miner.sleep()
    assert (await miner.wake(gentle=True)).mode is Mode.MINING
    assert farm.commands[PREHEAT_POLL[api]] == 1
    starts = {"v2": "power_on", "v3": "set.miner.service start"}
    assert list(device(farm).commands).count(starts[api]) == 2
