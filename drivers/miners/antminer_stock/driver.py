"""The stock Antminer driver: reads on 4028, sleep and wake by saving the work mode
through the web CGI, each write proven by the restarted process's running mode."""

from __future__ import annotations

import asyncio
from typing import Any

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
from drivers.miners.antminer_stock.parse import (
    MODE_HIGH,
    MODE_LOW,
    MODE_NORMAL,
    MODE_SLEEP,
    PARSE_ERRORS,
    SLEEP_POWER_W,
    board_lacks_mode,
    parse_reading,
    runtime_mode_from_stats_cgi,
)
from drivers.miners.antminer_stock.web import DEFAULT_WEB_PORT, WebCgi
from drivers.miners.antminer_stock.workmode import (
    Observation,
    check_ack,
    describe,
    reached,
    stored_agrees,
    write_body,
)
from drivers.pools import NO_POOLS, cgminer_pools
from drivers.transport import cgminer_tcp
from drivers.types import (
    Capability,
    DriverTraits,
    FanPause,
    MinerDriverEntry,
    MinerEndpoint,
    MinerReading,
    PoolConfig,
)

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

# set_miner_conf answers only after restarting bmminer: ~21 s on an S19j Pro (Dec 2022
# build); the S17's CGI sleeps 30 s before replying.
WRITE_TIMEOUT_S = 40.0
# After the reply, how long the new process may take to report the new mode (Tether's
# notes: mode changes take 10-20 s, the device may be unresponsive meanwhile).
VERIFY_WINDOW_S = 60.0
POLL_INTERVAL_S = 2.0  # a verification poll is 2-3 requests to a small ARM control board

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
        self._cgi = WebCgi(endpoint)
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
            except (*PARSE_ERRORS, ProtocolError):
                raise ProtocolError(self.miner_id, "probe", "no VERSION in the reply") from None
            if foreign or not model.lower().startswith("antminer"):
                raise UnsupportedError(
                    self.miner_id, "probe", f"not stock Antminer firmware ({model!r})"
                )
            self.model = model
            self.firmware = str(version.get("CompileTime", version.get("Miner", "")))
            try:
                info = await self._cgi.request("GET", "get_system_info", "probe")
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

    async def pools(self) -> tuple[PoolConfig, ...]:
        """4028 `pools`, which the stock api-groups allow (the CGI's three slots; empty
        ones left out). Unreachable while bmminer restarts, like every 4028 read."""
        if "pools" in self.lacking:
            raise self.lacking.essential("pools", "pools", "a pools check")
        async with self._lock:
            try:
                reply = await self._rpc("pools", "pools")
            except RejectedError as err:
                if err.code != CODE_INVALID_COMMAND:
                    raise
                self.lacking.learn("pools", NO_POOLS)
                raise self.lacking.essential("pools", "pools", "a pools check") from None
        return cgminer_pools(reply, device=self.miner_id)

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
        if reached(before, target, exact=exact) and stored_agrees(conf, target, exact=exact):
            # Already there (not exact: a low-power or HEM unit counts as awake): a save
            # would restart bmminer for nothing.
            return before.reading, False
        if warm_ok and reached(before, MODE_NORMAL) and stored_agrees(conf, MODE_NORMAL):
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
            check_ack(ack, device=self.miner_id, op=op)
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
                if reached(seen, target, exact=exact):
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
            f"(work mode {describe(seen)}) after {window}",
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
        if rpc_mode is None and stats is not None and board_lacks_mode(stats):
            self.lacking.learn("stats:Mode", "the work mode comes from stats.cgi, else hashing")
        return reading, rpc_mode

    async def _runtime_mode(self, op: str) -> int | None:
        """stats.cgi's `miner-mode`: None while bmminer restarts or where the build lacks it."""
        path = "/cgi-bin/stats.cgi"
        if path in self.lacking:
            return None
        try:
            body = await self._cgi.request("GET", "stats", op)
        except UnsupportedError:
            self.lacking.learn(path, "the work mode comes from 4028 stats alone")
            return None
        return runtime_mode_from_stats_cgi(body, device=self.miner_id, op=op)

    async def _write_cgi(self, method: str, cgi: str, op: str, **options: Any) -> Any:  # noqa: ANN401 - JSON
        """A CGI sleep and wake need; one the build lacks is learnt, and they are off."""
        path = f"/cgi-bin/{cgi}.cgi"
        try:
            if path not in self.lacking:
                return await self._cgi.request(method, cgi, op, **options)
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


ENTRY = MinerDriverEntry(
    name="antminer-stock",
    factory=AntminerStockMiner,
    traits=TRAITS,
    default_port=4028,
    summary="Stock Bitmain Antminer: reads on the read-only CGMiner API (4028), sleep/wake "
    "through the web CGI's set_miner_conf with HTTP Digest, verified by the runtime mode",
    default_web_port=DEFAULT_WEB_PORT,
)
