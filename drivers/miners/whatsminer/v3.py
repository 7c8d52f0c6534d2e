"""A Whatsminer over API v3 (TCP 4433, firmware from 2024-11): framed JSON, writes signed
with a token over the command, the password, the miner's salt and the time."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from drivers.errors import (
    AuthError,
    ProtocolError,
    RejectedError,
)
from drivers.miners.whatsminer.crypto import v3_token
from drivers.miners.whatsminer.dialect import (
    NO_PERCENT,
    NO_PREHEAT,
    TARGET,
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
from drivers.miners.whatsminer.parse import parse_v3
from drivers.miners.whatsminer.transport import Link, session
from drivers.pools import NO_POOLS, rows_pools
from drivers.transport.cgminer_tcp import Reply
from drivers.types import MinerEndpoint, MinerReading, Mode, PoolConfig

_T = TypeVar("_T")

V3_PORT = 4433
V3_DEFAULT_PASSWORD = "super"  # noqa: S105 - API v3 accounts default to their own names
V3_ACCOUNT = "super"  # the only account with write permission ("super=255 user1=0 ...")

V3_CODE_FAIL = -1  # generic failure; a refused token lands here too
V3_CODE_INVALID = -2  # invalid command (or param)
V3_CODE_NO_PERMISSION = -4  # "no permission for write command": write API switched off

V3_NO_SETTING = "readings carry no power mode; power targets are verified by the draw"
V3_NO_FANS = "fans while off are verified by their speed while asleep"


class WhatsminerV3Miner(Dialect):
    """One Whatsminer over API v3 on TCP 4433 (endpoint.web_port). One call at a time."""

    api = "v3"
    target_needs = ("set.miner.power_percent", "get.miner.status:power-limit")

    def __init__(self, endpoint: MinerEndpoint) -> None:
        super().__init__(endpoint, V3_DEFAULT_PASSWORD)
        self._port = endpoint.web_port or V3_PORT
        self._salt: str | None = None  # stable while the miner runs; refetched when refused

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

    async def pools(self) -> tuple[PoolConfig, ...]:
        """get.miner.status's `pools` section. A firmware without it answers the param as
        invalid, or leaves the section out of its reply."""
        name = "get.miner.status:pools"
        if name in self.lacking:
            raise self.lacking.essential(name, "pools", "a pools check")

        async def steps(link: Link) -> Reply:
            return await self._get(link, "get.miner.status", "pools")

        async with self._lock:
            try:
                reply = await self._session("pools", steps)
            except RejectedError as err:
                if err.code != V3_CODE_INVALID:
                    raise
                reply = {}  # "invalid command" or "invalid param: pools": it has none
        msg = reply.get("msg")
        rows = msg.get("pools") if isinstance(msg, dict) else None
        if rows is None:
            self.lacking.learn(name, NO_POOLS)
            raise self.lacking.essential(name, "pools", "a pools check")
        if not isinstance(rows, list):
            raise ProtocolError(self.miner_id, "pools", "the pools section is not a list")
        return rows_pools(
            rows,
            device=self.miner_id,
            op="pools",
            user="account",
            enabled=None,
            active="stratum-active",
            status="status",
        )

    async def sleep(self) -> MinerReading:
        async with self._lock:
            await self._write("set.miner.service", "stop")
            return await self._verify("sleep", asleep)

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
                await until_pre_heated(self.miner_id, self._poll_pre_heat)
            await self._write("set.miner.service", "start")
            return await self._verify("wake", mining)

    async def set_power_target(self, watts: int) -> MinerReading:
        """set.miner.power_percent of the power limit: applies without a restart."""
        async with self._lock:
            before = await self._read_state()
            self._power_target_offered()
            pct = percent_for(self.miner_id, watts, before)
            cmd = "set.miner.power_percent"
            try:
                await self._write(cmd, pct)
            except RejectedError as err:
                if not _v3_lacks(err):
                    raise
                self.lacking.learn(cmd, NO_PERCENT)
                raise self.lacking.essential(cmd, "set_power_target", TARGET) from None
            return await self._verify("set_power_target", holds_percent(pct, watts, before))

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

    # -- internals -------------------------------------------------------------------------

    async def _verify(
        self,
        op: str,
        done: Callable[[WhatsminerState], bool],
        *,
        fans: bool = False,
    ) -> MinerReading:
        return await verify(self.miner_id, lambda: self._read_state(fans=fans), op, done)

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
        return preheat_progress(reply.get("msg"))

    async def _read_state(self, *, fans: bool = False) -> WhatsminerState:
        async def steps(link: Link) -> WhatsminerState:
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

    async def _needed(self, link: Link, cmd: str, param: str) -> Reply:
        """A read every reading needs: UnsupportedError where the firmware lacks it."""
        try:
            return await self._get(link, cmd, param)
        except RejectedError as err:
            if not _v3_lacks(err):
                raise
            raise self.lacking.essential(cmd, "read", "every reading") from None

    async def _optional(self, link: Link, cmd: str, without: str) -> Reply | None:
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

    async def _get(self, link: Link, cmd: str, param: str | None = None) -> Reply:
        request: dict[str, Any] = {"cmd": cmd}
        if param is not None:
            request["param"] = param
        reply = await link.call(request, device=self.miner_id, op=cmd)
        self._check(reply, cmd)
        return reply

    async def _write(self, cmd: str, param: object) -> Reply:
        async def steps(link: Link) -> Reply:
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

    async def _fetch_salt(self, link: Link) -> str:
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

    async def _session(self, op: str, steps: Callable[[Link], Awaitable[_T]]) -> _T:
        return await session(
            self._ep.host, self._port, self._ep.timeout_s, steps, device=self.miner_id, op=op
        )


def _mentions_auth(msg: object) -> bool:
    text = str(msg).lower()
    return any(word in text for word in ("token", "auth", "password", "permission"))


def _v3_lacks(err: RejectedError) -> bool:
    """An API v3 "invalid command" (-2 also answers an invalid param; that one says so)."""
    return err.code == V3_CODE_INVALID and "param" not in err.detail.lower()
