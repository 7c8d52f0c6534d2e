"""Stock Bitmain Antminer firmware (bmminer/cgminer): reads on 4028, writes on the web CGI.

4028 is read-only on stock firmware: `api-allow "A:0/0,W:*"` puts every client in group A,
which may run only stats, pools, devs, summary and version (anything else is E 45). Sleep
and wake therefore go through lighttpd's CGI behind HTTP Digest: read the whole config,
write it back with the work mode changed. Saving restarts the mining process, so the
reply takes 20-30 s on real units, 4028 refuses connections for a while, and the stored
config is only intent (asic-rs #245: it can say "sleep" while the boards hash on). A write
is proven only when the restarted process reports the new mode: stats.cgi `miner-mode`
and RPC stats `Mode`, polled for `verify_window_s`.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import aiohttp

from drivers.errors import (
    AuthError,
    DeviceTimeoutError,
    DriverError,
    ProtocolError,
    RejectedError,
    UnreachableError,
    UnsupportedError,
    VerificationError,
)
from drivers.lacking import Lacking
from drivers.transport import cgminer_tcp, http
from drivers.types import (
    Capability,
    DriverTraits,
    FanPause,
    MinerDriverEntry,
    MinerEndpoint,
    MinerReading,
    Mode,
)

DEFAULT_USER = "root"  # the only web user on stock firmware
DEFAULT_PASSWORD = "root"  # noqa: S105 - Bitmain's published default, overridable per miner
DEFAULT_WEB_PORT = 80

CODE_INVALID_COMMAND = 14  # a join the firmware does not support
CODE_ACCESS_DENIED = 45  # the stock api-groups refuse the command
READ_PARTS = ("summary", "stats")
# A reading needs the hashrate: the mode where a build reports none, and the power estimate.
# Both 4028 reads carry it (stats per board, with the work mode and temperatures), so a
# build without one is read from the other; only a build without both is unreadable.
OPTIONAL_READS = {
    "summary": "the hashrate comes from stats",
    "stats": "readings carry no board temperatures (they count as cold); the work mode "
    "comes from stats.cgi, else from hashing",
}
# Sleep and wake read the whole config and write it back: a build without either CGI
# cannot be put to sleep over its API (its PDU outlet still can).
WRITE_CGIS = ("/cgi-bin/get_miner_conf.cgi", "/cgi-bin/set_miner_conf.cgi")

MODE_NORMAL = 0
MODE_SLEEP = 1
MODE_HIGH = 2  # HEM on S19k Pro; "Mode 2" on an S21 XP Hyd
MODE_LOW = 3  # low-power mode on some S19 Pro / S19j Pro builds
MODE_NAMES = {MODE_NORMAL: "normal", MODE_SLEEP: "sleep", MODE_HIGH: "high", MODE_LOW: "low"}

# set_miner_conf answers only after restarting bmminer: ~21 s on an S19j Pro (Dec 2022
# build); the S17's CGI sleeps 30 s before replying.
WRITE_TIMEOUT_S = 40.0
# After the reply, how long the new process may take to report the new mode (Tether's
# notes: mode changes take 10-20 s, the device may be unresponsive meanwhile).
VERIFY_WINDOW_S = 60.0
POLL_INTERVAL_S = 2.0  # a verification poll is 2-3 requests to a small ARM control board

# Stock sleep keeps the control board up and the fans at ~960 rpm (hass-miner #424); the
# residual is not reported anywhere, so this is a deliberately high estimate.
SLEEP_POWER_W = 60
TRAITS = DriverTraits(
    sleep_power_w=SLEEP_POWER_W,
    ramp_down_s=30.0,  # the restart stops hashing; the draw settles within tens of seconds
    ramp_up_s=90.0,  # the new process re-initialises every board before full hashrate
    fans_when_asleep=FanPause.LOW,
    # The write's reply after the restart, then the verification window and its last
    # poll's pause; the reads around them have their own request deadlines.
    command_budget_s=WRITE_TIMEOUT_S + VERIFY_WINDOW_S + POLL_INTERVAL_S,
    reports_power=False,  # see NOMINAL_J_TH
    # A gentle wake starts in the low-power work mode (0.7 of normal draw, hass-miner #525)
    # with the same requests as a plain wake; a later plain wake steps it up.
    gentle_fraction=0.70,
)

# Stock firmware reports no watts (pyasic: wattage None; Tether: "S19XP ❌"). Mining power
# is estimated as the unit's ideal hashrate times its model's nameplate efficiency, most
# specific name first. An unknown model counts at S19-class efficiency: over-estimating
# is the safe side, since the planner trusts readings.
NOMINAL_J_TH: tuple[tuple[str, float], ...] = (
    ("S23 HYD", 9.5),
    ("S21 XP HYD", 12.0),
    ("S21 XP", 13.5),
    ("S21+ HYD", 15.0),
    ("S21 PRO", 15.0),
    ("S21 HYD", 16.0),
    ("S21+", 16.5),
    ("S21", 17.5),
    ("S19 XP HYD", 20.8),
    ("S19 XP", 21.5),
    ("S19K PRO", 23.0),
    ("S19 PRO HYD", 27.5),
    ("S19J PRO", 29.5),
    ("S19 PRO", 29.5),
    ("S19", 34.5),
    ("S17", 45.0),
    ("S9", 98.0),
)
UNKNOWN_MODEL_J_TH = 34.5
RATE_UNITS_TH = {"MH": 1e-6, "GH": 1e-3, "TH": 1.0, "PH": 1e3}

_PARSE_ERRORS = (KeyError, TypeError, ValueError, IndexError, OverflowError)


@dataclass(frozen=True, slots=True)
class Observation:
    """One look at the miner: the reading and each runtime mode source (None: not given)."""

    reading: MinerReading
    rpc_mode: int | None  # RPC stats STATS[1].Mode
    web_mode: int | None  # stats.cgi STATS[0]["miner-mode"]


class AntminerStockMiner:
    """One stock Antminer. At most one call is in flight at a time."""

    def __init__(
        self,
        endpoint: MinerEndpoint,
        *,
        verify_window_s: float = VERIFY_WINDOW_S,
        poll_interval_s: float = POLL_INTERVAL_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self._ep = endpoint
        self._lock = asyncio.Lock()
        self._verify_window_s = verify_window_s
        self._poll_interval_s = poll_interval_s
        self._write_timeout_s = write_timeout_s
        self._user = endpoint.username or DEFAULT_USER
        # One middleware per miner: it keeps the last challenge and answers the next request
        # pre-emptively (nonce count + 1), so only the first call or an expired nonce costs
        # a 401 round trip. It is scoped to this miner's origin.
        self._auth = aiohttp.DigestAuthMiddleware(self._user, endpoint.password or DEFAULT_PASSWORD)
        self._base = http.origin(endpoint.host, endpoint.web_port or DEFAULT_WEB_PORT)
        self._joined = True  # bmminer-mix joins "a+b"; some builds answer E 14 instead
        self.lacking = Lacking(endpoint.miner_id)  # commands, CGIs and fields it lacks
        self._wake_mode = MODE_NORMAL  # the mode sleep interrupted (a HEM or low unit stays so)
        self._warming = False  # runs low-power because a gentle wake chose it, not a person
        self.firmware: str | None = None
        self.model: str | None = None

    @property
    def miner_id(self) -> str:
        return self._ep.miner_id

    @property
    def capabilities(self) -> frozenset[Capability]:
        # No power target: stock firmware has only work modes, and the low-power mode's
        # draw is neither documented nor reported, so a watt target could not be verified.
        if any(cgi in self.lacking for cgi in WRITE_CGIS):
            return frozenset()
        return frozenset({Capability.SLEEP})

    async def probe(self) -> None:
        """Confirm stock Antminer firmware on 4028 and that the CGI accepts our credentials."""
        async with self._lock:
            reply = await self._rpc("version", "probe")
            try:
                version = cgminer_tcp.section(reply, "VERSION", device=self.miner_id, op="probe")[0]
                model = str(version["Type"])
                foreign = any(k in version for k in ("LUXminer", "BOSminer", "BOSer"))
            except (*_PARSE_ERRORS, ProtocolError):
                raise ProtocolError(self.miner_id, "probe", "no VERSION in the reply") from None
            if foreign or not model.lower().startswith("antminer"):
                raise UnsupportedError(
                    self.miner_id, "probe", f"not stock Antminer firmware ({model!r})"
                )
            self.model = model
            self.firmware = str(version.get("CompileTime", version.get("Miner", "")))
            try:
                info = await self._web("GET", "get_system_info", "probe")
            except UnsupportedError:
                # The 404 came from behind the Digest auth: the credentials are good.
                self.lacking.learn("/cgi-bin/get_system_info.cgi", "the probe skips it")
                return
            if not isinstance(info, dict) or "minertype" not in info:
                raise ProtocolError(self.miner_id, "probe", "get_system_info has no minertype")

    async def read(self) -> MinerReading:
        async with self._lock:
            reading, _ = await self._read_rpc("read")
            return reading

    async def sleep(self) -> MinerReading:
        async with self._lock:
            reading, _ = await self._set_mode(MODE_SLEEP, "sleep")
            self._warming = False  # the mode to come back to is still the one before
            return reading

    async def wake(self, *, gentle: bool = False, step_up: bool = False) -> MinerReading:
        """Back to the mode sleep interrupted; gentle: into low-power mode instead (a unit
        already awake is left alone: its boards are warm, and a save restarts bmminer)."""
        # A plain wake after a gentle one steps the unit up from low-power. Otherwise a unit
        # running low-power counts as awake: a person who chose low-power (a weak circuit, a
        # hot row) keeps it, and our sleep and wake bring it back to low-power. After a
        # restart this driver has forgotten that we chose it; the controller remembers
        # (its journal) and says so with step_up.
        async with self._lock:
            if gentle:
                reading, wrote = await self._set_mode(MODE_LOW, "wake", exact=True, warm_ok=True)
                self._warming |= wrote
                return reading
            exact = self._warming or step_up
            target = MODE_NORMAL if step_up and not self._warming else self._wake_mode
            reading, _ = await self._set_mode(target, "wake", exact=exact)
            self._warming = False
            return reading

    async def set_profile(self, profile: str) -> MinerReading:
        raise UnsupportedError(
            self.miner_id, "set_profile", f"stock firmware has no power profiles ({profile!r})"
        )

    async def set_power_target(self, watts: int) -> MinerReading:
        raise UnsupportedError(
            self.miner_id, "set_power_target", f"stock firmware has no power target ({watts} W)"
        )

    async def reclaim(self) -> None:
        """Nothing a dead process could have left held: the firmware has no exclusive
        write session."""

    async def close(self) -> None:
        """Nothing is held: the HTTP session is shared and closed by the daemon."""

    # -- the write -------------------------------------------------------------------------

    async def _set_mode(
        self, target: int, op: str, *, exact: bool = False, warm_ok: bool = False
    ) -> tuple[MinerReading, bool]:
        """Save `target` and verify it runs; the read-back, and whether a save was sent.

        Not `exact`: any awake mode satisfies a wake target. `warm_ok`: a unit already
        awake in any mode is left as it is."""
        before = await self._observe(op)
        conf = await self._write_cgi("GET", "get_miner_conf", op)
        if _reached(before, target, exact=exact) and _stored_agrees(conf, target, exact=exact):
            # Already there (not exact: a low-power or HEM unit counts as awake): a save
            # would restart bmminer for nothing.
            return before.reading, False
        if warm_ok and _reached(before, MODE_NORMAL) and _stored_agrees(conf, MODE_NORMAL):
            return before.reading, False
        body = write_body(conf, target, device=self.miner_id, op=op)  # raises before writing
        running = before.web_mode if before.web_mode is not None else before.rpc_mode
        ours = self._warming and running == MODE_LOW  # a gentle wake's mode, not a choice
        if target == MODE_SLEEP and running in (MODE_NORMAL, MODE_HIGH, MODE_LOW) and not ours:
            self._wake_mode = running
        unacked: DeviceTimeoutError | None = None
        try:
            # The reply waits out the restart (20-30 s): not a place at the admission gate.
            ack = await self._write_cgi(
                "POST",
                "set_miner_conf",
                op,
                json_body=body,
                timeout_s=self._write_timeout_s,
                admit=False,
            )
        except DeviceTimeoutError as err:
            unacked = err  # the reply comes after the restart; the save may well have landed
        else:
            _check_ack(ack, device=self.miner_id, op=op)
        return await self._verify(op, target, unacked, exact=exact), True

    async def _verify(
        self, op: str, target: int, unacked: DeviceTimeoutError | None, *, exact: bool
    ) -> MinerReading:
        """Poll until the running process reports `target`, tolerating the restart gap."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._verify_window_s
        seen: Observation | None = None
        failure: DriverError | None = None  # the last poll's, if it failed
        while True:
            try:
                seen = await self._observe(op)
            except (UnreachableError, DeviceTimeoutError, ProtocolError, RejectedError) as err:
                failure = err  # 4028 refuses and the CGIs are empty while bmminer restarts
            else:
                failure = None
                if _reached(seen, target, exact=exact):
                    return seen.reading
            if loop.time() >= deadline:
                break
            await asyncio.sleep(self._poll_interval_s)
        window = f"{self._verify_window_s:g} s"
        if unacked is not None:
            raise DeviceTimeoutError(
                self.miner_id,
                op,
                f"set_miner_conf: {unacked.detail}, and no mode change within {window}",
            )
        if failure is not None:
            # Still restarting (or gone) when the window closed: not proof of a lie.
            raise type(failure)(
                self.miner_id, op, f"mode change not confirmed within {window}: {failure.detail}"
            )
        assert seen is not None  # the last poll succeeded
        reading = seen.reading
        raise VerificationError(
            self.miner_id,
            op,
            f"acknowledged {op} but reads back {reading.mode.value} "
            f"(work mode {_describe(seen)}) after {window}",
            reading,
        )

    # -- reads -----------------------------------------------------------------------------

    async def _observe(self, op: str) -> Observation:
        web_mode = await self._runtime_mode(op)
        reading, rpc_mode = await self._read_rpc(op, web_mode)
        return Observation(reading, rpc_mode, web_mode)

    async def _read_rpc(
        self, op: str, web_mode: int | None = None
    ) -> tuple[MinerReading, int | None]:
        parts = self.lacking.filter(READ_PARTS)
        if self._joined and len(parts) > 1:
            try:
                answers = await cgminer_tcp.request_parts(
                    self._ep.host,
                    self._ep.port,
                    parts,
                    timeout_s=self._ep.timeout_s,
                    device=self.miner_id,
                )
            except RejectedError as err:
                if err.code not in (CODE_INVALID_COMMAND, CODE_ACCESS_DENIED):
                    raise
                self._joined = False  # this build does not join: one command at a time
            else:
                replies = {}
                for part, answer in answers.items():
                    if not isinstance(answer, RejectedError):
                        replies[part] = answer
                    elif answer.code == CODE_ACCESS_DENIED:
                        self._joined = False  # asked alone, a denied read is an AuthError
                        return await self._read_rpc(op, web_mode)
                    else:
                        self._lacks(part, answer, op)
                return self._parse(replies, web_mode, op)
        replies = {}
        for part in parts:
            try:
                replies[part] = await self._rpc(part, op)
            except RejectedError as err:
                self._lacks(part, err, op)
        return self._parse(replies, web_mode, op)

    def _lacks(self, part: str, err: RejectedError, op: str) -> None:
        """A 4028 read refused: learnt if the build lacks it and has the other, else raised."""
        if err.code != CODE_INVALID_COMMAND:
            raise err
        self.lacking.learn(part, OPTIONAL_READS[part])
        if all(p in self.lacking for p in READ_PARTS):
            raise self.lacking.essential("summary and stats", op, "every reading") from None

    def _parse(
        self, parts: dict[str, cgminer_tcp.Reply], web_mode: int | None, op: str
    ) -> tuple[MinerReading, int | None]:
        stats = parts.get("stats")
        reading, rpc_mode = parse_reading(
            stats,
            parts.get("summary"),
            device=self.miner_id,
            op=op,
            model=self.model,
            web_mode=web_mode,
        )
        if rpc_mode is None and stats is not None and _board_lacks_mode(stats):
            self.lacking.learn("stats:Mode", "the work mode comes from stats.cgi, else hashing")
        return reading, rpc_mode

    async def _runtime_mode(self, op: str) -> int | None:
        """stats.cgi's `miner-mode`: None while bmminer restarts or where the build lacks it."""
        path = "/cgi-bin/stats.cgi"
        if path in self.lacking:
            return None
        try:
            body = await self._web("GET", "stats", op)
        except UnsupportedError:
            self.lacking.learn(path, "the work mode comes from 4028 stats alone")
            return None
        return runtime_mode_from_stats_cgi(body, device=self.miner_id, op=op)

    async def _write_cgi(self, method: str, cgi: str, op: str, **options: Any) -> Any:  # noqa: ANN401 - JSON
        """A CGI sleep and wake need; one the build lacks is learnt, and they are off."""
        path = f"/cgi-bin/{cgi}.cgi"
        try:
            if path not in self.lacking:
                return await self._web(method, cgi, op, **options)
        except UnsupportedError:
            self.lacking.learn(path, "no sleep or wake over the API (its outlet still can)")
        raise self.lacking.essential(path, op, "every sleep and wake")

    async def _rpc(self, command: str, op: str) -> cgminer_tcp.Reply:
        try:
            return await cgminer_tcp.request(
                self._ep.host,
                self._ep.port,
                command,
                timeout_s=self._ep.timeout_s,
                device=self.miner_id,
            )
        except RejectedError as err:
            if err.code != CODE_ACCESS_DENIED or "+" in command:
                raise
            # A read the stock api-groups allow was denied: someone narrowed api-allow or
            # api-groups on this unit, and only a person can put them back.
            raise AuthError(
                self.miner_id,
                op,
                f"4028 denies {command!r} (code 45): the unit's api-groups/api-allow are not "
                "stock (A:stats:pools:devs:summary:version, A:0/0)",
            ) from None

    async def _web(
        self,
        method: str,
        cgi: str,
        op: str,
        *,
        json_body: object = None,
        timeout_s: float | None = None,
        admit: bool = True,
    ) -> Any:  # noqa: ANN401 - JSON is any shape; callers check it
        response = await http.request(
            method,
            f"{self._base}/cgi-bin/{cgi}.cgi",
            device=self.miner_id,
            op=op,
            timeout_s=timeout_s or self._ep.timeout_s,
            json_body=json_body,
            middlewares=(self._auth,),
            admit=admit,
        )
        if response.status == HTTPStatus.UNAUTHORIZED:
            raise self._refused(response, op)
        if response.status == HTTPStatus.NOT_FOUND:
            raise UnsupportedError(self.miner_id, op, f"{cgi}.cgi answered HTTP 404")
        if response.status != HTTPStatus.OK:
            raise RejectedError(
                self.miner_id,
                op,
                f"{cgi}.cgi answered HTTP {response.status}",
                code=response.status,
            )
        return _loads(response.body, device=self.miner_id, op=op)

    def _refused(self, response: http.Response, op: str) -> DriverError:
        """A 401 after the middleware answered the challenge: stale nonce or bad password."""
        challenge = next(
            (v for k, v in response.headers.items() if k.lower() == "www-authenticate"), ""
        )
        if re.search(r"\bstale\s*=\s*\"?true", challenge, re.IGNORECASE):
            # The password was right but the fresh nonce died at once: renewed once, give up.
            return RejectedError(
                self.miner_id,
                op,
                "digest nonce expired again right after renewal",
                code=HTTPStatus.UNAUTHORIZED,
            )
        return AuthError(
            self.miner_id, op, f"web CGI refused the HTTP Digest credentials of {self._user!r}"
        )


def write_body(conf: object, mode: int, *, device: str, op: str) -> dict[str, Any]:
    """The set_miner_conf body: the whole config as read, with the work mode changed.

    Refuses (ProtocolError, nothing written) unless the read is a stock config with its
    pools: a save carries the pools, and an empty list wipes them (pyasic's bug). Echoing
    every key keeps anything the browser form would send from falling back to defaults.
    """
    if not isinstance(conf, dict):
        raise ProtocolError(device, op, "get_miner_conf is not a JSON object; not writing")
    pools = conf.get("pools")
    if (
        not isinstance(pools, list)
        or not pools
        or not all(
            isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("url", "user", "pass"))
            for p in pools
        )
    ):
        raise ProtocolError(device, op, "get_miner_conf has no usable pools list; not writing")
    if not any(p["url"] for p in pools):
        raise ProtocolError(device, op, "get_miner_conf lists no pool; not writing")
    if "bitmain-work-mode" not in conf and "miner-mode" not in conf:
        raise ProtocolError(device, op, "get_miner_conf has no work mode; not a stock config")
    body = dict(conf)  # pools and fan settings (bitmain-fan-ctrl/-pwm) exactly as read
    level = conf.get("bitmain-freq-level")
    if level is not None:
        # The write key differs from the read key; "" (never set) is the browser's 100 %.
        body["freq-level"] = str(level) if level != "" else "100"
    # Builds differ in the key they honour: the S19j Pro Dec 2022 build acts only on
    # "miner-mode" (and M000-acks "bitmain-work-mode" without acting); the S21+ Feb 2025 build
    # ignored "miner-mode" alone. Both keys as integers work on both (asic-rs #245, #310).
    body["miner-mode"] = mode
    body["bitmain-work-mode"] = mode
    return body


def parse_reading(
    stats: cgminer_tcp.Reply | None,
    summary: cgminer_tcp.Reply | None,
    *,
    device: str,
    op: str = "read",
    model: str | None = None,
    web_mode: int | None = None,
) -> tuple[MinerReading, int | None]:
    """A reading from RPC `stats` and `summary` (either may be None: the build lacks it),
    with the RPC work mode; see NOMINAL_J_TH."""
    try:
        items = cgminer_tcp.section(stats, "STATS", device=device, op=op) if stats else []
        header = items[0] if items else {}
        board = items[1] if len(items) > 1 else {}
        if summary is not None:
            totals = cgminer_tcp.section(summary, "SUMMARY", device=device, op=op)[0]
            ghs = _number(totals["GHS 5s"])
        else:
            ghs = _number(board["GHS 5s"])
        hashrate_ths = round(ghs / 1000, 3)
        rpc_mode = _mode_code(board.get("Mode"))
        mode_code = web_mode if web_mode is not None else rpc_mode
        # Builds without a mode field: a unit that does not hash is taken as asleep.
        sleeping = mode_code == MODE_SLEEP if mode_code is not None else hashrate_ths <= 0
        power_w = _power_w(board, str(header.get("Type") or model or ""), hashrate_ths, sleeping)
        reading = MinerReading(
            mode=Mode.SLEEPING if sleeping else Mode.MINING,
            power_w=power_w,
            hashrate_ths=hashrate_ths,
            board_temps_c=_board_temps(board),
            profile=MODE_NAMES.get(mode_code) if mode_code is not None else None,
        )
    except _PARSE_ERRORS as err:
        raise ProtocolError(device, op, f"unexpected reply layout: {err!r}") from None
    return reading, rpc_mode


def runtime_mode_from_stats_cgi(body: object, *, device: str, op: str) -> int | None:
    """stats.cgi's STATS[0]["miner-mode"]; None when the build or the moment has none."""
    try:
        stats = body["STATS"]  # type: ignore[index]
        if not stats:
            return None  # bmminer is restarting (or the build empties it while asleep)
        return _mode_code(stats[0].get("miner-mode"))
    except (*_PARSE_ERRORS, AttributeError) as err:
        raise ProtocolError(device, op, f"unexpected stats.cgi layout: {err!r}") from None


def _power_w(board: dict[str, Any], model: str, hashrate_ths: float, sleeping: bool) -> int:
    """The firmware's own figure where a build has one (chain_power), else an estimate."""
    reported = _watts(board.get("chain_power"))
    if reported is not None and reported > 0:
        return max(round(reported), SLEEP_POWER_W)
    if sleeping:
        return SLEEP_POWER_W
    j_th = next((j for name, j in NOMINAL_J_TH if name in model.upper()), UNKNOWN_MODEL_J_TH)
    ideal_ths = _number(board.get("total_rateideal", 0)) * RATE_UNITS_TH.get(
        str(board.get("rate_unit", "GH")).upper().removesuffix("/S"), 1e-3
    )
    # Mining counts at nameplate even while the boards come up: a booting unit soon draws it.
    basis = ideal_ths if ideal_ths > 0 else hashrate_ths
    if basis <= 0:
        raise ValueError("mining, but neither an ideal nor a real hashrate to estimate from")
    return round(basis * j_th)


def _board_temps(board: dict[str, Any]) -> tuple[float, ...]:
    """Per hashboard, its hottest PCB sensor (`temp_pcbN` "a-b-c-d"), else `tempN`."""
    pcb = sorted(
        (int(k.removeprefix("temp_pcb")), v)
        for k, v in board.items()
        if k.startswith("temp_pcb") and k.removeprefix("temp_pcb").isdigit()
    )
    if pcb:
        temps = (_hottest(v) for _, v in pcb)
    else:
        plain = sorted(
            (int(k.removeprefix("temp")), v)
            for k, v in board.items()
            if re.fullmatch(r"temp\d+", k)
        )
        temps = (float(v) for _, v in plain)
    # An absent chain reads all zeros ("0-0-0-0"); it is no board at all.
    return tuple(t for t in temps if t != 0 and not math.isnan(t))


_SENSOR = re.compile(r"(?:^|-)(-?\d+(?:\.\d+)?)")


def _hottest(value: object) -> float:
    """Sensors as "38-48-47-52" (or a list); below freezing "-31--30" (inferred)."""
    values = [float(v) for v in value] if isinstance(value, list) else _sensors(str(value))
    readings = [v for v in values if v != 0]
    return max(readings) if readings else 0.0


def _sensors(text: str) -> list[float]:
    return [float(v) for v in _SENSOR.findall(text)]


def _number(value: object) -> float:
    """A JSON number, or a number in a string ("GHS 5s" is a string on some bmminer builds)."""
    if isinstance(value, bool):
        raise TypeError("a boolean where a number belongs")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ValueError(f"non-finite number {value!r}")
    return number


_LEADING_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)")


def _watts(value: object) -> float | None:
    """chain_power as builds send it: 3250, "3250 W", "456.78 (AB)"."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    match = _LEADING_NUMBER.match(str(value))
    return float(match.group(1)) if match else None


def _mode_code(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _same(code: int, target: int, *, exact: bool) -> bool:
    return code == target if exact else (code == MODE_SLEEP) == (target == MODE_SLEEP)


def _stored_agrees(conf: object, target: int, *, exact: bool = False) -> bool:
    """The saved config is asleep (or not; `exact`: in `target`) as asked, so a reboot
    keeps the state."""
    if not isinstance(conf, dict):
        return False
    stored = _mode_code(conf.get("bitmain-work-mode", conf.get("miner-mode")))
    return stored is not None and _same(stored, target, exact=exact)


def _reached(seen: Observation, target: int, *, exact: bool = False) -> bool:
    """Every runtime mode source agrees the unit is asleep (or not; `exact`: in `target`)
    as asked."""
    codes = [c for c in (seen.rpc_mode, seen.web_mode) if c is not None]
    if codes:
        return all(_same(c, target, exact=exact) for c in codes)
    # No mode field anywhere (older builds): judge by hashing alone.
    return (seen.reading.hashrate_ths <= 0) == (target == MODE_SLEEP)


def _describe(seen: Observation) -> str:
    sources = (("rpc", seen.rpc_mode), ("stats.cgi", seen.web_mode))
    return ", ".join(f"{src} {code}" for src, code in sources if code is not None) or "unknown"


def _check_ack(ack: object, *, device: str, op: str) -> None:
    if not isinstance(ack, dict):
        raise ProtocolError(device, op, f"set_miner_conf answered {ack!r}")
    code = str(ack.get("code", ""))
    if ack.get("stats") != "success" or code != "M000":
        raise RejectedError(device, op, f"set_miner_conf: {code or '?'} {ack.get('msg', '')}")


def _loads(body: bytes, *, device: str, op: str) -> Any:  # noqa: ANN401 - JSON is any shape
    """JSON, repairing the malformations cgminer-family firmware is known to emit."""
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        try:
            return json.loads(cgminer_tcp.repair(text))
        except (ValueError, RecursionError):
            raise ProtocolError(
                device, op, f"unparseable reply ({len(body)} bytes): {text[:60]!r}"
            ) from None


def _board_lacks_mode(stats: cgminer_tcp.Reply) -> bool:
    """A `stats` reply whose board section has no work mode (older builds)."""
    items = stats.get("STATS")
    board = items[1] if isinstance(items, list) and len(items) > 1 else None
    return isinstance(board, dict) and "Mode" not in board


ENTRY = MinerDriverEntry(
    name="antminer-stock",
    factory=AntminerStockMiner,
    traits=TRAITS,
    default_port=4028,
    summary="Stock Bitmain Antminer: reads on the read-only CGMiner API (4028), sleep/wake "
    "through the web CGI's set_miner_conf with HTTP Digest, verified by the runtime mode",
    default_web_port=DEFAULT_WEB_PORT,
)
