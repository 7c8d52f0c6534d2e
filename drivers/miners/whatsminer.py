"""Whatsminer (MicroBT btminer) over its API v2 (TCP 4028) and API v3 (TCP 4433).

API v2: one JSON request per connection, the reply, then the miner closes (no NUL). Reads
are plaintext. Writes need a token: get_token gives salt, newsalt and time, md5-crypt of
the admin password yields the AES-256-ECB key and the token's sign, and the command travels
encrypted; the miner keeps a token 30 minutes, so we reuse ours and renew it once when the
miner says it has gone. API v3 (firmware from 2024-11): a 4-byte little-endian length and
JSON each way, several frames per connection; writes carry ts, account and an 8-character
token over cmd + password + salt + ts.

Sleep is power_off / `set.miner.service stop` (hashboards off, control board up); wake is
power_on / `start`, and a gentle wake (cold boards) first waits for pre_power_on /
`set.miner.pre_power_on` to finish the vendor's pre-heat. A power target uses
set_power_pct / `set.miner.power_percent`, which apply without a restart.
adjust_power_limit / `set.miner.power_limit` restart the mining process (minutes at low
draw, then a slow ramp), so they are offered as set_power_limit() for operators and never
used for a power target. Every write is verified by read-back.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import json
import math
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from passlib.hash import md5_crypt  # type: ignore[import-untyped]  # libpass ships no types

from drivers import readback
from drivers.deadline import within
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
from drivers.lacking import Lacking
from drivers.transport import admission, cgminer_tcp
from drivers.types import (
    Capability,
    DriverTraits,
    FanPause,
    MinerDriverEntry,
    MinerEndpoint,
    MinerReading,
    Mode,
)

V2_PORT = 4028
V3_PORT = 4433
V2_DEFAULT_PASSWORD = "admin"  # noqa: S105 - btminer's documented factory admin password
V3_DEFAULT_PASSWORD = "super"  # noqa: S105 - API v3 accounts default to their own names
V3_ACCOUNT = "super"  # the only account with write permission ("super=255 user1=0 ...")
V3_FIRST_FIRMWARE = 20241101  # firmware dated from 2024-11-01 speaks API v3 (pyasic, asic-rs)

CODE_INVALID_COMMAND = 14
CODE_INVALID_JSON = 23  # also what a command encrypted under the wrong password decrypts to
CODE_PERMISSION = 45  # permission denied; old daemons also use it for a refused join
CODE_COMMAND_ERROR = 132
CODE_TOKEN_CHECK = 135  # "check token err": expired or unknown token
CODE_TOKEN_MAX = 136  # "over max connect": the miner's token table is full
WRITE_LOCKED = "can't access write cmd"  # the write API was never switched on
BTMINER_DOWN = b"Socket connect failed"  # old API daemons say this while btminer is stopped

V3_CODE_FAIL = -1  # generic failure; a refused token lands here too
V3_CODE_INVALID = -2  # invalid command (or param)
V3_CODE_NO_PERMISSION = -4  # "no permission for write command": write API switched off

# The miner drops a token 30 min after it issued it; ours starts counting a little later.
TOKEN_REUSE_S = 25 * 60.0
TOKEN_RENEW_S = 20 * 60.0  # reads renew a token this old, so commands rarely have to
V3_MAX_FRAME_BYTES = 1 << 20  # btminer's largest replies (error lists) stay far below this
PRE_POWER_ON_POLLS = 4
PRE_POWER_ON_INTERVAL_S = 0.25  # Tether's client polls every 200 ms
# A gentle wake waits for the pre-heat to complete (it takes up to a minute) before power_on:
# a full-power start with cold boards fails. Each poll is a command, so not too often.
PREHEAT_POLL_S = 2.0
PREHEAT_WAIT_S = 70.0
# Where firmware does not report the percent it holds, draw decides: at most 10 % above the
# target, or at least 2 % below the draw before the command (still ramping down to it).
POWER_TARGET_SLACK = 1.10
POWER_TARGET_FALLING = 0.98

# power_off keeps the control board up: Tether's model of a suspended M56S draws 13 W.
# Hashing stops within ~15 s (field report, M64); draw is back within about a minute of
# power_on although full hashrate takes minutes. set_poweroff_cool selects whether the
# fans keep running while the hashboards are off.
TRAITS = DriverTraits(
    sleep_power_w=15,
    ramp_down_s=15.0,
    ramp_up_s=60.0,
    fans_when_asleep=FanPause.CONFIGURABLE,
    # A gentle wake is the pre-heat, then power_on at full power: no low start.
    gentle_fraction=None,
    gentle_extra_s=PREHEAT_WAIT_S + 5.0,  # the pre-heat wait, and slack for its deadline
)

Reply = dict[str, Any]
_T = TypeVar("_T")


# -- the cryptography, exactly as btminer and pyasic do it ---------------------------------


@dataclass(frozen=True, slots=True)
class V2Credentials:
    """What one get_token yields: the token's sign and the AES key for commands."""

    host_passwd_md5: str
    sign: str
    key: bytes


def v2_credentials(password: str, salt: str, newsalt: str, time_: str) -> V2Credentials:
    """md5-crypt the password with the miner's salt, then that plus `time` with newsalt."""
    host_passwd_md5 = _host_passwd_md5(password, salt)
    sign = _md5_crypt_body(host_passwd_md5 + time_, newsalt)
    key = hashlib.sha256(host_passwd_md5.encode()).digest()
    return V2Credentials(host_passwd_md5, sign, key)


def v2_encrypt(key: bytes, plaintext: bytes) -> str:
    """AES-256-ECB over the plaintext zero-padded to 16 bytes, base64 without newlines."""
    padded = plaintext + b"\0" * (-len(plaintext) % 16)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - the protocol's cipher
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def v2_decrypt(key: bytes, data: str) -> bytes:
    """The plaintext of a base64 AES-256-ECB block string, its padding removed.

    btminer pads with zero bytes; PKCS#7 is tolerated too (other firmware and mocks use it).
    Raises ValueError if `data` is not base64 of whole blocks."""
    try:
        raw = base64.b64decode(data, validate=False)
    except binascii.Error as err:
        raise ValueError(f"not base64: {err}") from None
    if not raw or len(raw) % 16:
        raise ValueError(f"{len(raw)} bytes is not a whole number of AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()  # noqa: S305 - the protocol's cipher
    plain = (decryptor.update(raw) + decryptor.finalize()).rstrip(b"\0")
    pad = plain[-1] if plain else 0
    if 1 <= pad <= 16 and plain.endswith(bytes([pad]) * pad):  # noqa: PLR2004 - AES block size
        plain = plain[:-pad]
    return plain


def v3_token(cmd: str, password: str, salt: str, ts: int) -> str:
    """The first 8 characters of base64(sha256(cmd + password + salt + ts))."""
    digest = hashlib.sha256(f"{cmd}{password}{salt}{ts}".encode()).digest()
    return base64.b64encode(digest).decode()[:8]


def firmware_date(firmware: str | None) -> int | None:
    """20250915 from "20250915.16.Rel2"; None if the version does not start with a date."""
    text = (firmware or "").strip().strip("'")
    return int(text[:8]) if len(text) >= 8 and text[:8].isdigit() else None  # noqa: PLR2004 - YYYYMMDD


@functools.lru_cache(maxsize=1024)
def _host_passwd_md5(password: str, salt: str) -> str:
    """The salt is the miner's stored one, the same for every token (and for every unit
    that shares a password), and pure-Python md5-crypt costs ~1.2 ms: derive it once."""
    return _md5_crypt_body(password, salt)


def _md5_crypt_body(secret: str, salt: str) -> str:
    result: str = md5_crypt.using(salt=salt).hash(secret)
    return result.split("$")[3]


# -- what a read yields --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WhatsminerState:
    """One read of a Whatsminer: the reading plus the settings writes are verified against."""

    reading: MinerReading
    power_limit_w: int | None  # the configured ceiling a power percent scales
    power_pct: int | None  # the percent the miner holds, where firmware reports it
    fan_rpm: int | None  # inlet fan speed
    poweroff_cool: bool | None = None  # fans kept running while off (API v3 reports it)


# What a v2 reading goes on without: `summary` (power) is what it needs; `status` gives the
# mode where the firmware reports it (else hashing decides), `edevs` the boards.
V2_OPTIONAL_READS = {
    "status": "the mode is judged by hashing; power targets are verified by the draw",
    "edevs": "readings carry no board temperatures (they count as cold)",
}
NO_LIMIT = "no power target (a power percent is of the limit)"


def parse_v2(
    device: str,
    status: Reply | None,
    summary: Reply,
    edevs: Reply | None,
    lacking: Lacking | None = None,
) -> WhatsminerState:
    """A state from API v2 `status`, `summary` and `edevs` replies (None: the firmware
    lacks that command); the summary fields a mining miner's firmware lacks are learnt."""
    try:
        msg = _object(status["Msg"]) if status is not None else {}
        row = _first(summary, "SUMMARY", device)
        boards = cgminer_tcp.section(edevs, "DEVS", device=device, op="edevs") if edevs else []
        hashrate_mhs = row["MHS 1m"] if "MHS 1m" in row else row["MHS av"]
        hashrate_ths = round(_number(hashrate_mhs) / 1e6, 3)
        mode = _v2_mode(msg, hashrate_ths)
        power = _number(row["Power"])
        if power < 0 and mode is Mode.SLEEPING:
            power = TRAITS.sleep_power_w  # -1: the PSU gave no figure; only the board runs
        if power < 0:
            _no_power(device)
        reading = MinerReading(
            mode=mode,
            power_w=round(power),
            hashrate_ths=hashrate_ths if mode is Mode.MINING else 0.0,
            board_temps_c=tuple(_number(board["Temperature"]) for board in boards),
            profile=str(row["Power Mode"]).lower() if "Power Mode" in row else None,
        )
        if lacking is not None and mode is Mode.MINING and "Power Limit" not in row:
            lacking.learn("summary:Power Limit", NO_LIMIT)
        limit = _number(row.get("Power Limit", 0))
        pct = str(msg.get("power_pct", "")).strip()
        return WhatsminerState(
            reading=reading,
            power_limit_w=round(limit) if limit > 0 else None,
            power_pct=int(pct) if pct.isdigit() else None,
            fan_rpm=round(_number(row["Fan Speed In"])) if "Fan Speed In" in row else None,
        )
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as err:
        raise ProtocolError(device, "read", f"unexpected reply layout: {err!r}") from None


def parse_v3(
    device: str,
    info: Reply,
    status: Reply,
    setting: Reply | None,
    lacking: Lacking | None = None,
) -> WhatsminerState:
    """A state from API v3 `get.device.info` (miner), `get.miner.status` (summary+edevs)
    and `get.miner.setting` replies (None: the firmware lacks it, and the percent held is
    unknown); the summary fields a mining miner's firmware lacks are learnt."""
    try:
        miner = info["msg"]["miner"]
        summary = status["msg"]["summary"]
        settings = setting["msg"] if setting is not None else {}
        mode = Mode.MINING if str(miner["working"]).lower() == "true" else Mode.SLEEPING
        temps = summary.get("board-temperature")
        if not isinstance(temps, list):
            temps = [board["chip-temp-avg"] for board in status["msg"].get("edevs", [])]
        pct = round(_number(settings.get("power-percent", 0)))
        if lacking is not None and mode is Mode.MINING and "power-limit" not in summary:
            lacking.learn("get.miner.status:power-limit", NO_LIMIT)
        limit = _number(summary.get("power-limit", 0))
        reading = MinerReading(
            mode=mode,
            power_w=round(_number(summary["power-realtime"])),
            hashrate_ths=round(_number(summary["hash-realtime"]), 3)
            if mode is Mode.MINING
            else 0.0,
            board_temps_c=tuple(_number(t) for t in temps),
            profile=str(settings["power-mode"]).lower() if "power-mode" in settings else None,
        )
        return WhatsminerState(
            reading=reading,
            power_limit_w=round(limit) if limit > 0 else None,
            # 0: no percent set, the miner runs at its full limit
            power_pct=(pct or 100) if setting is not None else None,
            fan_rpm=round(_number(summary["fan-speed-in"])) if "fan-speed-in" in summary else None,
        )
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError) as err:
        # AttributeError: a section that should be an object came as a list or a string.
        raise ProtocolError(device, "read", f"unexpected reply layout: {err!r}") from None


def _v2_mode(msg: dict[str, Any], hashrate_ths: float) -> Mode:
    # New firmware (API 2.0.4+) says "mineroff"; older says "btmineroff" (btminer stopped).
    for key in ("mineroff", "btmineroff"):
        if key in msg:
            return Mode.SLEEPING if str(msg[key]).lower() == "true" else Mode.MINING
    return Mode.MINING if hashrate_ths > 0 else Mode.SLEEPING


def _object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{value!r} is not an object")
    return value


def _no_power(device: str) -> NoReturn:
    raise ProtocolError(device, "read", "the miner reports no power figure while mining")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _first(reply: Reply, name: str, device: str) -> dict[str, Any]:
    items = cgminer_tcp.section(reply, name, device=device, op=name.lower())
    if not items:
        raise ProtocolError(device, name.lower(), f"{name} is empty")
    return items[0]


def _percent(device: str, watts: int, state: WhatsminerState) -> int:
    """The power percent that keeps draw at or below `watts`, from the miner's power limit."""
    if watts <= 0:
        raise RejectedError(device, "set_power_target", f"invalid power target {watts} W")
    if state.power_limit_w is None:
        raise UnsupportedError(
            device, "set_power_target", "the miner reports no power limit to take a percent of"
        )
    return max(1, min(100, watts * 100 // state.power_limit_w))


def _holds_percent(
    pct: int, watts: int, before: WhatsminerState
) -> Callable[[WhatsminerState], bool]:
    def done(state: WhatsminerState) -> bool:
        if state.power_pct is not None:
            return state.power_pct == pct
        draw = state.reading.power_w
        return draw <= watts * POWER_TARGET_SLACK or (
            draw <= before.reading.power_w * POWER_TARGET_FALLING
        )

    return done


def _asleep(state: WhatsminerState) -> bool:
    return state.reading.mode is Mode.SLEEPING


def _mining(state: WhatsminerState) -> bool:
    return state.reading.mode is Mode.MINING


async def _verify(
    device: str,
    read: Callable[[], Awaitable[WhatsminerState]],
    op: str,
    done: Callable[[WhatsminerState], bool],
    unanswered: DriverError | None = None,
) -> MinerReading:
    """Read back until `done`; VerificationError (or the write's own silence) if never."""
    state, shown = await readback.until(read, done)
    if shown:
        return state.reading
    if unanswered is not None:
        raise unanswered  # never acknowledged and not done: the silence is the cause
    reading = state.reading
    raise VerificationError(
        device,
        op,
        f"acknowledged {op} but reads back {reading.mode.value} at {reading.power_w} W",
        reading,
    )


def _preheat_progress(msg: object) -> bool | None:
    """Whether pre_power_on's reply says the pre-heat is complete; None if it says nothing
    ({"complete": "false", "msg": "wait for adjust temp"} until it is)."""
    if not isinstance(msg, dict) or "complete" not in msg:
        return None
    return str(msg["complete"]).lower() == "true"


async def _until_pre_heated(device: str, poll: Callable[[], Awaitable[bool | None]]) -> None:
    """Poll the pre-heat until it completes, for at most PREHEAT_WAIT_S.

    Still warming at the deadline: DeviceTimeoutError, without power_on (it would fail on
    cold boards; the firmware keeps warming for the next try). Firmware that reports no
    progress has warmed for the whole wait, and may start."""
    silent = False  # the last reply said nothing about progress
    try:
        with within(PREHEAT_WAIT_S):
            while not (progress := await poll()):
                silent = progress is None
                await asyncio.sleep(PREHEAT_POLL_S)
    except TimeoutError:
        if silent:
            return
        raise DeviceTimeoutError(
            device,
            "pre_power_on",
            f"pre-heat not complete within {PREHEAT_WAIT_S:g} s; not powering on cold boards",
        ) from None


TARGET = "a power target"
NO_PERCENT = "no power target (no power percent)"
NO_PREHEAT = "wakes power on without the vendor's pre-heat"
V3_NO_SETTING = "readings carry no power mode; power targets are verified by the draw"
V3_NO_FANS = "fans while off are verified by their speed while asleep"


# What a power target needs: the percent command, and the limit it is a percent of.
V2_TARGET_NEEDS = ("set_power_pct", "summary:Power Limit")
V3_TARGET_NEEDS = ("set.miner.power_percent", "get.miner.status:power-limit")


def _capabilities(lacking: Lacking, needs: tuple[str, ...]) -> frozenset[Capability]:
    if any(name in lacking for name in needs):
        return frozenset({Capability.SLEEP})
    return frozenset({Capability.SLEEP, Capability.POWER_TARGET})


def _power_target_offered(lacking: Lacking, needs: tuple[str, ...]) -> None:
    """UnsupportedError, without a write, once the firmware has shown it has no target."""
    missing = [name for name in needs if name in lacking]
    if missing:
        raise lacking.essential(" and ".join(missing), "set_power_target", TARGET)


def _v3_lacks(err: RejectedError) -> bool:
    """An API v3 "invalid command" (-2 also answers an invalid param; that one says so)."""
    return err.code == V3_CODE_INVALID and "param" not in err.detail.lower()


# -- API v2 --------------------------------------------------------------------------------


class _BtminerDownError(RejectedError):
    """An old API daemon answered for a stopped btminer."""


@dataclass(frozen=True, slots=True)
class _Token:
    credentials: V2Credentials
    obtained_s: float  # time.monotonic()


class WhatsminerV2Miner:
    """One Whatsminer over API v2 on TCP 4028. At most one call is in flight at a time."""

    api = "v2"

    def __init__(self, endpoint: MinerEndpoint) -> None:
        self._ep = endpoint
        self._password = endpoint.password or V2_DEFAULT_PASSWORD
        self._lock = asyncio.Lock()
        self._token: _Token | None = None
        self._joined = True  # "summary+edevs" joins until the firmware refuses them
        self.lacking = Lacking(endpoint.miner_id)  # commands and fields this build lacks
        self.firmware: str | None = None
        self.model: str | None = None
        self.api_version: str | None = None

    @property
    def miner_id(self) -> str:
        return self._ep.miner_id

    @property
    def capabilities(self) -> frozenset[Capability]:
        return _capabilities(self.lacking, V2_TARGET_NEEDS)

    async def probe(self) -> None:
        """Learn firmware, API version and model; UnsupportedError if this is no btminer."""
        async with self._lock:
            await self._get_version()
            try:
                details = await self._plain("devdetails")
            except _BtminerDownError:
                return  # btminer is stopped: the model is unknown until it runs again
            except RejectedError as err:
                if err.code != CODE_INVALID_COMMAND:
                    raise
                # get_version answered in btminer's own shape: that identifies it.
                self.lacking.learn("devdetails", "the model stays unknown")
                return
        if "bitmicro" not in json.dumps(details).lower():
            raise UnsupportedError(self.miner_id, "probe", "the device is not a Whatsminer")
        model = _first(details, "DEVDETAILS", self.miner_id).get("Model")
        self.model = str(model) if model else None

    async def firmware_version(self) -> str | None:
        """The firmware version from get_version (a plaintext read)."""
        async with self._lock:
            await self._get_version()
        return self.firmware

    async def read(self) -> MinerReading:
        async with self._lock:
            reading = (await self._read_state()).reading
            # Renew the token off the command path: one costs a pure-Python md5-crypt
            # (~1 ms), and thousands at a curtailment's start would hold the fan-out back
            # by seconds. Best effort: a failure shows, typed, on the next command.
            with contextlib.suppress(DriverError):
                await self._credentials(max_age_s=TOKEN_RENEW_S)
            return reading

    async def sleep(self) -> MinerReading:
        async with self._lock:
            # respbefore: answer first, then switch off (the switch-off may take the reply).
            unanswered = await self._command_allowing_silence("power_off", respbefore="true")
            return await self._verify("sleep", _asleep, unanswered)

    async def wake(
        self,
        *,
        gentle: bool = False,
        step_up: bool = False,  # noqa: ARG002 - no low level to step up from (pre-heat)
    ) -> MinerReading:
        """power_on; gentle: only once pre_power_on reports the pre-heat complete."""
        async with self._lock:
            if gentle:
                await _until_pre_heated(self.miner_id, self._poll_pre_heat)
            else:
                await self._pre_heat()
            await self._command("power_on")
            return await self._verify("wake", _mining)

    async def set_profile(self, profile: str) -> MinerReading:
        raise UnsupportedError(
            self.miner_id, "set_profile", f"no named profiles ({profile!r}); use a power target"
        )

    async def set_power_target(self, watts: int) -> MinerReading:
        """set_power_pct of the miner's power limit: applies without a restart."""
        async with self._lock:
            before = await self._read_state()
            _power_target_offered(self.lacking, V2_TARGET_NEEDS)
            pct = _percent(self.miner_id, watts, before)
            try:
                await self._command("set_power_pct", percent=str(pct))
            except RejectedError as err:
                if err.code != CODE_INVALID_COMMAND:
                    raise
                self.lacking.learn("set_power_pct", NO_PERCENT)
                raise self.lacking.essential("set_power_pct", "set_power_target", TARGET) from None
            return await self._verify("set_power_target", _holds_percent(pct, watts, before))

    async def set_power_limit(self, watts: int) -> MinerReading:
        """adjust_power_limit: RESTARTS the mining process (minutes at low draw, then a slow
        ramp); for operators, never for curtailment."""
        async with self._lock:
            unanswered = await self._command_allowing_silence(
                "adjust_power_limit", power_limit=str(watts)
            )
            return await self._verify(
                "set_power_limit", lambda s: s.power_limit_w == watts, unanswered
            )

    async def set_fans_when_asleep(self, running: bool) -> MinerReading:
        """set_poweroff_cool. API v2 has no read of the setting: the fans are checked only
        while the miner is asleep, when they show it."""
        async with self._lock:
            await self._command("set_poweroff_cool", poweroff_cool=int(running))
            return await self._verify(
                "set_fans_when_asleep",
                lambda s: s.reading.mode is Mode.MINING or (bool(s.fan_rpm) == running),
            )

    async def reclaim(self) -> None:
        """Nothing a dead process could have left held: writes take no session."""

    async def close(self) -> None:
        """Nothing is held between calls: one connection per request."""

    # -- internals -------------------------------------------------------------------------

    async def _verify(
        self,
        op: str,
        done: Callable[[WhatsminerState], bool],
        unanswered: DriverError | None = None,
    ) -> MinerReading:
        return await _verify(self.miner_id, self._read_state, op, done, unanswered)

    async def _get_version(self) -> None:
        reply = await self._plain("get_version")
        try:
            msg = reply["Msg"]
            self.firmware = str(msg["fw_ver"]).strip("'")
            self.api_version = str(msg["api_ver"]) if "api_ver" in msg else None
        except (KeyError, TypeError) as err:
            raise ProtocolError(
                self.miner_id, "get_version", f"unexpected reply: {err!r}"
            ) from None

    async def _read_state(self) -> WhatsminerState:
        status = (await self._reads(("status",))).get("status")
        try:
            replies = await self._summary_and_boards()
        except _BtminerDownError:
            msg = status.get("Msg") if status is not None else None
            if not isinstance(msg, dict) or str(msg.get("btmineroff")).lower() != "true":
                raise
            # Old firmware: with btminer stopped only the control board runs.
            reading = MinerReading(Mode.SLEEPING, TRAITS.sleep_power_w, 0.0, ())
            return WhatsminerState(reading, None, None, None)
        summary, edevs = replies["summary"], replies.get("edevs")
        return parse_v2(self.miner_id, status, summary, edevs, self.lacking)

    async def _summary_and_boards(self) -> dict[str, Reply]:
        parts = self.lacking.filter(("summary", "edevs"))
        if self._joined and len(parts) > 1:
            try:
                reply = await self._plain("+".join(parts))
            except RejectedError as err:
                if isinstance(err, _BtminerDownError) or err.code not in (
                    CODE_INVALID_COMMAND,
                    CODE_PERMISSION,
                ):
                    raise
                self._joined = False  # this firmware answers one command at a time
            else:
                replies = {}
                for part in parts:
                    answer = _part(reply, part, self.miner_id)
                    try:
                        self._check(answer, part, write=False)  # a part it lacks says so alone
                    except RejectedError as err:
                        self._lacks(part, err)
                    else:
                        replies[part] = answer
                return replies
        return await self._reads(parts)

    async def _reads(self, parts: tuple[str, ...]) -> dict[str, Reply]:
        """Each read command's reply, one request each; those the firmware lacks left out."""
        replies = {}
        for part in self.lacking.filter(parts):
            try:
                replies[part] = await self._plain(part)
            except RejectedError as err:
                self._lacks(part, err)
        return replies

    def _lacks(self, part: str, err: RejectedError) -> None:
        """A read refused: learnt if the firmware lacks an optional one, else raised."""
        if isinstance(err, _BtminerDownError) or err.code != CODE_INVALID_COMMAND:
            raise err
        if part not in V2_OPTIONAL_READS:
            raise self.lacking.essential(part, "read", "every reading") from None
        self.lacking.learn(part, V2_OPTIONAL_READS[part])

    async def _plain(self, cmd: str) -> Reply:
        payload = json.dumps({"cmd": cmd}, separators=(",", ":")).encode()
        reply = self._decode(await self._exchange(payload, cmd), cmd)
        self._check(reply, cmd, write=False)
        return reply

    async def _credentials(self, max_age_s: float = TOKEN_REUSE_S) -> V2Credentials:
        token = self._token
        if token is not None and time.monotonic() - token.obtained_s < max_age_s:
            return token.credentials
        try:
            reply = await self._plain("get_token")
        except RejectedError as err:
            if err.code == CODE_TOKEN_MAX:
                raise SessionBusyError(
                    self.miner_id,
                    "get_token",
                    "the miner's token table is full: other clients hold every slot (code 136)",
                    code=err.code,
                ) from None
            if err.code == CODE_PERMISSION:
                raise self._locked("get_token", err.detail) from None
            raise
        try:
            msg = reply["Msg"]
            credentials = v2_credentials(
                self._password, str(msg["salt"]), str(msg["newsalt"]), str(msg["time"])
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolError(self.miner_id, "get_token", f"unusable token: {err!r}") from None
        self._token = _Token(credentials, time.monotonic())
        return credentials

    async def _command(self, cmd: str, **params: object) -> Reply:
        """An encrypted command; an expired token is renewed once."""
        for attempt in range(2):
            credentials = await self._credentials()
            try:
                return await self._encrypted(credentials, cmd, params)
            except RejectedError as err:
                if err.code not in (CODE_TOKEN_CHECK, CODE_TOKEN_MAX):
                    raise
                self._token = None
                if attempt:
                    raise RejectedError(
                        self.miner_id, cmd, f"{err.detail}, again with a fresh token", err.code
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _command_allowing_silence(self, cmd: str, **params: object) -> DriverError | None:
        """Some firmware carries out power_off and adjust_power_limit without answering
        (asic-rs, live): a timeout is returned for the read-back to judge, not raised."""
        try:
            await self._command(cmd, **params)
        except DeviceTimeoutError as err:
            if self._token is None:
                raise  # the timeout hit get_token: the command was never sent
            return err
        return None

    async def _encrypted(
        self, credentials: V2Credentials, cmd: str, params: dict[str, object]
    ) -> Reply:
        body = json.dumps({"cmd": cmd, **params, "token": credentials.sign}).encode()
        envelope = {"enc": 1, "data": v2_encrypt(credentials.key, body)}
        payload = json.dumps(envelope, separators=(",", ":")).encode()
        reply = self._decode(await self._exchange(payload, cmd), cmd)
        sealed = reply.get("enc")
        if isinstance(sealed, str):  # errors come back in plaintext, results encrypted
            try:
                opened = json.loads(v2_decrypt(credentials.key, sealed))
            except ValueError as err:
                raise ProtocolError(self.miner_id, cmd, f"undecryptable reply: {err}") from None
            if not isinstance(opened, dict):
                raise ProtocolError(self.miner_id, cmd, "decrypted reply is not an object")
            reply = opened
        self._check(reply, cmd, write=True)
        return reply

    async def _pre_heat(self) -> None:
        """pre_power_on warms the hashboards so that power_on reaches full hashrate sooner.
        A plain wake waits for it only briefly: its boards are warm enough to start (a
        gentle wake is for cold ones), and the wake matters more than a faster ramp."""
        for poll in range(PRE_POWER_ON_POLLS):
            if await self._poll_pre_heat():
                return
            if poll + 1 < PRE_POWER_ON_POLLS:
                await asyncio.sleep(PRE_POWER_ON_INTERVAL_S)

    async def _poll_pre_heat(self) -> bool | None:
        """One pre_power_on: its progress (see _preheat_progress); True without one."""
        if "pre_power_on" in self.lacking:
            return True
        try:
            reply = await self._command("pre_power_on")
        except RejectedError as err:
            if err.code not in (CODE_INVALID_COMMAND, CODE_COMMAND_ERROR):
                raise
            self.lacking.learn("pre_power_on", NO_PREHEAT)
            return True
        return _preheat_progress(reply.get("Msg"))

    async def _exchange(self, payload: bytes, op: str) -> bytes:
        return await cgminer_tcp.exchange(
            self._ep.host,
            self._ep.port,
            payload,
            timeout_s=self._ep.timeout_s,
            device=self.miner_id,
            op=op,
        )

    def _decode(self, raw: bytes, op: str) -> Reply:
        if raw.lstrip().startswith(BTMINER_DOWN):
            raise _BtminerDownError(self.miner_id, op, "btminer is not running")
        return cgminer_tcp.decode(raw, device=self.miner_id, op=op)

    def _check(self, reply: Reply, op: str, *, write: bool) -> None:
        """Raise for an error reply, cgminer style (STATUS list) or btminer style (string)."""
        status = reply.get("STATUS")
        if not isinstance(status, str):
            if status is None and not any(isinstance(v, list) for v in reply.values()):
                raise ProtocolError(self.miner_id, op, "reply has no STATUS")
            cgminer_tcp.check_status(reply, device=self.miner_id, op=op)
            return
        if status in ("S", "I"):
            return
        raw_code = reply.get("Code")
        code = raw_code if isinstance(raw_code, int) else None
        msg = str(reply.get("Msg", ""))
        if write and (msg == WRITE_LOCKED or code == CODE_PERMISSION):
            raise self._locked(op, f"code {code}: {msg}")
        if write and code == CODE_INVALID_JSON:
            raise AuthError(
                self.miner_id,
                op,
                "the miner could not read our encrypted command (code 23): wrong admin password?",
            )
        raise RejectedError(self.miner_id, op, f"code {code}: {msg}", code=code)

    def _locked(self, op: str, detail: str) -> AuthError:
        return AuthError(
            self.miner_id,
            op,
            f"write API refused ({detail}): switch the API on and set the admin password "
            "with WhatsMinerTool",
        )


def _part(reply: Reply, part: str, device: str) -> Reply:
    value = reply.get(part)
    if not isinstance(value, list) or not value or not isinstance(value[0], dict):
        raise ProtocolError(device, "read", f"joined reply has no {part!r} part")
    result: Reply = value[0]
    return result


# -- API v3 --------------------------------------------------------------------------------


class _FrameTooLargeError(Exception):
    pass


class _V3Link:
    """One connection to API v3: a frame out, a frame back, as often as needed. Each
    exchange has the endpoint's deadline, as a request of any other family has: a read
    is three or four frames on one connection."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout_s = timeout_s

    async def call(self, request: dict[str, Any], *, device: str, op: str) -> Reply:
        body = json.dumps(request, separators=(",", ":")).encode()
        with within(self._timeout_s):
            self._writer.write(struct.pack("<I", len(body)) + body)
            (size,) = struct.unpack("<I", await self._reader.readexactly(4))
            if size > V3_MAX_FRAME_BYTES:
                raise _FrameTooLargeError(size)
            raw = await self._reader.readexactly(size)
        reply = cgminer_tcp.decode(raw, device=device, op=op)
        if not isinstance(reply.get("code"), int):
            raise ProtocolError(device, op, "reply has no code")
        return reply


class WhatsminerV3Miner:
    """One Whatsminer over API v3 on TCP 4433 (endpoint.web_port). One call at a time."""

    api = "v3"

    def __init__(self, endpoint: MinerEndpoint) -> None:
        self._ep = endpoint
        self._port = endpoint.web_port or V3_PORT
        self._password = endpoint.password or V3_DEFAULT_PASSWORD
        self._lock = asyncio.Lock()
        self._salt: str | None = None  # stable while the miner runs; refetched when refused
        self.lacking = Lacking(endpoint.miner_id)  # commands and fields this build lacks
        self.firmware: str | None = None
        self.model: str | None = None
        self.api_version: str | None = None

    @property
    def miner_id(self) -> str:
        return self._ep.miner_id

    @property
    def capabilities(self) -> frozenset[Capability]:
        return _capabilities(self.lacking, V3_TARGET_NEEDS)

    async def probe(self) -> None:
        async with self._lock:
            reply = await self._session("probe", lambda link: self._get(link, "get.device.info"))
        try:
            msg = reply["msg"]
            self.firmware = str(msg["system"]["fwversion"])
            self.api_version = str(msg["system"]["api"])
            self.model = str(msg["miner"]["type"])
        except (KeyError, TypeError) as err:
            raise ProtocolError(self.miner_id, "probe", f"unexpected reply: {err!r}") from None

    async def read(self) -> MinerReading:
        async with self._lock:
            return (await self._read_state()).reading

    async def sleep(self) -> MinerReading:
        async with self._lock:
            await self._write("set.miner.service", "stop")
            return await self._verify("sleep", _asleep)

    async def wake(
        self,
        *,
        gentle: bool = False,
        step_up: bool = False,  # noqa: ARG002 - no low level to step up from (pre-heat)
    ) -> MinerReading:
        """start; gentle: only once set.miner.pre_power_on reports the pre-heat complete."""
        # A plain wake does not pre-heat: v2's brief wait only shortens the ramp a little,
        # and the command is missing from the 3.0.x command lists (firmware may lack it).
        async with self._lock:
            if gentle:
                await _until_pre_heated(self.miner_id, self._poll_pre_heat)
            await self._write("set.miner.service", "start")
            return await self._verify("wake", _mining)

    async def set_profile(self, profile: str) -> MinerReading:
        raise UnsupportedError(
            self.miner_id, "set_profile", f"no named profiles ({profile!r}); use a power target"
        )

    async def set_power_target(self, watts: int) -> MinerReading:
        """set.miner.power_percent of the power limit: applies without a restart."""
        async with self._lock:
            before = await self._read_state()
            _power_target_offered(self.lacking, V3_TARGET_NEEDS)
            pct = _percent(self.miner_id, watts, before)
            cmd = "set.miner.power_percent"
            try:
                await self._write(cmd, pct)
            except RejectedError as err:
                if not _v3_lacks(err):
                    raise
                self.lacking.learn(cmd, NO_PERCENT)
                raise self.lacking.essential(cmd, "set_power_target", TARGET) from None
            return await self._verify("set_power_target", _holds_percent(pct, watts, before))

    async def set_power_limit(self, watts: int) -> MinerReading:
        """set.miner.power_limit: the miner RESTARTS to apply it (minutes at low draw)."""
        async with self._lock:
            await self._write("set.miner.power_limit", watts)
            return await self._verify("set_power_limit", lambda s: s.power_limit_w == watts)

    async def set_fans_when_asleep(self, running: bool) -> MinerReading:
        """set.fan.poweroff_cool, read back from get.fan.setting."""
        async with self._lock:
            await self._write("set.fan.poweroff_cool", int(running))

            def done(s: WhatsminerState) -> bool:
                if s.poweroff_cool is not None:
                    return s.poweroff_cool is running
                # Without get.fan.setting, as on API v2: the fans show it while asleep.
                return s.reading.mode is Mode.MINING or bool(s.fan_rpm) == running

            return await self._verify("set_fans_when_asleep", done, fans=True)

    async def reclaim(self) -> None:
        """Nothing a dead process could have left held: writes take no session."""

    async def close(self) -> None:
        """Nothing is held between calls: one connection per call."""

    # -- internals -------------------------------------------------------------------------

    async def _verify(
        self,
        op: str,
        done: Callable[[WhatsminerState], bool],
        *,
        fans: bool = False,
    ) -> MinerReading:
        return await _verify(self.miner_id, lambda: self._read_state(fans=fans), op, done)

    async def _poll_pre_heat(self) -> bool | None:
        """One set.miner.pre_power_on: its progress, in v2's shape (inferred: no capture
        has it); True where the firmware has no such command."""
        cmd = "set.miner.pre_power_on"
        if cmd in self.lacking:
            return True
        try:
            reply = await self._write(cmd, None)
        except RejectedError as err:
            if not _v3_lacks(err):
                raise
            self.lacking.learn(cmd, NO_PREHEAT)
            return True
        return _preheat_progress(reply.get("msg"))

    async def _read_state(self, *, fans: bool = False) -> WhatsminerState:
        async def steps(link: _V3Link) -> WhatsminerState:
            info = await self._needed(link, "get.device.info", "miner")
            status = await self._needed(link, "get.miner.status", "summary+edevs")
            setting = await self._optional(link, "get.miner.setting", V3_NO_SETTING)
            state = parse_v3(self.miner_id, info, status, setting, self.lacking)
            if not fans:
                return state
            fan_setting = await self._optional(link, "get.fan.setting", V3_NO_FANS)
            if fan_setting is None:
                return state
            try:
                cool = str(fan_setting["msg"]["poweroff-cool"]).lower() in ("1", "true", "enable")
            except (KeyError, TypeError) as err:
                raise ProtocolError(
                    self.miner_id, "read", f"unexpected fan settings: {err!r}"
                ) from None
            return WhatsminerState(
                state.reading, state.power_limit_w, state.power_pct, state.fan_rpm, cool
            )

        return await self._session("read", steps)

    async def _needed(self, link: _V3Link, cmd: str, param: str) -> Reply:
        """A read every reading needs: UnsupportedError where the firmware lacks it."""
        try:
            return await self._get(link, cmd, param)
        except RejectedError as err:
            if not _v3_lacks(err):
                raise
            raise self.lacking.essential(cmd, "read", "every reading") from None

    async def _optional(self, link: _V3Link, cmd: str, without: str) -> Reply | None:
        """A read the firmware may lack: None, learnt once, where it does."""
        if cmd in self.lacking:
            return None
        try:
            return await self._get(link, cmd)
        except RejectedError as err:
            if not _v3_lacks(err):
                raise
            self.lacking.learn(cmd, without)
            return None

    async def _get(self, link: _V3Link, cmd: str, param: str | None = None) -> Reply:
        request: dict[str, Any] = {"cmd": cmd}
        if param is not None:
            request["param"] = param
        reply = await link.call(request, device=self.miner_id, op=cmd)
        self._check(reply, cmd)
        return reply

    async def _write(self, cmd: str, param: object) -> Reply:
        async def steps(link: _V3Link) -> Reply:
            for attempt in range(2):
                if self._salt is None or attempt:
                    self._salt = await self._fetch_salt(link)
                ts = int(time.time())
                request = {
                    "cmd": cmd,
                    "ts": ts,
                    "account": V3_ACCOUNT,
                    "token": v3_token(cmd, self._password, self._salt, ts),
                }
                if param is not None:
                    request["param"] = param
                reply = await link.call(request, device=self.miner_id, op=cmd)
                if reply["code"] == V3_CODE_FAIL:
                    if not attempt:
                        continue  # the salt changes when the miner restarts: fetch it anew
                    if not _mentions_auth(reply.get("msg")):
                        # -1 is any failure; only one that names the token is about auth.
                        raise RejectedError(
                            self.miner_id, cmd, f"code -1: {reply.get('msg')}", code=V3_CODE_FAIL
                        )
                    raise AuthError(
                        self.miner_id,
                        cmd,
                        f"token refused again with a fresh salt ({reply.get('msg')!r}): "
                        f"check the password of account {V3_ACCOUNT!r}",
                    )
                self._check(reply, cmd)
                return reply
            raise AssertionError("unreachable")  # pragma: no cover

        return await self._session(cmd, steps)

    async def _fetch_salt(self, link: _V3Link) -> str:
        reply = await self._get(link, "get.device.info", "salt")
        salt = reply["msg"].get("salt") if isinstance(reply.get("msg"), dict) else None
        if not isinstance(salt, str) or not salt:
            raise ProtocolError(self.miner_id, "get.device.info", "no salt in the reply")
        return salt

    def _check(self, reply: Reply, op: str) -> None:
        code = reply["code"]
        if code == 0:
            return
        msg = reply.get("msg")
        if code == V3_CODE_NO_PERMISSION:
            raise AuthError(
                self.miner_id,
                op,
                f"write API refused ({msg!r}): switch it on with WhatsMinerTool",
            )
        raise RejectedError(self.miner_id, op, f"code {code}: {msg}", code=code)

    async def _session(self, op: str, steps: Callable[[_V3Link], Awaitable[_T]]) -> _T:
        """One connection under one deadline, its failures turned into DriverErrors."""
        host, port, timeout_s = self._ep.host, self._port, self._ep.timeout_s
        writer: asyncio.StreamWriter | None = None
        try:
            async with admission.gate():
                with within(timeout_s):
                    reader, writer = await asyncio.open_connection(host, port)
                return await steps(_V3Link(reader, writer, timeout_s))
        except TimeoutError:
            stage = "no connection" if writer is None else "no complete reply"
            raise DeviceTimeoutError(self.miner_id, op, f"{stage} within {timeout_s:g} s") from None
        except ConnectionRefusedError:
            raise UnreachableError(
                self.miner_id, op, f"connection refused by {host}:{port}"
            ) from None
        except asyncio.IncompleteReadError as err:
            raise ProtocolError(
                self.miner_id, op, f"connection closed {len(err.partial)} bytes into a frame"
            ) from None
        except _FrameTooLargeError as err:
            raise ProtocolError(self.miner_id, op, f"frame of {err} bytes announced") from None
        except OSError as err:
            raise UnreachableError(
                self.miner_id, op, f"{host}:{port}: {err.strerror or err}"
            ) from None
        finally:
            if writer is not None:
                writer.close()


def _mentions_auth(msg: object) -> bool:
    text = str(msg).lower()
    return any(word in text for word in ("token", "auth", "password", "permission"))


# -- the API chosen from the firmware ------------------------------------------------------


class WhatsminerMiner:
    """A Whatsminer whose API is chosen on first use, from the firmware date get_version
    reports on 4028, and kept (firmware upgrades need a daemon restart)."""

    def __init__(self, endpoint: MinerEndpoint) -> None:
        self._ep = endpoint
        self._choosing = asyncio.Lock()
        self._chosen: WhatsminerV2Miner | WhatsminerV3Miner | None = None

    @property
    def miner_id(self) -> str:
        return self._ep.miner_id

    @property
    def capabilities(self) -> frozenset[Capability]:
        if self._chosen is not None:
            return self._chosen.capabilities  # less where the firmware lacks a part
        return frozenset({Capability.SLEEP, Capability.POWER_TARGET})  # the same on both APIs

    @property
    def lacking(self) -> Lacking | None:
        return None if self._chosen is None else self._chosen.lacking

    @property
    def api(self) -> str | None:
        return None if self._chosen is None else self._chosen.api

    @property
    def firmware(self) -> str | None:
        return None if self._chosen is None else self._chosen.firmware

    @property
    def model(self) -> str | None:
        return None if self._chosen is None else self._chosen.model

    async def probe(self) -> None:
        await (await self._impl()).probe()

    async def read(self) -> MinerReading:
        return await (await self._impl()).read()

    async def sleep(self) -> MinerReading:
        return await (await self._impl()).sleep()

    async def wake(
        self,
        *,
        gentle: bool = False,
        step_up: bool = False,
    ) -> MinerReading:
        return await (await self._impl()).wake(gentle=gentle, step_up=step_up)

    async def set_profile(self, profile: str) -> MinerReading:
        return await (await self._impl()).set_profile(profile)

    async def set_power_target(self, watts: int) -> MinerReading:
        return await (await self._impl()).set_power_target(watts)

    async def set_power_limit(self, watts: int) -> MinerReading:
        """Restarts the miner to apply the limit; see WhatsminerV2Miner.set_power_limit."""
        return await (await self._impl()).set_power_limit(watts)

    async def set_fans_when_asleep(self, running: bool) -> MinerReading:
        return await (await self._impl()).set_fans_when_asleep(running)

    async def reclaim(self) -> None:
        """Nothing a dead process could have left held: writes take no session."""

    async def close(self) -> None:
        if self._chosen is not None:
            await self._chosen.close()

    async def _impl(self) -> WhatsminerV2Miner | WhatsminerV3Miner:
        if self._chosen is None:
            async with self._choosing:
                if self._chosen is None:
                    self._chosen = await self._choose()
        return self._chosen

    async def _choose(self) -> WhatsminerV2Miner | WhatsminerV3Miner:
        v2 = WhatsminerV2Miner(self._ep)
        try:
            firmware = await v2.firmware_version()
        except RejectedError:
            return v2  # firmware older than get_version cannot speak API v3
        except UnreachableError as err:
            v3 = WhatsminerV3Miner(self._ep)
            try:
                await v3.probe()  # 4028 closed: a miner that speaks only API v3?
            except DriverError:
                raise err from None
            return v3
        date = firmware_date(firmware)
        if date is not None and date >= V3_FIRST_FIRMWARE:
            return WhatsminerV3Miner(self._ep)
        return v2


_SUMMARY = "Whatsminer (MicroBT btminer): power_off/power_on, set_power_pct for power targets"
_RESTART_NOTE = "set_power_limit restarts the miner (never used for curtailment)"

ENTRIES = (
    MinerDriverEntry(
        name="whatsminer",
        factory=WhatsminerMiner,
        traits=TRAITS,
        default_port=V2_PORT,
        summary=f"{_SUMMARY}; API v2 (4028) or v3 (4433) chosen from the firmware date; "
        f"{_RESTART_NOTE}",
        default_web_port=V3_PORT,
    ),
    MinerDriverEntry(
        name="whatsminer-v2",
        factory=WhatsminerV2Miner,
        traits=TRAITS,
        default_port=V2_PORT,
        summary=f"{_SUMMARY}; API v2 on 4028 (token + AES-256-ECB); {_RESTART_NOTE}",
        default_web_port=V3_PORT,
    ),
    MinerDriverEntry(
        name="whatsminer-v3",
        factory=WhatsminerV3Miner,
        traits=TRAITS,
        default_port=V2_PORT,
        summary=f"{_SUMMARY}; API v3 on 4433 (firmware from 2024-11); {_RESTART_NOTE}",
        default_web_port=V3_PORT,
    ),
)
