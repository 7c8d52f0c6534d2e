"""Whatsminer API v3 as new firmware (dated after 2024-11, so pyasic picks it) serves it on
4433: get.* reads and set.* writes, each write signed with an 8-character token over
cmd + password + salt + ts. Reply shapes follow a real M50 capture (get.device.info),
apidoc.whatsminer.com and Tether's mock; what is inferred is marked (inferred).
"""

from __future__ import annotations

import string

from drivers.types import Mode
from sim.whatsminer.crypto import v3_token
from sim.whatsminer.machine import (
    FREQ_MHZ,
    FULL_PCT,
    Reply,
    WhatsminerMachine,
    integer,
)

API_V3 = "3.0.2"
V3_ACCOUNT = "super"

V3_FAIL = -1
V3_INVALID = -2
V3_PARAM_MISSING = -3
V3_NO_PERMISSION = -4

V3_SERVICE = frozenset({"start", "stop", "restart", "enable", "disable"})


class V3Api(WhatsminerMachine):
    """btminer's API v3 over the machine: get.* reads and signed set.* writes."""

    def handle_v3(self, request: object) -> Reply:
        """The reply to one v3 frame's JSON."""
        if not isinstance(request, dict):
            return self._v3(V3_FAIL, "invalid json", "")
        cmd = request.get("cmd")
        if not isinstance(cmd, str) or not cmd:
            return self._v3(V3_INVALID, "invalid command", "")
        param = request.get("param")  # an explicit null is the same as no param (pyasic)
        if cmd.startswith("set."):
            return self._v3_write(cmd, param, request)
        method = _V3_READS.get(cmd)
        if method is None or self.missing.lacks(cmd):
            return self._v3(V3_INVALID, "invalid command", cmd)
        reply: Reply = self.missing.strip(cmd, getattr(self, method)(cmd, param))
        return reply

    def _r_device_info(self, cmd: str, param: object) -> Reply:
        info = self._device_info()
        if param is None:
            return self._v3(0, info, cmd)
        if not isinstance(param, str) or param not in info:
            return self._v3(V3_INVALID, f"invalid param: {param}", cmd)
        return self._v3(0, {param: info[param]}, cmd)

    def _r_miner_status(self, cmd: str, param: object) -> Reply:
        if param is None or param == "":
            return self._v3(V3_PARAM_MISSING, "param item is null", cmd)
        sections = {"summary": self._v3_summary, "pools": self._v3_pools, "edevs": self._v3_edevs}
        parts = str(param).split("+")
        if any(p not in sections for p in parts):
            return self._v3(V3_INVALID, f"invalid param: {param}", cmd)
        return self._v3(0, {p: sections[p]() for p in parts}, cmd)

    def _r_miner_setting(self, cmd: str, _: object) -> Reply:
        return self._v3(0, self._v3_setting(), cmd)

    def _r_fan_setting(self, cmd: str, _: object) -> Reply:
        # The shape is Tether's mock's (inferred).
        fans = {"fan-mode": "auto", "poweroff-cool": int(self.poweroff_cool), "zero-speed": 0}
        return self._v3(0, fans, cmd)

    def _v3_write(self, cmd: str, param: object, request: Reply) -> Reply:
        if self.fault.expiring:
            self.salt = self._random(string.ascii_letters + string.digits, 8)
        ts = request.get("ts")
        if (
            request.get("account") != V3_ACCOUNT
            or not isinstance(ts, int)
            or isinstance(ts, bool)
            or request.get("token") != v3_token(cmd, self.v3_password, self.salt, ts)
        ):
            return self._v3(V3_FAIL, "invalid token", cmd)  # (inferred) text
        if not self.write_enabled:
            return self._v3(V3_NO_PERMISSION, "no permission for write command", cmd)
        method = _V3_WRITES.get(cmd)
        if method is None or self.missing.lacks(cmd):
            return self._v3(V3_INVALID, "invalid command", cmd)
        done: bool | Reply | None = getattr(self, method)(param, self._now())
        if done is None:
            return self._v3(V3_INVALID, "invalid command", cmd)
        if not done:
            return self._v3(V3_INVALID, f"invalid param: {param}", cmd)
        return self._v3(0, done if isinstance(done, dict) else "ok", cmd)

    # Each v3 write returns False for an invalid param (None: this firmware has no such
    # command; an object: the reply's msg); under `lie` it is acknowledged only.

    def _s_service(self, param: object, now: float) -> bool:
        if param not in V3_SERVICE:
            return False
        if not self.fault.lying:
            if param == "stop":
                self._power_off(now)
            elif param == "start":
                self._power_on(now)
            elif param == "restart":
                self._restart(now)
            self.commands.append(f"set.miner.service {param}")
        return True

    def _s_power_limit(self, param: object, now: float) -> bool:
        watts = integer(param)
        if watts is None or not self._valid_limit(watts):
            return False
        if not self.fault.lying:
            self._set_limit(watts, now)
            self.commands.append(f"set.miner.power_limit {watts}")
        return True

    def _s_power_percent(self, param: object, now: float) -> bool:
        pct = integer(param)
        if pct is None or not 0 <= pct <= FULL_PCT:
            return False
        if not self.fault.lying:
            self.power_pct = pct or FULL_PCT  # 0 clears the percent
            self._apply_profile(now)
            self.commands.append(f"set.miner.power_percent {pct}")
        return True

    def _s_pre_power_on(self, _: object, now: float) -> Reply | None:
        """v2's pre_power_on (in the notes' v3 command list): its progress as the msg, in
        v2's shape (inferred); None where the firmware has no such command."""
        if not self.has_pre_power_on:
            return None
        return self._pre_power_on(now, act=not self.fault.lying, name="set.miner.pre_power_on")

    def _s_poweroff_cool(self, param: object, _: float) -> bool:
        cool = {"enable": 1, "disable": 0}.get(str(param), integer(param))
        if cool not in (0, 1):
            return False
        if not self.fault.lying:
            self.poweroff_cool = cool == 1
            self.commands.append(f"set.fan.poweroff_cool {cool}")
        return True

    def _device_info(self) -> Reply:
        now = self._now()
        boards = self.physics.model.boards
        miner: Reply = {
            "working": "true" if self.physics.mode is Mode.MINING else "false",
            "type": self.physics.model.name,
            "hash-board": self.physics.model.name.rsplit("_", 1)[-1][1:],
            "detect-hash-rate": ":".join(
                str(round(self.physics.model.hashrate_ths * 1000 / boards)) for _ in range(boards)
            ),
            "cointype": "BTC/BCH/BSV",
            "pool-strategy": "FAILOVER",
            "heatmode": "",
            "hash-percent": "",
            "fast-boot": "disable",
            "board-num": str(boards),
            "miner-sn": f"HTM30X{self.serial}",
            "power-limit-set": str(self.power_limit_w),
            "UpfreqSpeed": "",
            "web-pool": 1,
            "permission": "super=255 user1=0 user2=0 user3=0",
        }
        for i in range(boards):
            miner[f"chipdata{i}"] = "H3LA03-24020101 BINVE2-240101"
            miner[f"pcbsn{i}"] = f"HHM{self.serial}{i}"
        power = round(self.physics.power_w(now))
        return {
            "network": {
                "ip": self.host,
                "proto": "dhcp",
                "netmask": "255.255.0.0",
                "dns": "127.0.0.1",
                "mac": self.mac,
                "gateway": "127.0.0.1",
                "hostname": "WhatsMiner",
            },
            "miner": miner,
            "system": {
                "api": API_V3,
                "platform": "H616",
                "fwversion": self.firmware,
                "control-board-version": "CB6V10",
                "apiswitch": "1" if self.write_enabled else "0",
                "ledstatus": "auto",
            },
            "power": {
                "type": "P221B",
                "mode": "1",
                "hwversion": "V00.01",
                "swversion": "V02.00.V02.01",
                "model": "P221B",
                "iin": round(power / 231.5, 2),
                "vin": 231.5,
                "vout": 1222,
                "pin": power,
                "fanspeed": self._fan_rpm(),
                "temp0": round(max(self.physics.board_temps_c)),
                "sn": f"A1232B{self.serial}",
                "vendor": "7",
            },
            "salt": self.salt,
            "error-code": [],
        }

    def _v3_summary(self) -> Reply:
        now = self._now()
        ths = round(self._hashrate_ths(now), 3)
        power = round(self.physics.power_w(now))
        temps = self.physics.board_temps_c
        return {
            "elapsed": int(now - self._btminer_since),
            "bootup-time": int(now - self._booted),
            "freq-avg": FREQ_MHZ if ths else 0,
            "target-freq": FREQ_MHZ,
            "factory-hash": self.physics.model.hashrate_ths,
            "hash-average": ths,
            "hash-1min": ths,
            "hash-15min": ths,
            "hash-realtime": ths,
            "power-rate": round(power / ths, 2) if ths else 0,
            "power-5min": power,
            "power-realtime": power,
            "environment-temperature": round(self.physics.ambient_c, 2),
            "board-temperature": [round(t, 2) for t in temps],
            "chip-temp-min": round(min(temps) + 8, 2),
            "chip-temp-avg": round(sum(temps) / len(temps) + 12, 2),
            "chip-temp-max": round(max(temps) + 20, 2),
            "power-limit": self.power_limit_w,
            "up-freq-finish": int(self._stable(now)),
            "fan-speed-in": self._fan_rpm(),
            "fan-speed-out": self._fan_rpm(),
        }

    def _v3_edevs(self) -> list[Reply]:
        now = self._now()
        boards = self.physics.model.boards
        ths = round(self._hashrate_ths(now) / boards, 3)
        return [
            {
                "id": i,
                "slot": i,
                "hash-average": ths,
                "factory-hash": round(self.physics.model.hashrate_ths / boards, 3),
                "freq": FREQ_MHZ if ths else 0,
                "effective-chips": 156 if ths else 0,
                "chip-temp-min": round(temp + 8, 2),
                "chip-temp-avg": round(temp + 12, 2),
                "chip-temp-max": round(temp + 20, 2),
            }
            for i, temp in enumerate(self.physics.board_temps_c)
        ]

    def _v3_pools(self) -> list[Reply]:
        active = self.pools.active() if self.physics.mode is Mode.MINING else None
        return [
            {
                "id": i + 1,
                "url": pool.url,
                "status": pool.status.lower(),
                "account": pool.user,
                "stratum-active": i == active,
                "stratum-diff": 65536,
                "reject-rate": 0,
                "last-share-time": int(self._now()),
            }
            for i, pool in enumerate(self.pools.get())
        ]

    def _v3_setting(self) -> Reply:
        return {
            "power-limit": self.power_limit_w,
            "upfreq-speed": 0,
            "power-mode": "normal",
            "fast-boot": "disable",
            "target-freq": 0,
            "fast-mining": "disable",
            "power": self.power_limit_w,
            "power-percent": 0 if self.power_pct == FULL_PCT else self.power_pct,
        }

    def _v3(self, code: int, msg: object, desc: str) -> Reply:
        return {"code": code, "when": int(self._now()), "msg": msg, "desc": desc}


_V3_READS = {
    "get.device.info": "_r_device_info",
    "get.miner.status": "_r_miner_status",
    "get.miner.setting": "_r_miner_setting",
    "get.fan.setting": "_r_fan_setting",
}
_V3_WRITES = {
    "set.miner.service": "_s_service",
    "set.miner.power_limit": "_s_power_limit",
    "set.miner.power_percent": "_s_power_percent",
    "set.miner.pre_power_on": "_s_pre_power_on",
    "set.fan.poweroff_cool": "_s_poweroff_cool",
}
