"""A Whatsminer over API v2 (TCP 4028): plaintext reads, and writes encrypted under a
token that get_token and the admin password yield."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from drivers.errors import (
    AuthError,
    DeviceTimeoutError,
    DriverError,
    ProtocolError,
    RejectedError,
    SessionBusyError,
    UnsupportedError,
)
from drivers.miners.whatsminer.crypto import V2Credentials, v2_credentials, v2_decrypt, v2_encrypt
from drivers.miners.whatsminer.dialect import (
    NO_PERCENT,
    NO_PREHEAT,
    TARGET,
    TRAITS,
    Dialect,
    WhatsminerState,
    asleep,
    holds_percent,
    mining,
    percent_for,
    preheat_progress,
    until_pre_heated,
    verify,
)
from drivers.miners.whatsminer.parse import first_row, parse_v2
from drivers.pools import NO_POOLS, cgminer_pools
from drivers.transport import cgminer_tcp
from drivers.transport.cgminer_tcp import Reply
from drivers.types import MinerEndpoint, MinerReading, Mode, PoolConfig

V2_PORT = 4028
V2_DEFAULT_PASSWORD = "admin"  # noqa: S105 - btminer's documented factory admin password

CODE_INVALID_COMMAND = 14
CODE_INVALID_JSON = 23  # also what a command encrypted under the wrong password decrypts to
CODE_PERMISSION = 45  # permission denied; old daemons also use it for a refused join
CODE_COMMAND_ERROR = 132
CODE_TOKEN_CHECK = 135  # "check token err": expired or unknown token
CODE_TOKEN_MAX = 136  # "over max connect": the miner's token table is full
WRITE_LOCKED = "can't access write cmd"  # the write API was never switched on
BTMINER_DOWN = b"Socket connect failed"  # old API daemons say this while btminer is stopped

# The miner drops a token 30 min after it issued it; ours starts counting a little later.
TOKEN_REUSE_S = 25 * 60.0
TOKEN_RENEW_S = 20 * 60.0  # reads renew a token this old, so commands rarely have to
PRE_POWER_ON_POLLS = 4
PRE_POWER_ON_INTERVAL_S = 0.25  # Tether's client polls every 200 ms

# What a v2 reading goes on without: `summary` (power) is what it needs; `status` gives the
# mode where the firmware reports it (else hashing decides), `edevs` the boards.
V2_OPTIONAL_READS = {
    "status": "the mode is judged by hashing; power targets are verified by the draw",
    "edevs": "readings carry no board temperatures (they count as cold)",
}


class _BtminerDownError(RejectedError):
    """An old API daemon answered for a stopped btminer."""


@dataclass(frozen=True, slots=True)
class _Token:
    credentials: V2Credentials
    obtained_s: float  # time.monotonic()


class WhatsminerV2Miner(Dialect):
    """One Whatsminer over API v2 on TCP 4028. At most one call is in flight at a time."""

    api = "v2"
    target_needs = ("set_power_pct", "summary:Power Limit")

    def __init__(self, endpoint: MinerEndpoint) -> None:
        super().__init__(endpoint, V2_DEFAULT_PASSWORD)
        self._token: _Token | None = None
        self._joined = True  # "summary+edevs" joins until the firmware refuses them

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
        model = first_row(details, "DEVDETAILS", self.miner_id).get("Model")
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

    async def pools(self) -> tuple[PoolConfig, ...]:
        """The cgminer-style `pools` read (plaintext, no token)."""
        if "pools" in self.lacking:
            raise self.lacking.essential("pools", "pools", "a pools check")
        async with self._lock:
            try:
                reply = await self._plain("pools")
            except RejectedError as err:
                if isinstance(err, _BtminerDownError) or err.code != CODE_INVALID_COMMAND:
                    raise
                self.lacking.learn("pools", NO_POOLS)
                raise self.lacking.essential("pools", "pools", "a pools check") from None
        return cgminer_pools(reply, device=self.miner_id)

    async def sleep(self) -> MinerReading:
        async with self._lock:
            # respbefore: answer first, then switch off (the switch-off may take the reply).
            unanswered = await self._command_allowing_silence("power_off", respbefore="true")
            return await self._verify("sleep", asleep, unanswered)

    async def wake(
        self,
        *,
        gentle: bool = False,
        step_up: bool = False,  # noqa: ARG002 - no low level to step up from (pre-heat)
    ) -> MinerReading:
        """power_on; gentle: only once pre_power_on reports the pre-heat complete."""
        async with self._lock:
            if gentle:
                await until_pre_heated(self.miner_id, self._poll_pre_heat)
            else:
                await self._pre_heat()
            await self._command("power_on")
            return await self._verify("wake", mining)

    async def set_power_target(self, watts: int) -> MinerReading:
        """set_power_pct of the miner's power limit: applies without a restart."""
        async with self._lock:
            before = await self._read_state()
            self._power_target_offered()
            pct = percent_for(self.miner_id, watts, before)
            try:
                await self._command("set_power_pct", percent=str(pct))
            except RejectedError as err:
                if err.code != CODE_INVALID_COMMAND:
                    raise
                self.lacking.learn("set_power_pct", NO_PERCENT)
                raise self.lacking.essential("set_power_pct", "set_power_target", TARGET) from None
            return await self._verify("set_power_target", holds_percent(pct, watts, before))

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

    # -- internals -------------------------------------------------------------------------

    async def _verify(
        self,
        op: str,
        done: Callable[[WhatsminerState], bool],
        unanswered: DriverError | None = None,
    ) -> MinerReading:
        return await verify(self.miner_id, self._read_state, op, done, unanswered)

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
        """One pre_power_on: its progress (see preheat_progress); True without one."""
        if "pre_power_on" in self.lacking:
            return True
        try:
            reply = await self._command("pre_power_on")
        except RejectedError as err:
            if err.code not in (CODE_INVALID_COMMAND, CODE_COMMAND_ERROR):
                raise
            self.lacking.learn("pre_power_on", NO_PREHEAT)
            return True
        return preheat_progress(reply.get("Msg"))

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
