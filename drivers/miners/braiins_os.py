"""Braiins OS+ over its public REST API v1 (http://<miner>/api/v1, plain HTTP on port 80).

Login gives a token that goes raw in `Authorization` (no "Bearer"). It expires after
`timeout_s` without use, each request sliding it on, and it dies with a reboot: an HTTP 401
means log in again, once. Curtailment pauses mining (hashboards off, bosminer and the
control board up); we never `stop` bosminer, which has left fans at 100 %. Every write is
followed by a read-back; a miner that acknowledges and does not act raises
VerificationError. pyasic drives BOS+ over gRPC instead; REST needs no generated code,
carries everything we command, and shares the HTTP transport with other families.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from drivers import readback
from drivers.errors import (
    AuthError,
    ProtocolError,
    RejectedError,
    UnsupportedError,
    VerificationError,
)
from drivers.lacking import Lacking
from drivers.transport import http
from drivers.transport.cgminer_tcp import repair
from drivers.types import (
    Capability,
    DriverTraits,
    FanPause,
    MinerDriverEntry,
    MinerEndpoint,
    MinerReading,
    Mode,
)

API = "/api/v1"
DEFAULT_PORT = 80
DEFAULT_USERNAME = "root"
# pyasic and asic-rs log in with root/root; some units ship with no password (give "").
DEFAULT_PASSWORD = "root"  # noqa: S105 - the firmware's well-known default, not a secret
TOKEN_REUSE_FRACTION = 0.9  # log in anew before the sliding expiry rather than eat a 401

HTTP_UNAUTHORIZED = 401
HTTP_FORBIDDEN = 403
NOT_THERE = frozenset({404, 405, 501})  # the firmware predates the endpoint

# MinerStatus (deprecated but still served): restricted still hashes; not-started,
# paused and suspended do not.
MINING_STATUSES = frozenset({2, 5})
IDLE_STATUSES = frozenset({1, 3, 4})
RUNTIME_LIMITED = 1  # FanPauseRuntime
RUNTIME_INDEFINITE = 2

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
# A read-back reads what the write claimed; slow-moving fields come from the last read.
VERIFY_PARTS = ("details", "stats")
VERIFY_TARGET_PARTS = ("details", "stats", "mode")

# The quick ramping the traits assume: the only published numbers (the OpenAPI example,
# "used in curtailments"). The firmware default is not published, so the driver checks the
# miner's setting on its first read and applies these if it differs.
QUICK_RAMP_UP_S = 5
QUICK_RAMP_DOWN_S = 2
# Paused: hashboards off, control board and PSU standby, fans at their pause speed.
# Ramps add a second to the quick ramping for the command itself and the PSU's wind-down.
TRAITS = DriverTraits(
    sleep_power_w=30,
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


@dataclass(frozen=True, slots=True)
class QuickRamping:
    """How fast the miner powers up on resume and down on pause (firmware >= 25.07)."""

    up_s: int
    down_s: int


@dataclass(frozen=True, slots=True)
class PauseFans:
    """Fans while paused. No ratio: firmware auto, from the last mining speed down to 0 %."""

    speed_ratio: float | None = None
    indefinite: bool = True  # a fixed ratio until resumed, else for the firmware's limit

    def normalised(self) -> PauseFans:
        return PauseFans() if self.speed_ratio is None else self

    def __str__(self) -> str:
        if self.speed_ratio is None:
            return "pause fans auto (down to 0 %)"
        until = "until resumed" if self.indefinite else "for the firmware's limited time"
        return f"pause fans at {self.speed_ratio:.0%} {until}"


class BraiinsOsMiner:
    """One Braiins OS+ miner. At most one call is in flight at a time."""

    def __init__(self, endpoint: MinerEndpoint) -> None:
        self._ep = endpoint
        self._base = http.origin(endpoint.host, endpoint.port) + API
        self._username = endpoint.username or DEFAULT_USERNAME
        self._password = DEFAULT_PASSWORD if endpoint.password is None else endpoint.password
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._token_fresh_until = 0.0  # time.monotonic()
        self._token_reuse_s = 0.0
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
            version = await self._call("GET", "/version/", "version")
            details = await self._call("GET", "/miner/details", "details")
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
            got: QuickRamping | None = _quick_ramping(await self._configuration(), self.miner_id)
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
        await self._call(
            "PUT",
            QUICK_RAMPING_PATH,
            "quick-ramping",
            {"up_s": up_s, "down_s": down_s},
        )
        # The reply echoes the request; the configuration shows what the miner kept.
        got = _quick_ramping(await self._configuration(), self.miner_id)
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
            kind, mode = _cooling_mode(await self._configuration(), self.miner_id)
            if kind not in ("auto", "manual"):
                raise UnsupportedError(
                    self.miner_id, "pause-fans", f"{kind} cooling has no fans to pause"
                )
            await self._call(
                "PUT",
                "/cooling/mode",
                "pause-fans",
                {kind: {**mode, "pause_mode": _pause_json(want)}},
            )
            _, mode = _cooling_mode(await self._configuration(), self.miner_id)
        got = _pause_fans(mode.get("pause_mode"), self.miner_id)
        if got != want:
            shows = "no pause mode" if got is None else str(got)
            raise VerificationError(
                self.miner_id, "pause-fans", f"acknowledged {want} but reads back {shows}"
            )
        return want

    async def reclaim(self) -> None:
        """Nothing a dead process could have left held: the firmware has no exclusive
        write session."""

    async def close(self) -> None:
        """Forget the token; BOS+ has no logout and the HTTP session is shared."""
        self._token = None

    # -- internals -------------------------------------------------------------------------

    async def _read(self, parts: tuple[str, ...]) -> MinerReading:
        replies: dict[str, Any] = {}
        for part in parts:
            path = API + READ_PATHS[part]
            if path in self.lacking:
                continue
            try:
                replies[part] = await self._call("GET", READ_PATHS[part], part)
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
            reply = await self._call("PUT", POWER_TARGET_PATH, "power-target", {"watt": watts})
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
        kept = _power_watt(config, "tuner", "power_target", device=self.miner_id)
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
                reply = await self._call("GET", "/configuration/constraints", "constraints")
            except UnsupportedError:
                reply = None  # older REST: no constraints endpoint
                self.lacking.learn(
                    f"{API}/configuration/constraints", "gentle wakes start from the configuration"
                )
            self._target_limits = _target_limits(reply, self.miner_id)
        low, default = self._target_limits
        if default is None and API + CONFIGURATION_PATH not in self.lacking:
            try:
                config = await self._configuration()
            except UnsupportedError:
                self.lacking.learn(API + CONFIGURATION_PATH, "gentle wakes need the minimum")
            else:
                default = _power_watt(config, "tuner", "power_target", device=self.miner_id)
        if default is not None:
            gentle = round(default * GENTLE_DEFAULT_FRACTION)
            return gentle if low is None else max(gentle, low)
        if low is not None:
            return low
        raise UnsupportedError(
            self.miner_id, "wake", "no minimum, default or configured power target"
        )

    async def _action(self, action: str) -> None:
        reply = await self._call("PUT", f"/actions/{action}", action)
        # The boolean says whether the miner already was in that state: information only.
        if not isinstance(reply, bool):
            raise ProtocolError(self.miner_id, action, f"expected true or false, got {reply!r}")

    async def _configuration(self) -> dict[str, Any]:
        reply = await self._call("GET", CONFIGURATION_PATH, "configuration")
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

    async def _call(self, method: str, path: str, op: str, body: object = None) -> Any:  # noqa: ANN401 - JSON
        """One authenticated request; on 401 log in again and retry once."""
        for _ in range(2):
            token = await self._auth()
            response = await http.request(
                method,
                self._base + path,
                device=self.miner_id,
                op=op,
                timeout_s=self._ep.timeout_s,
                json_body=body,
                headers={"Authorization": token},
            )
            if response.status != HTTP_UNAUTHORIZED:
                self._token_fresh_until = time.monotonic() + self._token_reuse_s  # it slid on
                return self._judge(response, op)
            self._token = None  # expired, or the miner rebooted: one fresh login
        raise RejectedError(
            self.miner_id, op, "HTTP 401: the token was refused even after a fresh login", code=401
        )

    async def _auth(self) -> str:
        if self._token is not None and time.monotonic() < self._token_fresh_until:
            return self._token
        response = await http.request(
            "POST",
            f"{self._base}/auth/login",
            device=self.miner_id,
            op="login",
            timeout_s=self._ep.timeout_s,
            json_body={"username": self._username, "password": self._password},
        )
        if response.status in (HTTP_UNAUTHORIZED, HTTP_FORBIDDEN):
            raise AuthError(self.miner_id, "login", f"HTTP {response.status}: credentials refused")
        reply = self._judge(response, "login")
        try:
            token, timeout_s = reply["token"], float(reply["timeout_s"])
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolError(
                self.miner_id, "login", f"unexpected reply layout: {err!r}"
            ) from None
        if not isinstance(token, str) or not token or not math.isfinite(timeout_s):
            raise ProtocolError(self.miner_id, "login", "no usable token in the reply")
        self._token = token
        self._token_reuse_s = max(0.0, timeout_s * TOKEN_REUSE_FRACTION)
        self._token_fresh_until = time.monotonic() + self._token_reuse_s
        return token

    def _judge(self, response: http.Response, op: str) -> Any:  # noqa: ANN401 - JSON
        status = response.status
        if status in NOT_THERE:
            raise UnsupportedError(
                self.miner_id, op, f"HTTP {status}: the firmware does not offer this"
            )
        if not 200 <= status < 300:  # noqa: PLR2004 - the 2xx range
            text = response.body[:120].decode("utf-8", errors="replace").strip()
            raise RejectedError(self.miner_id, op, f"HTTP {status}: {text}", code=status)
        if not response.body.strip():
            return None
        return _loads(response.body, self.miner_id, op, status)


def target_profile(watts: int) -> str:
    """BOS+ has no named profiles: a reading's profile is its tuner's power target."""
    return f"{watts}W"


def parse_reading(
    replies: dict[str, Any], device: str, last: MinerReading | None = None
) -> MinerReading:
    """A reading from whichever replies were read; what is missing comes from `last`."""
    try:
        status = replies["details"]["status"]
        if status in MINING_STATUSES:
            mode = Mode.MINING
        elif status in IDLE_STATUSES:
            mode = Mode.SLEEPING
        else:
            raise ProtocolError(device, "read", f"unknown miner status {status!r}")
        stats = replies["stats"]
        watt = _path(stats, "power_stats", "approximated_consumption", "watt")
        if watt is None:
            if mode is Mode.MINING:
                raise ProtocolError(device, "read", "mining but no power estimate")
            power_w = TRAITS.sleep_power_w  # paused firmware may stop estimating
        else:
            power_w = round(_number(watt))
        ghs = _path(stats, "miner_stats", "real_hashrate", "last_5s", "gigahash_per_second")
        hashrate = 0.0 if ghs is None else round(_number(ghs) / 1000, 3)
        if "hashboards" in replies:
            boards = sorted(replies["hashboards"]["hashboards"], key=_board_order)
            temps = tuple(_board_temp(b) for b in boards if b.get("enabled", True))
            if any(math.isnan(t) for t in temps):
                temps = ()  # one board unknown: all count as cold (a NaN compares as warm)
        else:
            temps = last.board_temps_c if last is not None else ()
        if "mode" in replies:
            target = _path(replies["mode"], "tunermode", "target", "powertarget", "power_target")
            profile = None if target is None else target_profile(int(target["watt"]))
        else:
            profile = last.profile if last is not None else None
        return MinerReading(
            mode=mode, power_w=power_w, hashrate_ths=hashrate, board_temps_c=temps, profile=profile
        )
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError) as err:
        raise ProtocolError(device, "read", f"unexpected reply layout: {err!r}") from None


def _loads(body: bytes, device: str, op: str, status: int) -> Any:  # noqa: ANN401 - JSON
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        # Real BOS+ REST is clean serde JSON; a proxy or a half-written reply may not be.
        return json.loads(repair(text))
    except (ValueError, RecursionError):
        raise ProtocolError(
            device, op, f"HTTP {status}: unparseable reply ({len(body)} bytes): {text[:60]!r}"
        ) from None


def _path(value: Any, *keys: str) -> Any:  # noqa: ANN401 - JSON
    """value[k1][k2]..., None where a nullable level is null or absent."""
    for key in keys:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise TypeError(f"{key!r} is under a {type(value).__name__}, not an object")
        value = value.get(key)
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"not a finite number: {value!r}")
    return result


def _board_order(board: dict[str, Any]) -> tuple[int, str]:
    board_id = str(board["id"])
    return (int(board_id), "") if board_id.isdigit() else (1 << 30, board_id)


def _board_temp(board: dict[str, Any]) -> float:
    """The board sensor, else its hottest chip; NaN if the board reports neither."""
    temp = _path(board, "board_temp", "degree_c")
    if temp is None:
        temp = _path(board, "highest_chip_temp", "temperature", "degree_c")
    return float("nan") if temp is None else _number(temp)


def _target_limits(reply: object, device: str) -> tuple[int | None, int | None]:
    """(minimum, default) power target from GetConstraintsResponse; None where not given."""
    if reply is None:
        return None, None
    target = ("tuner_constraints", "power_target")
    return (
        _power_watt(reply, *target, "min", device=device, op="constraints"),
        _power_watt(reply, *target, "default", device=device, op="constraints"),
    )


def _power_watt(value: object, *keys: str, device: str, op: str = "configuration") -> int | None:
    """The watts of the Power object at value[k1][k2]... ({"watt": 1220}); None if null."""
    try:
        watt = _path(value, *keys, "watt")
        if watt is None:
            return None
        watts = round(_number(watt))
    except (TypeError, ValueError, OverflowError) as err:
        raise ProtocolError(device, op, f"unexpected power: {err!r}") from None
    if watts <= 0:
        raise ProtocolError(device, op, f"power target of {watts} W")
    return watts


def _quick_ramping(config: dict[str, Any], device: str) -> QuickRamping:
    try:
        board = config.get("hashboard_config") or {}  # none: firmware without the setting
        return QuickRamping(
            int(board.get("quick_ramping_time_up_s") or 0),
            int(board.get("quick_ramping_time_down_s") or 0),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ProtocolError(device, "configuration", f"unexpected layout: {err!r}") from None


def _cooling_mode(config: dict[str, Any], device: str) -> tuple[str, dict[str, Any]]:
    try:
        mode = config["temperature"]["mode"]
        (kind, fields), *rest = mode.items()
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ProtocolError(device, "configuration", f"no cooling mode: {err!r}") from None
    if rest or not isinstance(fields, dict):
        raise ProtocolError(device, "configuration", f"cooling mode is not one of: {mode!r}")
    return str(kind), fields


def _pause_json(fans: PauseFans) -> dict[str, Any]:
    if fans.speed_ratio is None:
        return {"mode": {"auto": {}}}
    runtime = RUNTIME_INDEFINITE if fans.indefinite else RUNTIME_LIMITED
    return {
        "mode": {
            "manual": {
                "pause_cooldown_fan_speed_ratio": fans.speed_ratio,
                "fan_pause_runtime": runtime,
            }
        }
    }


def _pause_fans(pause_mode: object, device: str) -> PauseFans | None:
    """The configured pause fans; None when the firmware reports no pause mode."""
    try:
        mode = _path(pause_mode, "mode")
        if mode is None:
            return None
        if "auto" in mode:
            return PauseFans()
        manual = mode["manual"]
        return PauseFans(
            _number(manual["pause_cooldown_fan_speed_ratio"]),
            manual.get("fan_pause_runtime") != RUNTIME_LIMITED,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ProtocolError(device, "configuration", f"unexpected pause mode: {err!r}") from None


ENTRY = MinerDriverEntry(
    name="braiins-os",
    factory=BraiinsOsMiner,
    traits=TRAITS,
    default_port=DEFAULT_PORT,
    summary="Braiins OS+ over REST API v1 on 80: pause/resume, power target, quick ramping, "
    "pause fans",
)
