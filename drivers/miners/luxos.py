"""LuxOS (Luxor firmware) over its CGMiner-flavoured API on TCP 4028.

Writes take the miner's single session: logon -> command -> logoff, every time. We never
hold the session (that would lock out the operator's tools) and never adopt one we did
not create. Every write is followed by a read-back; a miner that acknowledges and does
not act raises VerificationError.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from typing import Any

import structlog

from drivers import readback
from drivers.errors import (
    DriverError,
    ProtocolError,
    RejectedError,
    SessionBusyError,
    UnsupportedError,
    VerificationError,
)
from drivers.lacking import Lacking
from drivers.pools import NO_POOLS, cgminer_pools
from drivers.transport import cgminer_tcp
from drivers.types import (
    Capability,
    DriverTraits,
    FanPause,
    MinerDriverEntry,
    MinerEndpoint,
    MinerReading,
    Mode,
    PoolConfig,
)

log = structlog.get_logger("curtaild.drivers.luxos")

CODE_INVALID_COMMAND = 14  # cgminer: a join the firmware does not support
CODE_ACCESS_DENIED = 45
CODE_SESSION_ACTIVE = 402  # "Another session is active"
INVALID_SESSION = "invalid session"

READ_PARTS = ("power", "summary", "stats", "events", "config")
# A reading needs `power` (watts) and `events` (asleep or not); a build without the others
# is read without them, each learnt once (drivers.lacking).
OPTIONAL_READS = {
    "summary": "readings carry no hashrate",
    "stats": "readings carry no board temperatures (they count as cold)",
    "config": "readings carry no profile; a profile set is proven by its acknowledgement",
}
# A read-back checks what the write claimed; slow-moving fields come from the last read.
VERIFY_PARTS = ("events", "power")
VERIFY_PROFILE_PARTS = ("events", "power", "config")

LOGON_ATTEMPTS = 3
LOGON_BACKOFF_S = 0.25  # doubles per attempt; a foreign write session is short-lived

# Sleep turns the PSU and hashboards off; fans stop with them (docs.luxor.tech curtail).
TRAITS = DriverTraits(
    sleep_power_w=25,
    ramp_down_s=5.0,
    ramp_up_s=10.0,
    fans_when_asleep=FanPause.OFF,
    # The lowest stock profiles draw about 70 % of the default (inferred from Luxor's
    # published profile steps); a profile change steps frequency as fast as curtail does.
    power_floor_fraction=0.70,
    retarget_s=5.0,
    # A gentle wake starts at the lowest stock profile, so a cold boot draws what the
    # ladder's lowest step does. It costs five more requests than a plain wake (profiles,
    # logon, profileset, logoff, the profile's read-back) at the default 3 s deadline.
    gentle_fraction=0.70,
    gentle_extra_s=15.0,
)


class LuxosMiner:
    """One LuxOS miner. At most one call is in flight at a time."""

    def __init__(self, endpoint: MinerEndpoint) -> None:
        self._ep = endpoint
        self._lock = asyncio.Lock()
        self._joined = True  # firmware accepts "a+b" joins until it says otherwise
        self._leaked_sid: str | None = None  # our own session whose logoff failed
        self._last: MinerReading | None = None  # fills fields a partial read-back omits
        self.lacking = Lacking(endpoint.miner_id)  # commands this build does not know
        self.firmware: str | None = None
        self.model: str | None = None

    @property
    def miner_id(self) -> str:
        return self._ep.miner_id

    @property
    def capabilities(self) -> frozenset[Capability]:
        if "profileset" in self.lacking:
            return frozenset({Capability.SLEEP})
        if "profiles" in self.lacking:  # a profile by name, but none chosen by watts
            return frozenset({Capability.SLEEP, Capability.POWER_PROFILE})
        return frozenset({Capability.SLEEP, Capability.POWER_PROFILE, Capability.POWER_TARGET})

    async def reclaim(self) -> None:
        """Log off the active write session: the caller knows our previous process had a
        write on the wire to this miner when it died, so the session is almost surely its
        (an operator's tool holding one at that very moment is told its session is gone,
        and logs on again). Otherwise writes would be refused until it idles out (60 s)."""
        async with self._lock:
            reply = await self._call("session")
            sid = _first(reply, "SESSION", self.miner_id, "session").get("SessionID")
            if not isinstance(sid, str) or not sid:
                return
            await self._logoff(sid)
        log.info("released a write session a previous process left open", miner=self.miner_id)

    async def probe(self) -> None:
        """Confirm the device is LuxOS and learn its firmware and model."""
        async with self._lock:
            reply = await self._call("version")
        version = _first(reply, "VERSION", self.miner_id, "version")
        if "LUXminer" not in version and "LUXminer" not in str(reply.get("STATUS")):
            raise UnsupportedError(self.miner_id, "probe", "the device is not running LuxOS")
        self.firmware = str(version.get("LUXminer") or version.get("Miner"))
        self.model = str(version.get("Type", ""))

    async def read(self) -> MinerReading:
        async with self._lock:
            return await self._read()

    async def sleep(self) -> MinerReading:
        async with self._lock:
            await self._write("curtail", "sleep")
            return await self._verify("sleep", lambda r: r.mode is Mode.SLEEPING, VERIFY_PARTS)

    async def wake(
        self,
        *,
        gentle: bool = False,
        step_up: bool = False,  # noqa: ARG002 - a power target steps it up
    ) -> MinerReading:
        """Curtail wakeup. Gentle: first the lowest stock profile, proven before the wakeup
        (asleep, the miner keeps it for the next start), so cold boards start at the lowest
        draw; the supervisor steps the miner up with set_power_target after the warm-up.
        A build without profiles wakes plainly: a miner that never wakes is worse."""
        async with self._lock:
            lowest = await self._gentle_profile() if gentle else None
            if lowest is None:
                await self._write("curtail", "wakeup")
                return await self._verify("wake", lambda r: r.mode is Mode.MINING, VERIFY_PARTS)
            await self._write("curtail", "wakeup")
            return await self._verify(
                "wake",
                lambda r: r.mode is Mode.MINING and (r.profile == lowest or self._no_config()),
                VERIFY_PROFILE_PARTS,
            )

    async def set_profile(self, profile: str) -> MinerReading:
        if "," in profile or not profile:
            raise RejectedError(self.miner_id, "profileset", f"invalid profile name {profile!r}")
        async with self._lock:
            return await self._set_profile(profile)

    async def set_power_target(self, watts: int) -> MinerReading:
        """The largest profile drawing at most `watts` (the lowest profile if none does)."""
        async with self._lock:
            offered = await self._profiles("set_power_target")
            fitting = [name for w, name in offered if w <= watts]
            return await self._set_profile(fitting[-1] if fitting else offered[0][1])

    async def pools(self) -> tuple[PoolConfig, ...]:
        """The cgminer `pools` read (no session: reads are open on 4028)."""
        if "pools" in self.lacking:
            raise self.lacking.essential("pools", "pools", "a pools check")
        async with self._lock:
            try:
                reply = await self._call("pools")
            except RejectedError as err:
                if err.code != CODE_INVALID_COMMAND:
                    raise
                self.lacking.learn("pools", NO_POOLS)
                raise self.lacking.essential("pools", "pools", "a pools check") from None
        return cgminer_pools(reply, device=self.miner_id)

    async def close(self) -> None:
        """Nothing is held between calls: one connection per request."""

    # -- internals -------------------------------------------------------------------------

    async def _call(self, command: str, parameter: str | None = None) -> cgminer_tcp.Reply:
        return await cgminer_tcp.request(
            self._ep.host,
            self._ep.port,
            command,
            parameter,
            timeout_s=self._ep.timeout_s,
            device=self.miner_id,
        )

    async def _gentle_profile(self) -> str | None:
        """The lowest stock profile, set and proven; None on a build that cannot."""
        if Capability.POWER_TARGET not in self.capabilities:
            return None
        try:
            lowest = (await self._profiles("wake"))[0][1]
            await self._set_profile(lowest)
        except UnsupportedError:
            if Capability.POWER_TARGET in self.capabilities:
                raise  # the build has profiles, but offers none
            return None
        return lowest

    async def _profiles(self, op: str) -> list[tuple[float, str]]:
        """The stock profiles as (watts, name), lowest draw first; never empty."""
        if "profiles" in self.lacking:
            raise self.lacking.essential("profiles", op, "a power target")
        try:
            reply = await self._call("profiles")
        except RejectedError as err:
            if err.code != CODE_INVALID_COMMAND:
                raise
            self.lacking.learn("profiles", "no power target in watts; gentle wakes are plain")
            raise self.lacking.essential("profiles", op, "a power target") from None
        profiles = cgminer_tcp.section(reply, "PROFILES", device=self.miner_id, op="profiles")
        try:
            offered = sorted((float(p["Watts"]), str(p["Profile Name"])) for p in profiles)
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolError(self.miner_id, "profiles", f"unexpected layout: {err!r}") from None
        if not offered:
            raise UnsupportedError(self.miner_id, op, "no power profiles")
        return offered

    async def _set_profile(self, profile: str) -> MinerReading:
        if "profileset" in self.lacking:
            raise self.lacking.essential("profileset", "profileset", "a profile change")
        try:
            reply = await self._write("profileset", profile)
        except RejectedError as err:
            if err.code != CODE_INVALID_COMMAND:
                raise
            self.lacking.learn("profileset", "no profiles, no power target; gentle wakes are plain")
            raise self.lacking.essential("profileset", "profileset", "a profile change") from None
        acked = _first(reply, "PROFILE", self.miner_id, "profileset").get("Profile")
        if acked != profile:
            raise ProtocolError(
                self.miner_id,
                "profileset",
                f"acknowledged profile {acked!r}, asked for {profile!r}",
            )
        # Without `config` no reading carries the profile: the acknowledgement above is the
        # proof, and the read-back shows the miner still answering in its mode.
        return await self._verify(
            "profileset",
            lambda r: r.profile == profile or self._no_config(),
            VERIFY_PROFILE_PARTS,
        )

    def _no_config(self) -> bool:
        """No reading carries the profile: the build lacks `config` or its field."""
        return "config" in self.lacking or "config:Profile" in self.lacking

    async def _read(self, parts: tuple[str, ...] = READ_PARTS) -> MinerReading:
        parts = self.lacking.filter(parts)
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
                self._joined = False  # older firmware: fall back to one command at a time
            else:
                replies = {}
                for part, answer in answers.items():
                    if isinstance(answer, RejectedError):
                        self._lacks(part, answer)
                    else:
                        replies[part] = answer
                return self._parse(replies)
        replies = {}
        for part in parts:
            try:
                replies[part] = await self._call(part)
            except RejectedError as err:
                self._lacks(part, err)
        return self._parse(replies)

    def _lacks(self, part: str, err: RejectedError) -> None:
        """A read command refused: learnt if the build lacks an optional one, else raised."""
        if err.code != CODE_INVALID_COMMAND:
            raise err
        if part not in OPTIONAL_READS:
            raise self.lacking.essential(part, "read", "every reading") from None
        self.lacking.learn(part, OPTIONAL_READS[part])

    def _parse(self, parts: dict[str, cgminer_tcp.Reply]) -> MinerReading:
        """A reading from whichever parts were read; what is missing comes from the last,
        what the build lacks is left at its neutral value."""
        device = self.miner_id
        last = self._last
        lacking = self.lacking
        try:
            power = _first(parts["power"], "POWER", device, "power")
            events = cgminer_tcp.section(parts["events"], "EVENTS", device=device, op="events")
            sleeping = any(e.get("Code") in ("SLEEP", "IDLE") for e in events)
            if "summary" in parts:
                summary = _first(parts["summary"], "SUMMARY", device, "summary")
                hashrate = round(float(summary["GHS 5s"]) / 1000, 3)
            else:
                unknown = sleeping or last is None or "summary" in lacking
                hashrate = 0.0 if unknown or last is None else last.hashrate_ths
            if "stats" in parts:
                stats = cgminer_tcp.section(parts["stats"], "STATS", device=device, op="stats")
                boards = stats[1] if len(stats) > 1 else {}
                temps = tuple(
                    _board_temp(boards[key]) for key in sorted(boards) if key.startswith("temp_pcb")
                )
                if any(math.isnan(t) for t in temps):
                    temps = ()  # one board unknown: all count as cold (a NaN compares as warm)
            else:
                temps = last.board_temps_c if last is not None and "stats" not in lacking else ()
            if "config" in parts:
                config = _first(parts["config"], "CONFIG", device, "config")
                profile = str(config["Profile"]) if "Profile" in config else None
                if profile is None:
                    lacking.learn("config:Profile", "readings carry no profile")
            else:
                profile = last.profile if last is not None and "config" not in lacking else None
            reading = MinerReading(
                mode=Mode.SLEEPING if sleeping else Mode.MINING,
                power_w=round(float(power["Watts"])),
                hashrate_ths=hashrate,
                board_temps_c=temps,
                profile=profile,
            )
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as err:
            raise ProtocolError(device, "read", f"unexpected reply layout: {err!r}") from None
        self._last = reading
        return reading

    async def _write(self, command: str, argument: str) -> cgminer_tcp.Reply:
        for attempt in range(2):
            sid = await self._logon()
            try:
                return await self._call(command, f"{sid},{argument}")
            except RejectedError as err:
                if INVALID_SESSION not in err.detail.lower() or attempt:
                    raise
                # Expired between logon and command: renew once, then give up.
            finally:
                await self._logoff(sid)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _logon(self) -> str:
        for attempt in range(LOGON_ATTEMPTS):
            try:
                reply = await self._call("logon")
            except RejectedError as err:
                if err.code != CODE_SESSION_ACTIVE:
                    raise
                if self._leaked_sid is not None:
                    # The active session may be our own whose logoff was lost: release it.
                    await self._logoff(self._leaked_sid)
                    continue
                if attempt + 1 < LOGON_ATTEMPTS:
                    await asyncio.sleep(LOGON_BACKOFF_S * 2**attempt)
                    continue
                raise SessionBusyError(
                    self.miner_id, "logon", "another client holds the miner's only session"
                ) from None
            sid = _first(reply, "SESSION", self.miner_id, "logon").get("SessionID")
            if not isinstance(sid, str) or not sid:
                raise ProtocolError(self.miner_id, "logon", "no SessionID in the reply")
            return sid
        raise SessionBusyError(self.miner_id, "logon", "could not release our own session")

    async def _logoff(self, sid: str) -> None:
        # Marked leaked until the miner confirms: a deadline or shutdown may cancel us
        # mid-logoff, and the next write must then release our own session, not wait 60 s.
        self._leaked_sid = sid
        try:
            await self._call("logoff", sid)
        except RejectedError:
            self._leaked_sid = None  # already gone (expired or killed): nothing is held
        except DriverError:
            pass  # still leaked: it expires in 60 s, and we release it first next time
        else:
            self._leaked_sid = None

    async def _verify(
        self, op: str, done: Callable[[MinerReading], bool], parts: tuple[str, ...]
    ) -> MinerReading:
        reading, shown = await readback.until(lambda: self._read(parts), done)
        if shown:
            return reading
        shows = f"{reading.mode.value} at {reading.power_w} W"
        if "config" in parts:
            shows += f", profile {reading.profile}"
        raise VerificationError(
            self.miner_id, op, f"acknowledged {op} but reads back {shows}", reading
        )


def _first(reply: cgminer_tcp.Reply, name: str, device: str, op: str) -> dict[str, Any]:
    items = cgminer_tcp.section(reply, name, device=device, op=op)
    if not items:
        raise ProtocolError(device, op, f"{name} is empty")
    return items[0]


_SENSOR = re.compile(r"(?:^|-)(-?\d+(?:\.\d+)?)")


def _board_temp(value: object) -> float:
    """LuxOS reports a board's sensors as "58-60-61-59" (below freezing "-31--30"); the
    board is as hot as its hottest sensor. Missing sensors read 0 and are skipped."""
    text = str(value)
    # Above freezing no sensor is negative and a plain split will do (the usual case).
    parts = text.split("-") if not text.startswith("-") and "--" not in text else None
    values = parts if parts is not None else _SENSOR.findall(text)
    readings = [t for t in map(float, values) if t != 0]
    return max(readings) if readings else float("nan")


ENTRY = MinerDriverEntry(
    name="luxos",
    factory=LuxosMiner,
    traits=TRAITS,
    default_port=4028,
    summary="LuxOS (Luxor) over the CGMiner API on 4028: curtail sleep/wakeup, profileset",
)
