"""Whatsminer API v2 as btminer serves it on 4028. cgminer-style reads (summary, edevs,
pools, devdetails) have a STATUS list and may be joined with "+"; btminer-style replies
(get_*, status, writes) have a STATUS string. Writes arrive AES-256-ECB encrypted under a
key md5-crypt derives from the admin password, carry a token from get_token (30 minutes,
at most 16 live at once) and are answered encrypted with zero padding (pyasic cannot undo
PKCS#7); their errors come back in plaintext. New firmware's 4028 is the degraded
v2-compatible one (no MHS 5s/5m, Target MHS or per-board chip temperatures).

Reply shapes follow a real M30S+ capture (summary, edevs, get_psu), apidoc.whatsminer.com,
pyasic 0.79.0 and Tether's mock; what is inferred rather than seen is marked (inferred).
"""

from __future__ import annotations

import base64
import binascii
import json
import string
from dataclasses import dataclass
from datetime import UTC, datetime

from drivers.types import Mode
from sim.whatsminer.crypto import crypt_body, open_sealed, seal
from sim.whatsminer.machine import (
    FREQ_MHZ,
    FULL_PCT,
    SHADOW_SALT,
    Reply,
    WhatsminerMachine,
    dump,
    integer,
)

API_V2 = "2.0.5"
CRYPT_ALPHABET = "./" + string.digits + string.ascii_letters
TOKEN_LIFETIME_S = 1800.0  # "a token keepalive time is 30 minutes" (API 2.0.5)
MAX_TOKENS = 16  # live tokens at once; the next get_token answers 136

CODE_INVALID_COMMAND = 14
CODE_INVALID_JSON = 23
CODE_PERMISSION = 45
CODE_OK = 131
CODE_ERROR = 132
CODE_TOKEN = 134
CODE_TOKEN_CHECK = 135
CODE_TOKEN_MAX = 136
CODE_BASE64 = 137

JOINABLE = frozenset({"summary", "pools", "edevs", "devs", "devdetails", "version"})
V2_WRITES = frozenset(
    {
        "power_off",
        "power_on",
        "pre_power_on",
        "set_power_pct",
        "set_power_pct_v2",
        "adjust_power_limit",
        "set_poweroff_cool",
    }
)


@dataclass(frozen=True, slots=True)
class V2Answer:
    """What the v2 API does with one request: the command's name and the reply bytes
    (None: the firmware carries the command out without answering)."""

    name: str
    body: bytes | None


class V2Api(WhatsminerMachine):
    """btminer's API v2 over the machine: cgminer-style reads, btminer-style reads and
    the encrypted, token-carrying writes."""

    def handle_v2(self, request: object) -> V2Answer:
        """The reply to one v2 request object."""
        if not isinstance(request, dict):
            return V2Answer("", self.v2_error(CODE_INVALID_JSON, "json cmd err"))
        if "enc" in request:
            return self._encrypted(request)
        name = request.get("cmd", request.get("command"))
        if not isinstance(name, str) or not name:
            return V2Answer("", self.v2_error(CODE_INVALID_JSON, "json cmd err"))
        if name in V2_WRITES:  # writes are accepted only encrypted
            return V2Answer(name, self.v2_error(CODE_PERMISSION, "permission denied"))
        return V2Answer(name, dump(self._v2_read(name)))

    def _v2_read(self, name: str) -> Reply:
        if "+" in name:
            parts = name.split("+")
            if any(p not in JOINABLE for p in parts):
                return self._fail(CODE_PERMISSION, "command join err")
            joined: Reply = {p: [self._v2_read(p)] for p in dict.fromkeys(parts)}
            joined["id"] = 1
            return joined
        method = _V2_READS.get(name)
        if method is None or self.missing.lacks(name):
            return self._fail(CODE_INVALID_COMMAND, "invalid cmd")
        reply: Reply = self.missing.strip(name, getattr(self, method)())
        return reply

    def _encrypted(self, request: Reply) -> V2Answer:
        command = self._unseal(request)
        if isinstance(command, bytes):
            return V2Answer("enc", command)
        name: str = command["cmd"]
        self._purge_tokens()
        if self.fault.expiring:
            self.tokens.clear()
        if command.get("token") not in self.tokens:
            return V2Answer(name, self.v2_error(CODE_TOKEN_CHECK, "check token err"))
        if name not in V2_WRITES:
            reply: Reply | None = self._v2_read(name)
        elif self.missing.lacks(name):
            reply = self._fail(CODE_INVALID_COMMAND, "invalid cmd")
        elif not self.write_enabled:
            return V2Answer(name, self.v2_error(CODE_PERMISSION, "can't access write cmd"))
        else:
            reply = getattr(self, f"_w_{name.removesuffix('_v2')}")(command, self._now())
        if reply is None:
            return V2Answer(name, None)
        return V2Answer(name, dump({"enc": seal(self._key, dump(reply))}))

    def _unseal(self, request: Reply) -> Reply | bytes:
        """The decrypted command, or the error reply's bytes."""
        data = request.get("data")
        if request.get("enc") != 1 or not isinstance(data, str):
            return self.v2_error(CODE_INVALID_JSON, "json cmd err")
        try:
            command = json.loads(open_sealed(self._key, base64.b64decode(data, validate=True)))
        except binascii.Error:
            return self.v2_error(CODE_BASE64, "base64 decode err")
        except ValueError:  # wrong key (password), bad padding or not JSON
            return self.v2_error(CODE_INVALID_JSON, "json cmd err")
        if not isinstance(command, dict) or not isinstance(command.get("cmd"), str):
            return self.v2_error(CODE_INVALID_JSON, "json cmd err")
        return command

    # Each write below is acknowledged; under the `lie` fault it is not carried out.

    def _w_power_off(self, _: Reply, now: float) -> Reply | None:
        if not self.fault.lying:
            self._power_off(now)
            self.commands.append("power_off")
        return self._v2_ok() if self.answers_power_off else None

    def _w_power_on(self, _: Reply, now: float) -> Reply:
        if not self.fault.lying:
            self._power_on(now)
            self.commands.append("power_on")
        return self._v2_ok()

    def _w_pre_power_on(self, _: Reply, now: float) -> Reply:
        if not self.has_pre_power_on:
            return self._fail(CODE_INVALID_COMMAND, "invalid cmd")
        return self._v2_ok(self._pre_power_on(now, act=not self.fault.lying))

    def _w_set_power_pct(self, command: Reply, now: float) -> Reply:
        pct = integer(command.get("percent"))
        if pct is None or not 0 < pct <= FULL_PCT:
            return self._fail(CODE_ERROR, "API command ERROR")
        if not self.fault.lying:
            self.power_pct = pct
            self._apply_profile(now)
            self.commands.append(f"set_power_pct {pct}")
        return self._v2_ok()

    def _w_adjust_power_limit(self, command: Reply, now: float) -> Reply:
        watts = integer(command.get("power_limit"))
        if watts is None or not self._valid_limit(watts):
            return self._fail(CODE_ERROR, "API command ERROR")
        if not self.fault.lying:
            self._set_limit(watts, now)
            self.commands.append(f"adjust_power_limit {watts}")
        return self._v2_ok()

    def _w_set_poweroff_cool(self, command: Reply, _: float) -> Reply:
        cool = integer(command.get("poweroff_cool"))
        if cool not in (0, 1):
            return self._fail(CODE_ERROR, "API command ERROR")
        if not self.fault.lying:
            self.poweroff_cool = cool == 1
            self.commands.append(f"set_poweroff_cool {cool}")
        return self._v2_ok()

    def _get_token(self) -> Reply:
        self._purge_tokens()
        if len(self.tokens) >= MAX_TOKENS:
            return self._fail(CODE_TOKEN_MAX, "over max connect")
        time_ = f"{self._rng.randrange(10000):04d}"
        newsalt = self._random(CRYPT_ALPHABET, 8)
        self.tokens[crypt_body(self._passwd_md5 + time_, newsalt)] = self._now()
        return self._btminer(CODE_TOKEN, {"time": time_, "salt": SHADOW_SALT, "newsalt": newsalt})

    def _purge_tokens(self) -> None:
        oldest = self._now() - TOKEN_LIFETIME_S
        for sign in [s for s, issued in self.tokens.items() if issued <= oldest]:
            del self.tokens[sign]

    def _summary(self) -> Reply:
        now = self._now()
        ths = self._hashrate_ths(now)
        mhs = round(ths * 1e6, 2)
        power = round(self.physics.power_w(now))
        temps = self.physics.board_temps_c
        elapsed = int(now - self._btminer_since)
        stable = self._stable(now)
        row: Reply = {
            "Elapsed": elapsed,
            **_rates(mhs),
            "Accepted": elapsed // 20 if ths else 0,
            "Rejected": 0,
            "Total MH": round(mhs * elapsed, 4),
            "Temperature": round(max(temps), 2),
            "freq_avg": FREQ_MHZ if ths else 0,
            "Fan Speed In": self._fan_rpm(),
            "Fan Speed Out": self._fan_rpm(),
            "Power": power,
            "Power Rate": round(power / ths, 2) if ths else 0,
            "Pool Rejected%": 0.0,
            "Pool Stale%": 0.0,
            "Last getwork": 0,
            "Uptime": int(now - self._booted),
            "Security Mode": 0,
            "Hash Stable": stable,
            "Hash Stable Cost Seconds": int(self._upfreq_s),
            "Hash Deviation%": 0.1398 if stable else 12.5,
            "Target Freq": FREQ_MHZ,
            "Target MHS": round(self.physics.profile.hashrate_ths * 1e6),
            "Env Temp": round(self.physics.ambient_c, 2),
            "Power Mode": "Normal",
            "Factory GHS": round(self.physics.model.hashrate_ths * 1000),
            "Power Limit": self.power_limit_w,
            "Chip Temp Min": round(min(temps) + 8, 2) if ths else round(min(temps), 2),
            "Chip Temp Max": round(max(temps) + 20, 2) if ths else round(max(temps), 2),
            "Chip Temp Avg": round(sum(temps) / len(temps) + 12, 2) if ths else round(temps[0], 2),
            "Upfreq Complete": int(stable),
            "Btminer Fast Boot": "disable",
            "MAC": self.mac,
        }
        if self.v3:  # the degraded v2-compatible API of new firmware
            for key in ("MHS 5s", "MHS 5m", "Target MHS"):
                del row[key]
        return {"STATUS": [{"STATUS": "S", "Msg": "Summary"}], "SUMMARY": [row]}

    def _edevs(self) -> Reply:
        now = self._now()
        boards = self.physics.model.boards
        mhs = round(self._hashrate_ths(now) * 1e6 / boards, 2)
        stable = self._stable(now)
        devs = []
        for i, temp in enumerate(self.physics.board_temps_c):
            dev: Reply = {
                "ASC": i,
                "Slot": i,
                "Enabled": "Y",
                "Status": "Alive",
                "Temperature": round(temp, 2),
                "Chip Frequency": FREQ_MHZ if mhs else 0,
                **_rates(mhs),
                "Accepted": 0,
                "Rejected": 0,
                "Last Valid Work": int(now) if mhs else 0,
                "Upfreq Complete": int(stable),
                "Effective Chips": 156 if mhs else 0,
                "PCB SN": f"HEM1EP{self.serial}{i}",
                "Chip Data": "K88Z347-2039 BINV01-195001D",
                "Chip Temp Min": round(temp + 8, 2),
                "Chip Temp Max": round(temp + 20, 2),
                "Chip Temp Avg": round(temp + 12, 2),
                "chip_vol_diff": 9,
            }
            if self.v3:
                for key in ("MHS 5s", "MHS 5m", "Chip Temp Min", "Chip Temp Max", "Chip Temp Avg"):
                    del dev[key]
            devs.append(dev)
        return {"STATUS": [{"STATUS": "S", "Msg": f"{boards} ASC(s)"}], "DEVS": devs}

    def _pools(self) -> Reply:
        active = self.pools.active() if self.physics.mode is Mode.MINING else None
        pools = [
            {
                "POOL": i + 1,
                "URL": pool.url,
                "Status": pool.status,
                "Priority": i,
                "Quota": 1,
                "Accepted": 0,
                "Rejected": 0,
                "Stale": 0,
                "User": pool.user,
                "Stratum Active": i == active,
                "Stratum Difficulty": 65536,
            }
            for i, pool in enumerate(self.pools.get())
        ]
        return {"STATUS": [{"STATUS": "S", "Msg": f"{len(pools)} Pool(s)"}], "POOLS": pools}

    def _devdetails(self) -> Reply:
        details = [
            {
                "DEVDETAILS": i,
                "Name": "SM",
                "ID": i,
                "Driver": "bitmicro",
                "Kernel": "",
                "Model": self.physics.model.name,
            }
            for i in range(self.physics.model.boards)
        ]
        return {"STATUS": [{"STATUS": "S", "Msg": "Device Details"}], "DEVDETAILS": details}

    def _version(self) -> Reply:
        status = {"STATUS": "S", "Msg": "BTMiner versions", "Description": "btminer"}
        return {"STATUS": [status], "VERSION": [{"BTMiner": self.firmware, "API": API_V2}]}

    def _get_version(self) -> Reply:
        return self._btminer(
            CODE_OK,
            {"api_ver": API_V2, "fw_ver": self.firmware, "platform": "H616", "chip": "K88Z347"},
        )

    def _get_miner_info(self) -> Reply:
        return self._btminer(
            CODE_OK,
            {
                "ip": self.host,
                "proto": "dhcp",
                "netmask": "255.255.0.0",
                "gateway": "127.0.0.1",
                "dns": "127.0.0.1",
                "hostname": "WhatsMiner",
                "mac": self.mac,
                "ledstat": "auto",
                "minersn": f"HTM30X{self.serial}",
                "powersn": f"A1232B{self.serial}",
            },
        )

    def _get_psu(self) -> Reply:
        now = self._now()
        power = self.physics.power_w(now)
        return self._btminer(
            CODE_OK,
            {
                "name": "P221B",
                "hw_version": "V01.00",
                "sw_version": "V01.00.V01.03",
                "model": "P221B",
                "iin": str(round(power / 0.224)),  # mA at 224 V
                "vin": "22400",
                "fan_speed": str(self._fan_rpm()),
                "version": "-1",
                "serial_no": f"A1232B{self.serial}",
                "vender": "7",  # sic: real firmware spells it so
            },
        )

    def _get_error_code(self) -> Reply:
        return self._btminer(CODE_OK, {"error_code": []})

    def _status(self) -> Reply:
        off = self.physics.mode is Mode.SLEEPING
        return self._btminer(
            CODE_OK,
            {
                "mineroff": "true" if off else "false",
                "mineroff_reason": "by whatsminer api" if off else "",
                "mineroff_time": _clock_text(self._off_since) if off else "",
                "FirmwareVersion": self.firmware,
                "power_mode": "",
                "hash_percent": "",
                "power_limit_set": str(self.power_limit_w),
                "power_pct": str(self.power_pct),  # Tether's mock reports it (inferred)
            },
        )

    def _v2_ok(self, msg: object = "API command OK") -> Reply:
        return self._btminer(CODE_OK, msg)

    def v2_error(self, code: int, msg: str) -> bytes:
        """A btminer-style error reply's bytes."""
        return dump(self._fail(code, msg))

    def _fail(self, code: int, msg: str) -> Reply:
        return self._btminer(code, msg, "E")

    def _btminer(self, code: int, msg: object, status: str = "S") -> Reply:
        return {
            "STATUS": status,
            "When": int(self._now()),
            "Code": code,
            "Msg": msg,
            "Description": "",
        }


_V2_READS = {
    "summary": "_summary",
    "edevs": "_edevs",
    "devs": "_edevs",  # old daemons forward devs as edevs
    "pools": "_pools",
    "devdetails": "_devdetails",
    "version": "_version",
    "get_version": "_get_version",
    "get_miner_info": "_get_miner_info",
    "get_psu": "_get_psu",
    "get_error_code": "_get_error_code",
    "status": "_status",
    "get_token": "_get_token",
}


def _rates(mhs: float) -> Reply:
    """btminer's hashrate under every window it names, summary's and edevs' alike."""
    return {
        "MHS av": mhs,
        "MHS 5s": mhs,
        "MHS 1m": mhs,
        "MHS 5m": mhs,
        "MHS 15m": mhs,
        "HS RT": mhs,
    }


def _clock_text(when: float | None) -> str:
    return datetime.fromtimestamp(when or 0, UTC).strftime("%Y-%m-%d %H:%M:%S")
