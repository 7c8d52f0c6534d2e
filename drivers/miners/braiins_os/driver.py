"""The Braiins OS+ driver: pause and resume, power targets, quick ramping and pause fans
over REST, each write proven by a read-back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from drivers import readback
from drivers.errors import (
    ProtocolError,
    RejectedError,
    UnsupportedError,
    VerificationError,
)
from drivers.lacking import Lacking
from drivers.miners.braiins_os.parse import (
    SLEEP_POWER_W,
    PauseFans,
    QuickRamping,
    cooling_mode,
    parse_reading,
    pause_fans,
    pause_json,
    power_watt,
    quick_ramping,
    target_limits,
    target_profile,
)
from drivers.miners.braiins_os.rest import API, RestClient
from drivers.pools import NO_POOLS, rows_pools
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

DEFAULT_PORT = 80

READ_PATHS = {
    "details": "/miner/details",
    "stats": "/miner/stats",
    "hashboards": "/miner/hw/hashboards",
    "mode": "/performance/mode",
}
READ_PARTS = tuple(READ_PATHS)
# A reading needs the status (mode) and the stats (power); firmware without the others
# (older or newer REST) is read without them, each learnt once (drivers.lacking).
OPTIONAL_READS = {
    "hashboards": "readings carry no board temperatures (they count as cold)",
    "mode": "readings carry no power target; a new one is proven by its acknowledgement "
    "and the configuration",
}
POWER_TARGET_PATH = "/performance/power-target"
CONFIGURATION_PATH = "/configuration/miner"
QUICK_RAMPING_PATH = "/performance/quick-ramping"
POOLS_PATH = "/pools/"  # the pool groups, each with its pools (PoolService, REST 1.x)
# A read-back reads what the write claimed; slow-moving fields come from the last read.
VERIFY_PARTS = ("details", "stats")
VERIFY_TARGET_PARTS = ("details", "stats", "mode")

# The quick ramping the traits assume: the only published numbers (the OpenAPI example,
# "used in curtailments"). The firmware default is not published, so the driver checks the
# miner's setting on its first read and applies these if it differs.
QUICK_RAMP_UP_S = 5
QUICK_RAMP_DOWN_S = 2
# Ramps add a second to the quick ramping for the command itself and the PSU's wind-down.
TRAITS = DriverTraits(
    sleep_power_w=SLEEP_POWER_W,
    ramp_down_s=QUICK_RAMP_DOWN_S + 1.0,
    ramp_up_s=QUICK_RAMP_UP_S + 1.0,
    fans_when_asleep=FanPause.CONFIGURABLE,
    # A new power target is reached by the autotuner, which retunes for minutes
    # (inferred); the ladder uses it only when a deadline leaves that much time.
    power_floor_fraction=0.60,
    retarget_s=120.0,
    # A gentle wake resumes at the ladder's floor (_gentle_target_w), what the planner
    # counts: reported minimums sit lower (1220 of 3050 W in the 25.07 constraints) and
    # would give a cold container less heat than counted. Five more requests than a plain
    # wake (the constraints once, the target, its read-back) at the default 3 s.
    gentle_fraction=0.60,
    gentle_extra_s=15.0,
)
# Without a reported minimum power target: this share of the default one (the ladder's
# floor, which the firmware accepts as a target).
GENTLE_DEFAULT_FRACTION = 0.60


class BraiinsOsMiner:
    """One Braiins OS+ miner. At most one call is in flight at a time."""

    def __init__(self, endpoint: MinerEndpoint) -> None:
        self._ep = endpoint
        self._rest = RestClient(endpoint)
        self._lock = asyncio.Lock()
        self._last: MinerReading | None = None  # fills fields a partial read-back omits
        self.lacking = Lacking(endpoint.miner_id)  # endpoints this firmware does not serve
        # What the miner ramps with, once checked; None when its firmware has no setting.
        self.quick_ramping: QuickRamping | None = None
        self._ramping_checked = False
        # The firmware's (minimum, default) power target, once read: they do not change.
        self._target_limits: tuple[int | None, int | None] | None = None
        self.api_version: str | None = None
        self.firmware: str | None = None
        self.model: str | None = None

    @property
    def miner_id(self) -> str:
        return self._ep.miner_id

    @property
    def capabilities(self) -> frozenset[Capability]:
        if API + POWER_TARGET_PATH in self.lacking:
            return frozenset({Capability.SLEEP})
        return frozenset({Capability.SLEEP, Capability.POWER_TARGET})

    async def probe(self) -> None:
        """Confirm the device is Braiins OS+ with REST v1; learn its versions and model."""
        async with self._lock:
            version = await self._rest.call("GET", "/version/", "version")
            details = await self._rest.call("GET", "/miner/details", "details")
        try:
            self.api_version = f"{version['major']}.{version['minor']}.{version['patch']}"
            current = str(details["bos_version"]["current"])
            identity = details.get("miner_identity") or {}
            self.model = str(identity.get("miner_model") or identity.get("name") or "") or None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise ProtocolError(
                self.miner_id, "probe", f"unexpected reply layout: {err!r}"
            ) from None
        # "2025-07-24-0-3c4b8a5f-25.07-plus": the release is the sixth part.
        parts = current.split("-")
        self.firmware = parts[5] if len(parts) > 5 else current  # noqa: PLR2004 - see above

    async def read(self) -> MinerReading:
        async with self._lock:
            if not self._ramping_checked:
                await self._ensure_quick_ramping()
            return await self._read(READ_PARTS)

    async def sleep(self) -> MinerReading:
        async with self._lock:
            await self._action("pause")
            return await self._verify("pause", lambda r: r.mode is Mode.SLEEPING, VERIFY_PARTS)

    async def wake(
        self,
        *,
        gentle: bool = False,
        step_up: bool = False,  # noqa: ARG002 - a power target steps it up
    ) -> MinerReading:
        """Resume. Gentle: first the lowest power target, proven before the resume (paused,
        the tuner keeps it for the start), so cold boards start at the lowest draw; the
        supervisor steps the miner up with set_power_target after the warm-up. Firmware
        without a power target resumes plainly: a miner that never wakes is worse."""
        async with self._lock:
            watts = await self._gentle_target_w() if gentle else None
            if watts is not None:
                try:
                    await self._set_power_target(watts)
                except UnsupportedError:
                    if Capability.POWER_TARGET in self.capabilities:
                        raise
                    watts = None  # the firmware has no power target: a plain resume
            if watts is None:
                await self._action("resume")
                return await self._verify("resume", lambda r: r.mode is Mode.MINING, VERIFY_PARTS)
            await self._action("resume")
            profile = target_profile(watts)
            return await self._verify(
                "resume",
                lambda r: r.mode is Mode.MINING and (r.profile == profile or self._no_mode()),
                VERIFY_TARGET_PARTS,
            )

    async def set_profile(self, profile: str) -> MinerReading:
        raise UnsupportedError(
            self.miner_id, "set_profile", f"BOS+ has no named profiles (asked for {profile!r})"
        )

    async def set_power_target(self, watts: int) -> MinerReading:
        """Retune to draw about `watts`; the read-back proves the target, the draw follows
        over tens of seconds as the tuner walks there."""
        if watts <= 0:
            raise RejectedError(self.miner_id, "power-target", f"invalid power target {watts} W")
        async with self._lock:
            return await self._set_power_target(watts)

    async def set_quick_ramping(self, up_s: int, down_s: int) -> QuickRamping:
        """Set how fast pause powers down and resume powers up; return the read-back."""
        async with self._lock:
            return await self._set_quick_ramping(QuickRamping(up_s, down_s))

    async def _ensure_quick_ramping(self) -> None:
        """Make the miner ramp as TRAITS assume (the planner times deadlines by them)."""
        want = QuickRamping(QUICK_RAMP_UP_S, QUICK_RAMP_DOWN_S)
        try:
            got: QuickRamping | None = quick_ramping(await self._configuration(), self.miner_id)
            if got != want:
                got = await self._set_quick_ramping(want)
        except UnsupportedError as err:
            # Firmware before 25.07 has no quick ramping: it ramps as it will.
            path = QUICK_RAMPING_PATH if err.op == "quick-ramping" else CONFIGURATION_PATH
            self.lacking.learn(API + path, "quick ramping is left as the firmware has it")
            got = None
        self.quick_ramping, self._ramping_checked = got, True

    async def _set_quick_ramping(self, want: QuickRamping) -> QuickRamping:
        up_s, down_s = want.up_s, want.down_s
        if min(up_s, down_s) < 0:
            raise RejectedError(self.miner_id, "quick-ramping", f"negative ramp time in {want}")
        await self._rest.call(
            "PUT",
            QUICK_RAMPING_PATH,
            "quick-ramping",
            {"up_s": up_s, "down_s": down_s},
        )
        # The reply echoes the request; the configuration shows what the miner kept.
        got = quick_ramping(await self._configuration(), self.miner_id)
        if got != want:
            raise VerificationError(
                self.miner_id,
                "quick-ramping",
                f"acknowledged up {up_s} s/down {down_s} s but reads back "
                f"up {got.up_s} s/down {got.down_s} s",
            )
        return got

    async def set_pause_fans(
        self, speed_ratio: float | None, *, indefinite: bool = True
    ) -> PauseFans:
        """What the fans do while paused: a fixed ratio (0..1, until resumed or for the
        firmware's limited time) or, with None, the firmware's decay to 0 %. Return the
        read-back. The rest of the cooling mode is sent back unchanged."""
        want = PauseFans(speed_ratio, indefinite).normalised()
        if speed_ratio is not None and not 0.0 <= speed_ratio <= 1.0:
            raise RejectedError(self.miner_id, "pause-fans", f"fan ratio {speed_ratio} not in 0..1")
        async with self._lock:
            kind, mode = cooling_mode(await self._configuration(), self.miner_id)
            if kind not in ("auto", "manual"):
                raise UnsupportedError(
                    self.miner_id, "pause-fans", f"{kind} cooling has no fans to pause"
                )
            await self._rest.call(
                "PUT",
                "/cooling/mode",
                "pause-fans",
                {kind: {**mode, "pause_mode": pause_json(want)}},
            )
            _, mode = cooling_mode(await self._configuration(), self.miner_id)
        got = pause_fans(mode.get("pause_mode"), self.miner_id)
        if got != want:
            shows = "no pause mode" if got is None else str(got)
            raise VerificationError(
                self.miner_id, "pause-fans", f"acknowledged {want} but reads back {shows}"
            )
        return want

    async def pools(self) -> tuple[PoolConfig, ...]:
        """Every pool of every pool group, groups in order (a load-balanced group hashes
        beside the others: each of its pools can take hashrate)."""
        path = API + POOLS_PATH
        if path in self.lacking:
            raise self.lacking.essential(path, "pools", "a pools check")
        async with self._lock:
            try:
                groups = await self._rest.call("GET", POOLS_PATH, "pools")
            except UnsupportedError:
                self.lacking.learn(path, NO_POOLS)
                raise self.lacking.essential(path, "pools", "a pools check") from None
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise ProtocolError(self.miner_id, "pools", "the pool groups are not a list")
        rows = []
        for group in groups:
            members = group.get("pools")
            if not isinstance(members, list):  # absent too: another layout, not no pools
                raise ProtocolError(self.miner_id, "pools", "a group's pools are not a list")
            rows.extend(members)
        return rows_pools(rows, device=self.miner_id, op="pools")

    async def reclaim(self) -> None:
        """Nothing a dead process could have left held: the firmware has no exclusive
        write session."""

    async def close(self) -> None:
        """Forget the token; BOS+ has no logout and the HTTP session is shared."""
        self._rest.forget()

    # -- internals -------------------------------------------------------------------------

    async def _read(self, parts: tuple[str, ...]) -> MinerReading:
        replies: dict[str, Any] = {}
        for part in parts:
            path = API + READ_PATHS[part]
            if path in self.lacking:
                continue
            try:
                replies[part] = await self._rest.call("GET", READ_PATHS[part], part)
            except UnsupportedError:
                if part not in OPTIONAL_READS:
                    raise self.lacking.essential(path, "read", "every reading") from None
                self.lacking.learn(path, OPTIONAL_READS[part])
        last = self._last
        if last is not None and self.lacking:
            # What the firmware lacks is unknown, not what an older read said.
            hashboards, mode = (API + READ_PATHS[p] in self.lacking for p in ("hashboards", "mode"))
            last = replace(
                last,
                board_temps_c=() if hashboards else last.board_temps_c,
                profile=None if mode else last.profile,
            )
        reading = parse_reading(replies, self.miner_id, last)
        self._last = reading
        return reading

    def _no_mode(self) -> bool:
        return API + READ_PATHS["mode"] in self.lacking

    async def _set_power_target(self, watts: int) -> MinerReading:
        path = API + POWER_TARGET_PATH
        if path in self.lacking:
            raise self.lacking.essential(path, "power-target", "a power target")
        try:
            reply = await self._rest.call("PUT", POWER_TARGET_PATH, "power-target", {"watt": watts})
        except UnsupportedError:
            self.lacking.learn(path, "no power target: no lowering; gentle wakes resume plainly")
            raise self.lacking.essential(path, "power-target", "a power target") from None
        acked = reply.get("watt") if isinstance(reply, dict) else None
        if acked != watts:
            raise ProtocolError(
                self.miner_id,
                "power-target",
                f"acknowledged power target {acked!r}, asked for {watts} W",
            )
        profile = target_profile(watts)
        reading = await self._verify(
            "power-target", lambda r: r.profile == profile or self._no_mode(), VERIFY_TARGET_PARTS
        )
        if self._no_mode():
            await self._target_kept(watts, reading)
        return reading

    async def _target_kept(self, watts: int, reading: MinerReading) -> None:
        """Without performance/mode no reading carries the target. The configuration shows
        the one the miner kept (a lying miner echoes the PUT and keeps the old one); on
        firmware without the configuration either, the echo and a miner that still answers
        its details and stats are all the proof there is."""
        path = API + CONFIGURATION_PATH
        if path in self.lacking:
            return
        try:
            config = await self._configuration()
        except UnsupportedError:
            self.lacking.learn(path, "a power target is proven by its acknowledgement alone")
            return
        kept = power_watt(config, "tuner", "power_target", device=self.miner_id)
        if kept != watts:
            raise VerificationError(
                self.miner_id,
                "power-target",
                f"acknowledged power target {watts} W but the configuration keeps "
                f"{'none' if kept is None else f'{kept} W'}",
                reading,
            )

    async def _gentle_target_w(self) -> int | None:
        """The power target a gentle wake starts at: GENTLE_DEFAULT_FRACTION of the default
        target (of the configured one on firmware without constraints), which is what the
        planner counts and the heat a cold container's floor is counted on; never below
        the firmware's own minimum (GET configuration/constraints), which is the start
        where no default is known. None where the firmware has no power target: the wake
        is a plain resume then, to the miner's own target (its boards may start cold, but
        a miner that never wakes is worse)."""
        if Capability.POWER_TARGET not in self.capabilities:
            return None
        if self._target_limits is None:
            try:
                reply = await self._rest.call("GET", "/configuration/constraints", "constraints")
            except UnsupportedError:
                reply = None  # older REST: no constraints endpoint
                self.lacking.learn(
                    f"{API}/configuration/constraints", "gentle wakes start from the configuration"
                )
            self._target_limits = target_limits(reply, self.miner_id)
        low, default = self._target_limits
        if default is None and API + CONFIGURATION_PATH not in self.lacking:
            try:
                config = await self._configuration()
            except UnsupportedError:
                self.lacking.learn(API + CONFIGURATION_PATH, "gentle wakes need the minimum")
            else:
                default = power_watt(config, "tuner", "power_target", device=self.miner_id)
        if default is not None:
            gentle = round(default * GENTLE_DEFAULT_FRACTION)
            return gentle if low is None else max(gentle, low)
        if low is not None:
            return low
        raise UnsupportedError(
            self.miner_id, "wake", "no minimum, default or configured power target"
        )

    async def _action(self, action: str) -> None:
        reply = await self._rest.call("PUT", f"/actions/{action}", action)
        # The boolean says whether the miner already was in that state: information only.
        if not isinstance(reply, bool):
            raise ProtocolError(self.miner_id, action, f"expected true or false, got {reply!r}")

    async def _configuration(self) -> dict[str, Any]:
        reply = await self._rest.call("GET", CONFIGURATION_PATH, "configuration")
        if not isinstance(reply, dict):
            raise ProtocolError(self.miner_id, "configuration", "reply is not an object")
        return reply

    async def _verify(
        self, op: str, done: Callable[[MinerReading], bool], parts: tuple[str, ...]
    ) -> MinerReading:
        reading, shown = await readback.until(lambda: self._read(parts), done)
        if shown:
            return reading
        shows = f"{reading.mode.value} at {reading.power_w} W"
        if op == "power-target":
            shows = f"power target {reading.profile or 'none'}"
        raise VerificationError(
            self.miner_id, op, f"acknowledged {op} but reads back {shows}", reading
        )


ENTRY = MinerDriverEntry(
    name="braiins-os",
    factory=BraiinsOsMiner,
    traits=TRAITS,
    default_port=DEFAULT_PORT,
    summary="Braiins OS+ over REST API v1 on 80: pause/resume, power target, quick ramping, "
    "pause fans",
)
