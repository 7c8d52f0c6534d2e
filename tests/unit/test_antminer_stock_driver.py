"""The stock Antminer driver against its simulator over real sockets, through every fault
mode, and its parser against replies recorded from real units."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
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
from drivers.miners.antminer_stock import (
    ENTRY,
    SLEEP_POWER_W,
    AntminerStockMiner,
    parse_reading,
    runtime_mode_from_stats_cgi,
    write_body,
)
from drivers.registry import MinerRegistry
from drivers.transport import cgminer_tcp, http
from drivers.types import Capability, FanPause, MinerEndpoint, Mode
from sim.antminer_stock import (
    NONCE_TTL_S,
    READ_COMMANDS,
    RESTART_S,
    AntminerStockDevice,
)
from sim.farm import SimFarm
from sim.faults import Fault
from tests.unit.conftest import MakeFarm, Time

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "antminer_stock"
WEB_PORT = 18080
T = TypeVar("T")


@pytest.fixture(autouse=True)
async def _close_http_session() -> AsyncIterator[None]:
    yield
    await http.close_sessions()  # the loop's shared session, as the daemon does on shutdown


@pytest.fixture
async def farm(make_farm: MakeFarm) -> SimFarm:
    farm = await make_farm(
        2, 3250, 29.5, driver="antminer-stock", web_port=WEB_PORT, default_ambient_c=5.0
    )
    for miner in farm.miners:
        device(farm, miner).conf_reply_delay_s = 0.01
    return farm


def device(farm: SimFarm, miner: str = "m0") -> AntminerStockDevice:
    found = farm.miners[miner].device
    assert isinstance(found, AntminerStockDevice)
    return found


def driver(
    farm: SimFarm,
    miner: str = "m0",
    *,
    timeout_s: float = 0.5,
    password: str | None = None,
    verify_window_s: float = 2.0,
    write_timeout_s: float = 2.0,
) -> AntminerStockMiner:
    spec = farm.miners[miner].spec
    endpoint = MinerEndpoint(
        miner, spec.host, spec.port, timeout_s, password=password, web_port=spec.web_port
    )
    return AntminerStockMiner(
        endpoint,
        verify_window_s=verify_window_s,
        poll_interval_s=0.02,
        write_timeout_s=write_timeout_s,
    )


async def across_restart(
    farm: SimFarm, clock: Time, call: Awaitable[T], miner: str = "m0", *, changes: int = 1
) -> T:
    """Run a write while the simulated miner restarts bmminer: once it has carried out its
    `changes`-th mode change, let the driver meet the refused 4028 for a few polls, then
    move simulated time past the restart."""
    sim = device(farm, miner)

    async def restart_ends() -> None:
        while len(sim.commands) < changes:  # noqa: ASYNC110 - the simulator offers no event
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        clock.now += RESTART_S + 1

    result, _ = await asyncio.wait_for(asyncio.gather(call, restart_ends()), 10)
    return result


def fixture(build: str, name: str) -> Any:
    return json.loads((FIXTURES / build / f"{name}.json").read_text())


# -- registration and capabilities ---------------------------------------------------------


async def test_antminer_stock_entry_declares_sleep_only() -> None:
    registry = MinerRegistry()
    registry.register(ENTRY)
    entry = registry.get("Antminer-Stock")
    assert (entry.default_port, entry.default_web_port) == (4028, 80)
    assert entry.traits.fans_when_asleep is FanPause.LOW
    assert entry.traits.sleep_power_w == SLEEP_POWER_W
    miner = entry.factory(MinerEndpoint("x", "127.0.0.1", 4028, 1.0))
    assert miner.capabilities == frozenset({Capability.SLEEP})
    with pytest.raises(UnsupportedError, match="no power target") as err:
        await miner.set_power_target(2500)
    assert err.value.kind == "unsupported"
    with pytest.raises(UnsupportedError, match="no power profiles"):
        await miner.set_profile("low")


# -- reads -----------------------------------------------------------------------------------


async def test_antminer_stock_probe_and_read(farm: SimFarm) -> None:
    miner = driver(farm)
    await miner.probe()
    assert miner.model == "Antminer S19j Pro"
    assert miner.firmware == "Mon Dec 26 17:10:01 CST 2022"
    reading = await miner.read()
    assert reading.mode is Mode.MINING
    # No watts on stock firmware: ideal hashrate x the model's nameplate 29.5 J/TH.
    assert reading.power_w == pytest.approx(3250, rel=0.01)
    assert reading.hashrate_ths == pytest.approx(110.2, rel=0.01)
    truth = farm.miners["m0"].physics.board_temps_c
    assert reading.board_temps_c == tuple(float(round(t)) for t in truth)
    assert reading.profile == "normal"


async def test_antminer_stock_falls_back_when_joins_are_refused(farm: SimFarm) -> None:
    device(farm).joinable = frozenset()  # builds that answer a join with an error
    miner = driver(farm)
    assert (await miner.read()).mode is Mode.MINING
    assert miner._joined is False
    before = farm.miners["m0"].server.requests
    await miner.read()
    assert farm.miners["m0"].server.requests - before == 2


async def test_antminer_stock_denied_read_is_an_auth_error(farm: SimFarm) -> None:
    # 4028 answers E 45 to what api-groups do not list; on a unit whose groups were
    # narrowed, a person has to restore them: not something a retry fixes.
    sim = device(farm)
    sim.allowed = sim.joinable = READ_COMMANDS - {"stats"}
    with pytest.raises(AuthError, match="4028 denies 'stats' \\(code 45\\)") as err:
        await driver(farm).read()
    assert str(err.value).startswith("m0: read: ")
    assert not err.value.retryable


# -- writes ------------------------------------------------------------------------------------


async def test_antminer_stock_sleep_and_wake_are_verified_across_the_restart(
    farm: SimFarm, clock: Time
) -> None:
    miner = driver(farm)
    asleep = await across_restart(farm, clock, miner.sleep())
    assert asleep.mode is Mode.SLEEPING
    assert asleep.power_w == SLEEP_POWER_W
    assert asleep.profile == "sleep"
    sim = device(farm)
    assert sim.refused_connections > 0  # the driver met the restart gap and kept polling
    assert farm.miners["m0"].physics.mode is Mode.SLEEPING
    assert sim.conf["bitmain-work-mode"] == "1"
    clock.now += 60
    assert farm.power_w("m0") < 60
    awake = await across_restart(farm, clock, miner.wake(), changes=2)
    assert awake.mode is Mode.MINING
    assert awake.power_w == pytest.approx(3250, rel=0.01)  # counted at nameplate while booting
    assert list(sim.commands) == ["sleep", "normal"]
    assert all(body["miner-mode"] == body["bitmain-work-mode"] for body in sim.posts)


@pytest.mark.parametrize("honoured", ["miner-mode", "bitmain-work-mode"])
async def test_antminer_stock_works_whichever_key_the_build_honours(
    farm: SimFarm, clock: Time, honoured: str
) -> None:
    device(farm).mode_key = honoured
    assert (await across_restart(farm, clock, driver(farm).sleep())).mode is Mode.SLEEPING


async def test_antminer_stock_preserves_pools_and_fans_byte_for_byte(
    farm: SimFarm, clock: Time
) -> None:
    sim = device(farm)
    sim.conf["pools"] = [
        {"url": "stratum+tcp://eu.pool.example:3333", "user": "acct.w-01", "pass": 'p@ss,1 "q"'},
        {"url": "stratum+ssl://backup.example:443", "user": "acct.w-01", "pass": "x"},
        {"url": "stratum2+tcp://v2.example:3336/9bXi", "user": "Žana", "pass": ""},
    ]
    sim.conf["bitmain-fan-ctrl"] = True
    sim.conf["bitmain-fan-pwm"] = "80"
    before = json.dumps(sim.conf)
    miner = driver(farm)
    await across_restart(farm, clock, miner.sleep())
    asleep = json.loads(before) | {"bitmain-work-mode": "1"}
    assert json.dumps(sim.conf) == json.dumps(asleep)
    posted = sim.posts[-1]
    assert json.dumps(posted["pools"]) == json.dumps(json.loads(before)["pools"])
    assert (posted["bitmain-fan-ctrl"], posted["bitmain-fan-pwm"]) == (True, "80")
    assert (posted["miner-mode"], posted["bitmain-work-mode"]) == (1, 1)
    await across_restart(farm, clock, miner.wake(), changes=2)
    assert json.dumps(sim.conf) == before


async def test_antminer_stock_never_writes_when_the_config_read_fails(farm: SimFarm) -> None:
    sim = device(farm)
    pools = copy.deepcopy(sim.conf["pools"])
    sim.conf_error_status = 500
    with pytest.raises(RejectedError, match=r"get_miner_conf\.cgi answered HTTP 500") as err:
        await driver(farm).sleep()
    assert err.value.code == 500
    assert not sim.posts
    assert sim.conf["pools"] == pools


async def test_antminer_stock_never_writes_a_config_without_pools(farm: SimFarm) -> None:
    sim = device(farm)
    sim.conf["pools"] = [{"url": "", "user": "", "pass": ""}] * 3
    with pytest.raises(ProtocolError, match="lists no pool; not writing"):
        await driver(farm).sleep()
    del sim.conf["pools"]
    with pytest.raises(ProtocolError, match="no usable pools list; not writing"):
        await driver(farm).sleep()
    assert not sim.posts


async def test_antminer_stock_already_asleep_is_not_written_again(farm: SimFarm) -> None:
    farm.reset(Mode.SLEEPING)
    reading = await driver(farm).sleep()
    assert reading.mode is Mode.SLEEPING
    assert not device(farm).posts  # a save would restart bmminer for nothing


async def test_antminer_stock_wakes_a_low_power_unit_back_to_low_power(
    farm: SimFarm, clock: Time
) -> None:
    sim = device(farm)
    auth = aiohttp.DigestAuthMiddleware("root", "root")
    host = farm.miners["m0"].spec.host
    async with aiohttp.ClientSession() as web:
        target = f"http://{host}:{WEB_PORT}/cgi-bin/set_miner_conf.cgi"
        async with web.post(target, json={"miner-mode": 3}, middlewares=(auth,)) as reply:
            assert reply.status == 200
    clock.now += RESTART_S + 1
    miner = driver(farm)
    posts = len(sim.posts)
    assert (await miner.wake()).profile == "low"  # awake already: nothing written
    assert len(sim.posts) == posts
    await across_restart(farm, clock, miner.sleep(), changes=2)
    awake = await across_restart(farm, clock, miner.wake(), changes=3)
    assert awake.profile == "low"
    assert list(sim.commands) == ["low", "sleep", "low"]
    assert sim.conf["bitmain-work-mode"] == "3"


async def test_antminer_stock_gentle_wake_starts_in_low_power_then_steps_up(
    farm: SimFarm, clock: Time
) -> None:
    miner = driver(farm)
    await across_restart(farm, clock, miner.sleep())
    clock.now += 60
    sim = device(farm)
    warm = await across_restart(farm, clock, miner.wake(gentle=True), changes=2)
    assert warm.mode is Mode.MINING
    assert warm.profile == "low"
    assert (sim.posts[-1]["miner-mode"], sim.conf["bitmain-work-mode"]) == (3, "3")
    clock.now += 120
    assert farm.power_w("m0") == round(3250 * 0.7)  # the sim's low-power mode, as the traits say
    assert ENTRY.traits.gentle_fraction == 0.7
    # The supervisor steps it up with a plain wake: low-power is ours, not a person's.
    stepped = await across_restart(farm, clock, miner.wake(), changes=3)
    assert stepped.profile == "normal"
    assert list(sim.commands) == ["sleep", "low", "normal"]
    assert sim.conf["bitmain-work-mode"] == "0"
    clock.now += 120
    assert farm.power_w("m0") == 3250


async def test_antminer_stock_steps_up_a_gentle_wake_a_restart_forgot(
    farm: SimFarm, clock: Time
) -> None:
    """A restarted daemon has a new driver that never saw the gentle wake; the controller's
    journal remembers, and step_up brings the unit from low-power to normal."""
    await across_restart(farm, clock, driver(farm).sleep())
    await across_restart(farm, clock, driver(farm).wake(gentle=True), changes=2)
    after_restart = driver(farm)
    assert (await after_restart.wake()).profile == "low"  # a plain wake leaves it
    stepped = await across_restart(farm, clock, after_restart.wake(step_up=True), changes=3)
    assert stepped.profile == "normal"
    assert list(device(farm).commands) == ["sleep", "low", "normal"]


async def test_antminer_stock_sleep_while_warming_keeps_the_mode_to_come_back_to(
    farm: SimFarm, clock: Time
) -> None:
    miner = driver(farm)
    await across_restart(farm, clock, miner.sleep())
    await across_restart(farm, clock, miner.wake(gentle=True), changes=2)
    await across_restart(farm, clock, miner.sleep(), changes=3)  # a shed before the step-up
    awake = await across_restart(farm, clock, miner.wake(), changes=4)
    assert awake.profile == "normal"
    assert list(device(farm).commands) == ["sleep", "low", "sleep", "normal"]


async def test_antminer_stock_gentle_wake_leaves_a_running_unit_alone(farm: SimFarm) -> None:
    reading = await driver(farm).wake(gentle=True)
    assert (reading.mode, reading.profile) == (Mode.MINING, "normal")
    assert not device(farm).posts  # a save would restart its warm boards for nothing


async def test_antminer_stock_cold_boards_start_only_gently(
    make_farm: MakeFarm, clock: Time
) -> None:
    farm = await make_farm(
        2, 3250, 29.5, driver="antminer-stock", web_port=WEB_PORT, ambient_c={"c1": -35.0}
    )
    for miner in farm.miners:
        device(farm, miner).conf_reply_delay_s = 0.01
    plain, gentle = driver(farm, "m0"), driver(farm, "m1")
    await across_restart(farm, clock, plain.sleep(), "m0")
    await across_restart(farm, clock, gentle.sleep(), "m1")
    clock.now += 3600  # the boards cool to the container's -35 degC
    cold = [farm.miners[m].physics for m in ("m0", "m1")]
    for physics in cold:
        physics.advance(clock.now)
        assert max(physics.board_temps_c) < 0
    await across_restart(farm, clock, plain.wake(), "m0", changes=2)
    assert cold[0].failed_cold_boots == 1  # boards failed to initialise at full power
    assert cold[0].mode is Mode.SLEEPING
    warm = await across_restart(farm, clock, gentle.wake(gentle=True), "m1", changes=2)
    assert warm.profile == "low"
    assert cold[1].failed_cold_boots == 0
    assert cold[1].mode is Mode.MINING


async def test_antminer_stock_restart_outlasting_the_window_is_not_called_a_lie(
    farm: SimFarm,
) -> None:
    device(farm).restart_s = 3600.0  # 4028 never comes back within the window
    with pytest.raises(UnreachableError, match=r"mode change not confirmed within 0\.3 s"):
        await driver(farm, verify_window_s=0.3).sleep()


async def test_antminer_stock_write_acknowledged_late_is_still_verified(
    farm: SimFarm, clock: Time
) -> None:
    # Real units answer set_miner_conf 20-30 s after applying it; a reply that misses the
    # write deadline is not a failure if the runtime mode changed.
    device(farm).conf_reply_delay_s = 1.0
    miner = driver(farm, write_timeout_s=0.2)
    assert (await across_restart(farm, clock, miner.sleep())).mode is Mode.SLEEPING


async def test_antminer_stock_unanswered_write_without_effect_times_out(farm: SimFarm) -> None:
    await farm.set_fault("m1", Fault.LIE)
    device(farm, "m1").conf_reply_delay_s = 1.0
    miner = driver(farm, "m1", write_timeout_s=0.2, verify_window_s=0.2)
    with pytest.raises(DeviceTimeoutError, match=r"and no mode change within 0\.2 s") as err:
        await miner.sleep()
    assert err.value.kind == "timeout"


async def test_antminer_stock_lying_miner_is_caught_by_the_runtime_mode(farm: SimFarm) -> None:
    await farm.set_fault("m1", Fault.LIE)
    miner = driver(farm, "m1", verify_window_s=0.3)
    with pytest.raises(VerificationError, match="acknowledged sleep but reads back mining") as err:
        await miner.sleep()
    assert err.value.kind == "lying"
    assert err.value.reading is not None
    assert err.value.reading.mode is Mode.MINING
    assert err.value.reading.power_w > 3000
    # The stored config says "sleep": intent is not proof (asic-rs #245).
    assert device(farm, "m1").conf["bitmain-work-mode"] == "1"
    assert farm.miners["m1"].physics.mode is Mode.MINING


# -- digest auth -------------------------------------------------------------------------------


async def test_antminer_stock_wrong_password_is_an_auth_error(farm: SimFarm) -> None:
    miner = driver(farm, password="wrong")
    with pytest.raises(AuthError, match="refused the HTTP Digest credentials of 'root'") as err:
        await miner.sleep()
    assert err.value.kind == "auth"
    with pytest.raises(AuthError):
        await miner.probe()
    assert not device(farm).posts


async def test_antminer_stock_uses_the_configured_password(make_farm: MakeFarm) -> None:
    farm = await make_farm(1, 3250, 29.5, driver="antminer-stock", web_port=WEB_PORT, password="s3")
    await driver(farm, password="s3").probe()
    with pytest.raises(AuthError):
        await driver(farm).probe()  # the default root/root no longer works


async def test_antminer_stock_renews_an_expired_nonce(farm: SimFarm, clock: Time) -> None:
    sim = device(farm)
    miner = driver(farm)
    await miner.probe()
    assert sim.challenges == 1
    await miner.probe()
    assert sim.challenges == 1  # the nonce is reused, answered pre-emptively
    clock.now += NONCE_TTL_S + 1
    await miner.probe()  # stale nonce: 401, then the middleware answers the new challenge
    assert sim.challenges == 2


async def test_antminer_stock_nonces_expiring_at_once_fail_after_one_renewal(
    farm: SimFarm,
) -> None:
    await farm.set_fault("m1", Fault.EXPIRE_SESSIONS)
    with pytest.raises(RejectedError, match="nonce expired again right after renewal") as err:
        await driver(farm, "m1").sleep()
    assert err.value.code == 401
    assert not device(farm, "m1").posts


# -- fault modes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault.REFUSE, UnreachableError, "connection refused"),
        (Fault.STALL, DeviceTimeoutError, "no complete reply within 0.5 s"),
        (Fault.GARBAGE, ProtocolError, "unparseable reply"),
        (Fault.TRUNCATE, ProtocolError, "unparseable reply"),
    ],
)
async def test_antminer_stock_read_faults_raise_typed_errors(
    farm: SimFarm, fault: Fault, error: type[Exception], message: str
) -> None:
    await farm.set_fault("m1", fault)
    with pytest.raises(error, match=message) as err:
        await driver(farm, "m1").read()
    assert str(err.value).startswith("m1: ")
    await farm.set_fault("m1", Fault.NONE)
    assert (await driver(farm, "m1").read()).mode is Mode.MINING


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault.REFUSE, UnreachableError, "18080"),
        (Fault.STALL, DeviceTimeoutError, "no complete reply within 0.5 s"),
        (Fault.GARBAGE, ProtocolError, "unparseable reply"),
        (Fault.TRUNCATE, ProtocolError, "connection broke mid-reply"),
        # A chunked reply whose last chunk never comes cannot be known to be whole.
        (Fault.NO_CLOSE, DeviceTimeoutError, "no complete reply within 0.5 s"),
    ],
)
async def test_antminer_stock_web_faults_raise_typed_errors_and_write_nothing(
    farm: SimFarm, fault: Fault, error: type[Exception], message: str
) -> None:
    await farm.miners["m1"].servers[1].set_fault(fault)  # the CGI alone; 4028 answers
    with pytest.raises(error, match=message) as err:
        await driver(farm, "m1").sleep()
    assert str(err.value).startswith("m1: sleep: ")
    assert not device(farm, "m1").posts
    assert farm.miners["m1"].physics.mode is Mode.MINING


async def test_antminer_stock_survives_quirky_json_on_both_endpoints(
    farm: SimFarm, clock: Time
) -> None:
    await farm.set_fault("m1", Fault.QUIRKS)
    miner = driver(farm, "m1")
    assert (await miner.read()).mode is Mode.MINING
    assert (await across_restart(farm, clock, miner.sleep(), "m1")).mode is Mode.SLEEPING


async def test_antminer_stock_takes_a_complete_rpc_reply_that_is_never_closed(
    farm: SimFarm,
) -> None:
    await farm.miners["m1"].servers[0].set_fault(Fault.NO_CLOSE)  # 4028 only
    assert (await driver(farm, "m1", timeout_s=2.0).read()).mode is Mode.MINING


async def test_antminer_stock_slow_device_within_and_beyond_the_deadline(
    farm: SimFarm, clock: Time
) -> None:
    await farm.set_fault("m1", Fault.SLOW, slow_s=0.1)
    miner = driver(farm, "m1")
    assert (await miner.read()).mode is Mode.MINING
    assert (await across_restart(farm, clock, miner.sleep(), "m1")).mode is Mode.SLEEPING
    await farm.set_fault("m1", Fault.SLOW, slow_s=1.0)
    with pytest.raises(DeviceTimeoutError, match=r"^m1: "):
        await miner.read()


async def test_antminer_stock_one_call_in_flight_per_miner(farm: SimFarm, clock: Time) -> None:
    await farm.set_fault("m0", Fault.SLOW, slow_s=0.05)
    miner = driver(farm, timeout_s=2.0)
    calls = asyncio.gather(miner.read(), miner.sleep(), miner.read())
    results = await across_restart(farm, clock, calls)
    assert [r.mode for r in results] == [Mode.MINING, Mode.SLEEPING, Mode.SLEEPING]
    assert device(farm).peak_in_flight == 1  # across 4028 and the CGI together


# -- the parser, on replies recorded from real units -------------------------------------------


def test_parse_s21_xp_hyd_capture() -> None:
    stats = fixture("s21xphyd_71.0.1.3_2026-01-08", "rpc_stats")
    reading, rpc_mode = parse_reading(stats, None, device="x")
    assert rpc_mode == 2  # HEM: mining
    assert reading.mode is Mode.MINING
    assert reading.profile == "high"
    assert reading.hashrate_ths == pytest.approx(483.979)
    assert reading.board_temps_c == (52.0, 51.0, 51.0)  # the absent 4th chain is skipped
    assert reading.power_w == round(473.0 * 12.0)  # 473 TH ideal x 12 J/TH nameplate


def test_parse_s23_hyd_capture_estimate_matches_its_reported_watts() -> None:
    build = "s23hyd_platform-aml_2026-06-26"
    reading, rpc_mode = parse_reading(fixture(build, "rpc_stats"), None, device="x")
    assert (rpc_mode, reading.mode, reading.profile) == (0, Mode.MINING, "normal")
    # This build reports watts on stats.cgi only; the RPC-side estimate is within 1 %.
    watt = fixture(build, "web_stats")["STATS"][0]["watt"]
    assert reading.power_w == pytest.approx(watt, rel=0.01)
    assert runtime_mode_from_stats_cgi(fixture(build, "web_stats"), device="x", op="t") is None


def test_parse_older_bmminer_layout_without_a_mode_field() -> None:
    stats = fixture("s9hiveon_30.0.1.3_2021-07-09", "rpc_stats")
    reading, rpc_mode = parse_reading(stats, None, device="x")
    assert rpc_mode is None
    assert reading.mode is Mode.MINING  # hashing, and no mode field says otherwise
    assert reading.hashrate_ths == pytest.approx(5.905, abs=0.001)  # "GHS 5s" is a string
    assert reading.power_w == 457  # the build's own chain_power "456.78 (AB)"
    assert reading.board_temps_c == (53.0, 52.0)  # temp6, temp7 of temp1..16


def test_parse_sleeping_unit_and_summary_hashrate() -> None:
    stats = fixture("s21xphyd_71.0.1.3_2026-01-08", "rpc_stats")
    stats["STATS"][1]["Mode"] = 1
    summary = fixture("s21_uart_trans.1.3_2024-07-11", "rpc_summary")
    summary["SUMMARY"][0]["GHS 5s"] = "0.00"
    reading, _ = parse_reading(stats, summary, device="x")
    assert (reading.mode, reading.power_w, reading.hashrate_ths) == (
        Mode.SLEEPING,
        SLEEP_POWER_W,
        0.0,
    )
    awake, _ = parse_reading(
        stats, fixture("s21_uart_trans.1.3_2024-07-11", "rpc_summary"), device="x", web_mode=0
    )
    assert awake.mode is Mode.MINING  # stats.cgi, the stronger source, says mining
    assert awake.hashrate_ths == pytest.approx(203.007)


@pytest.mark.parametrize(
    ("key", "value"),
    [("GHS 5s", "nan"), ("total_rateideal", 1e999), ("GHS 5s", None), ("GHS 5s", True)],
)
def test_parse_absurd_values_are_protocol_errors(key: str, value: object) -> None:
    stats = fixture("s21xphyd_71.0.1.3_2026-01-08", "rpc_stats")
    stats["STATS"][1][key] = value
    with pytest.raises(ProtocolError, match="x: read: unexpected reply layout"):
        parse_reading(stats, None, device="x")


def test_stats_cgi_runtime_mode() -> None:
    body = fixture("s21_uart_trans.1.3_2024-07-11", "web_stats")
    assert runtime_mode_from_stats_cgi(body, device="x", op="t") is None  # this build has none
    body["STATS"][0]["miner-mode"] = 1
    assert runtime_mode_from_stats_cgi(body, device="x", op="t") == 1
    body["STATS"] = []  # while bmminer restarts
    assert runtime_mode_from_stats_cgi(body, device="x", op="t") is None
    with pytest.raises(ProtocolError, match=r"unexpected stats\.cgi layout"):
        runtime_mode_from_stats_cgi(["not", "an", "object"], device="x", op="t")


def test_write_body_from_a_recorded_config() -> None:
    conf = fixture("s21_uart_trans.1.3_2024-07-11", "web_get_miner_conf")
    body = write_body(conf, 1, device="x", op="sleep")
    assert body == conf | {"freq-level": "100", "miner-mode": 1, "bitmain-work-mode": 1}
    assert json.dumps(body["pools"]) == json.dumps(conf["pools"])
    conf["bitmain-freq-level"] = ""  # builds that never set a level
    assert write_body(conf, 0, device="x", op="wake")["freq-level"] == "100"


def test_recorded_access_denied_is_a_rejection_with_code_45() -> None:
    raw = (FIXTURES / "s19jpro_hiveon_4.11.1_2024-04-19" / "rpc_devdetails.json").read_bytes()
    reply = cgminer_tcp.decode(raw + b"\x00", device="x", op="devdetails")
    with pytest.raises(RejectedError, match="Access denied to 'devdetails' command") as err:
        cgminer_tcp.check_status(reply, device="x", op="devdetails")
    assert err.value.code == 45
