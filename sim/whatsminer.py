"""A simulated Whatsminer (MicroBT btminer): API v2 on 4028 and, on new firmware, API v3 on 4433.

API v2 as btminer serves it: one JSON request per connection ({"cmd": ...} or
{"command": ...}, parsed incrementally), the reply, then close, with no NUL (pyasic strips
one if present; MicroBT's own sample client does not). cgminer-style reads (summary, edevs,
pools, devdetails) have a STATUS list and may be joined with "+"; btminer-style replies
(get_*, status, writes) have a STATUS string. Writes arrive AES-256-ECB encrypted under a
key md5-crypt derives from the admin password, carry a token from get_token (30 minutes,
at most 16 live at once) and are answered encrypted with zero padding (pyasic cannot
undo PKCS#7); their errors come back in plaintext.

New firmware (dated after 2024-11, so pyasic picks API v3) serves API v3 on 4433 as well:
4-byte little-endian length + JSON both ways, several frames per connection, writes signed
with an 8-character token over cmd + password + salt + ts. Its 4028 API is the degraded
v2-compatible one (no MHS 5s/5m, Target MHS or per-board chip temperatures).

Reply shapes follow the research notes: a real M30S+ capture (summary, edevs, get_psu), a
real M50 capture (get.device.info), apidoc.whatsminer.com, pyasic 0.79.0 and Tether's mock.
Where a code or field is inferred rather than seen, it is marked (inferred).

Physics: power_off drops draw in seconds; power_on brings draw back in seconds while the
hashrate climbs for minutes (upfreq); pre_power_on (v3: set.miner.pre_power_on) warms cold
boards so that a full-power start succeeds (see physics) and that climb is shorter;
adjust_power_limit and set.miner.power_limit restart btminer: draw falls to the control
board's and comes back over minutes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import random
import string
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from passlib.hash import md5_crypt  # type: ignore[import-untyped]  # libpass ships no types

from drivers.types import Mode
from sim.cgminer_server import TcpListener, quirk
from sim.families import BuildContext, Built, Family, SimMinerSpec, SimServer
from sim.faults import Fault, FaultState
from sim.missing import Missing
from sim.physics import MinerModel, MinerPhysics, Profile

Reply = dict[str, Any]

V2_PORT = 4028
V3_PORT = 4433
FIRMWARE_V2 = "20230911.12.Rel"  # API 2.0.5 generation (pyasic's status fixture)
FIRMWARE_V3 = "20250915.16.Rel2"  # a real M50 capture, API 3.0.2: pyasic picks API v3
API_V2 = "2.0.5"
API_V3 = "3.0.2"
V2_PASSWORD = "admin"  # noqa: S105 - btminer's documented factory admin password
V3_PASSWORD = "super"  # noqa: S105 - API v3 accounts default to their own names
V3_ACCOUNT = "super"
SHADOW_SALT = "BQ5hoXV9"  # the factory admin hash's salt; get_token hands it out
CRYPT_ALPHABET = "./" + string.digits + string.ascii_letters

TOKEN_LIFETIME_S = 1800.0  # "a token keepalive time is 30 minutes" (API 2.0.5)
MAX_TOKENS = 16  # live tokens at once; the next get_token answers 136
IDLE_CLOSE_S = 10.0  # "no data within 10 seconds after the port is connected": closed
STALL_HOLD_S = 60.0
MAX_REQUEST_BYTES = 64 * 1024
MAX_FRAME_BYTES = 1 << 20

SLEEP_POWER_W = 13  # Tether's suspended M56S: control board only
RAMP_DOWN_S = 5.0  # power_off: hashboards off within seconds
RAMP_UP_S = 20.0  # power_on: draw back within seconds
UPFREQ_S = 600.0  # from power_on to full hashrate: frequency steps up for minutes (?)
UPFREQ_PREHEATED_S = 240.0  # after a completed pre_power_on (?)
UPFREQ_START = 0.5  # fraction of the target hashrate while frequency is still climbing
RESTART_S = 180.0  # a btminer restart: boards re-initialise, draw returns over minutes (?)
PREHEAT_S = 60.0  # pre_power_on finishes within a minute (?)
PREHEAT_DONE_C = 20.0  # boards this warm need no pre-heat (inferred)
RESET_LIMIT_W = 99999  # adjust_power_limit 99999 restores the default limit (Tether's docs)
FULL_PCT = 100
FAN_RPM = 4500
FAN_COOL_RPM = 1800  # fans while powered off with set_poweroff_cool on (inferred)
FREQ_MHZ = 590

CODE_INVALID_COMMAND = 14
CODE_INVALID_JSON = 23
CODE_PERMISSION = 45
CODE_OK = 131
CODE_ERROR = 132
CODE_TOKEN = 134
CODE_TOKEN_CHECK = 135
CODE_TOKEN_MAX = 136
CODE_BASE64 = 137

V3_FAIL = -1
V3_INVALID = -2
V3_PARAM_MISSING = -3
V3_NO_PERMISSION = -4

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
V3_SERVICE = frozenset({"start", "stop", "restart", "enable", "disable"})


@dataclass(frozen=True, slots=True)
class V2Answer:
    """What the v2 API does with one request: the command's name and the reply bytes
    (None: the firmware carries the command out without answering)."""

    name: str
    body: bytes | None


class WhatsminerDevice:
    """One Whatsminer's API state over its physics."""

    def __init__(
        self,
        physics: MinerPhysics,
        fault: FaultState,
        *,
        time_fn: Callable[[], float],
        rng: random.Random,
        serial: str,
        mac: str,
        host: str,
        firmware: str,
        password: str | None = None,
        missing: Missing | None = None,
    ) -> None:
        self.physics = physics
        self.missing = missing or Missing()  # what this build lacks (sim.missing)
        self.fault = fault
        self._now = time_fn
        self._rng = rng
        self.serial = serial
        self.mac = mac
        self.host = host
        self.firmware = firmware
        self.v3 = firmware >= "20241101"  # both start with YYYYMMDD
        self.v2_password = password or V2_PASSWORD
        self.v3_password = password or V3_PASSWORD
        self._passwd_md5 = _crypt_body(self.v2_password, SHADOW_SALT)
        self._key = hashlib.sha256(self._passwd_md5.encode()).digest()
        self.tokens: dict[str, float] = {}  # sign -> when it was issued
        self.salt = self._random(string.ascii_letters + string.digits, 8)
        self.write_enabled = True  # WhatsMinerTool's "API switch"
        self.answers_power_off = True  # False: power_off acts and never answers (seen live)
        self.has_pre_power_on = True  # False: firmware without it (invalid command)
        self.power_limit_w = physics.model.rated_power_w
        self.power_pct = FULL_PCT
        self.poweroff_cool = False
        now = time_fn()
        self._booted = now
        self._btminer_since = now
        self._upfreq_from = now - UPFREQ_S  # hashing at full rate already
        self._upfreq_s = UPFREQ_S
        self._preheat_since: float | None = None
        self._off_since: float | None = None if physics.mode is Mode.MINING else now
        self.commands: deque[str] = deque(maxlen=256)  # writes carried out, for tests
        self.in_flight = 0  # requests received and not yet answered, over both APIs
        self.peak_in_flight = 0  # most ever at once (one-call-in-flight checks)

    def reset(self, mode: Mode) -> None:
        """Simulator control: default settings, no tokens, `mode` at steady draw at once."""
        now = self._now()
        self.tokens.clear()
        self.power_limit_w = self.physics.model.rated_power_w
        self.power_pct = FULL_PCT
        self._preheat_since = None
        self._apply_profile(now)
        self.physics.force(mode, now)
        self._btminer_since = now
        self._upfreq_from = now - UPFREQ_S
        self._off_since = None if mode is Mode.MINING else now

    # -- API v2 ----------------------------------------------------------------------------

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
        return V2Answer(name, _dump(self._v2_read(name)))

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
        return V2Answer(name, _dump({"enc": _seal(self._key, _dump(reply))}))

    def _unseal(self, request: Reply) -> Reply | bytes:
        """The decrypted command, or the error reply's bytes."""
        data = request.get("data")
        if request.get("enc") != 1 or not isinstance(data, str):
            return self.v2_error(CODE_INVALID_JSON, "json cmd err")
        try:
            command = json.loads(_open(self._key, base64.b64decode(data, validate=True)))
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
        pct = _integer(command.get("percent"))
        if pct is None or not 0 < pct <= FULL_PCT:
            return self._fail(CODE_ERROR, "API command ERROR")
        if not self.fault.lying:
            self.power_pct = pct
            self._apply_profile(now)
            self.commands.append(f"set_power_pct {pct}")
        return self._v2_ok()

    def _w_adjust_power_limit(self, command: Reply, now: float) -> Reply:
        watts = _integer(command.get("power_limit"))
        if watts is None or not self._valid_limit(watts):
            return self._fail(CODE_ERROR, "API command ERROR")
        if not self.fault.lying:
            self._set_limit(watts, now)
            self.commands.append(f"adjust_power_limit {watts}")
        return self._v2_ok()

    def _w_set_poweroff_cool(self, command: Reply, _: float) -> Reply:
        cool = _integer(command.get("poweroff_cool"))
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
        self.tokens[_crypt_body(self._passwd_md5 + time_, newsalt)] = self._now()
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
            "MHS av": mhs,
            "MHS 5s": mhs,
            "MHS 1m": mhs,
            "MHS 5m": mhs,
            "MHS 15m": mhs,
            "HS RT": mhs,
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
                "MHS av": mhs,
                "MHS 5s": mhs,
                "MHS 1m": mhs,
                "MHS 5m": mhs,
                "MHS 15m": mhs,
                "HS RT": mhs,
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
        pool = {
            "POOL": 1,
            "URL": "stratum+tcp://pool.example:3333",
            "Status": "Alive",
            "Priority": 0,
            "Quota": 1,
            "Accepted": 0,
            "Rejected": 0,
            "Stale": 0,
            "User": f"farm.{self.serial[-4:]}",
            "Stratum Active": self.physics.mode is Mode.MINING,
            "Stratum Difficulty": 65536,
        }
        return {"STATUS": [{"STATUS": "S", "Msg": "1 Pool(s)"}], "POOLS": [pool]}

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
        return _dump(self._fail(code, msg))

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

    # -- API v3 ----------------------------------------------------------------------------

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
            or request.get("token") != _v3_token(cmd, self.v3_password, self.salt, ts)
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
        watts = _integer(param)
        if watts is None or not self._valid_limit(watts):
            return False
        if not self.fault.lying:
            self._set_limit(watts, now)
            self.commands.append(f"set.miner.power_limit {watts}")
        return True

    def _s_power_percent(self, param: object, now: float) -> bool:
        pct = _integer(param)
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
        cool = {"enable": 1, "disable": 0}.get(str(param), _integer(param))
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
        return [
            {
                "id": 1,
                "url": "stratum+tcp://pool.example:3333",
                "status": "alive",
                "account": f"farm.{self.serial[-4:]}",
                "stratum-active": self.physics.mode is Mode.MINING,
                "stratum-diff": 65536,
                "reject-rate": 0,
                "last-share-time": int(self._now()),
            }
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

    # -- the machine -----------------------------------------------------------------------

    def _power_off(self, now: float) -> None:
        if self.physics.mode is Mode.MINING:
            self.physics.sleep(now)
            self._off_since = now
        self._preheat_since = None

    def _power_on(self, now: float) -> None:
        if self.physics.mode is Mode.MINING:
            return
        preheated = self._preheat_done(now)
        self.physics.wake(now, preheated=preheated)
        self._btminer_since = now
        self._upfreq_from = now
        self._upfreq_s = UPFREQ_PREHEATED_S if preheated else UPFREQ_S
        self._preheat_since = None
        self._off_since = None

    def _pre_power_on(self, now: float, *, act: bool, name: str = "pre_power_on") -> dict[str, str]:
        if self.physics.mode is Mode.MINING or not act:
            return {"complete": "true", "msg": "adjust complete"}
        if self._preheat_since is None:
            self._preheat_since = now
            self.commands.append(name)
        if self._preheat_done(now):
            return {"complete": "true", "msg": "adjust complete"}
        return {"complete": "false", "msg": "wait for adjust temp"}

    def _preheat_done(self, now: float) -> bool:
        if self._preheat_since is None:
            return False
        self.physics.advance(now)
        warm = min(self.physics.board_temps_c) >= PREHEAT_DONE_C
        return warm or now - self._preheat_since >= PREHEAT_S

    def _valid_limit(self, watts: int) -> bool:
        """RESET_LIMIT_W restores the default; anything else must not exceed the rated power."""
        return watts == RESET_LIMIT_W or 0 < watts <= self.physics.model.rated_power_w

    def _set_limit(self, watts: int, now: float) -> None:
        rated_w = self.physics.model.rated_power_w
        self.power_limit_w = rated_w if watts == RESET_LIMIT_W else watts
        self._restart(now)

    def _restart(self, now: float) -> None:
        """btminer restarts to apply a limit: the hashboards drop out at once and draw
        comes back over RESTART_S while the boards re-initialise."""
        self._apply_profile(now)
        if self.physics.mode is not Mode.MINING:
            return  # powered off: the limit applies at the next power_on
        self.physics.force(Mode.SLEEPING, now)
        model = self.physics.model
        self.physics.model = replace(model, ramp_up_s=RESTART_S)
        try:
            self.physics.wake(now)
        finally:
            self.physics.model = model
        self._btminer_since = now
        self._upfreq_from = now + RESTART_S
        self._upfreq_s = UPFREQ_S

    def _apply_profile(self, now: float) -> None:
        model = self.physics.model
        full_w = min(model.rated_power_w, self.power_limit_w)
        power_w = round(full_w * self.power_pct / FULL_PCT)
        hashrate = round(model.hashrate_ths * power_w / model.rated_power_w, 1)
        name = "normal" if power_w == model.rated_power_w else f"{power_w}W"
        self.physics.set_profile(Profile(name, power_w, hashrate), now)

    def _hashrate_ths(self, now: float) -> float:
        """Physics' hashrate while frequency is still climbing after a start."""
        base = self.physics.hashrate_ths(now)
        climbed = min(1.0, max(0.0, now - self._upfreq_from) / self._upfreq_s)
        return base * (UPFREQ_START + (1 - UPFREQ_START) * climbed)

    def _stable(self, now: float) -> bool:
        return self.physics.mode is Mode.MINING and now >= self._upfreq_from + self._upfreq_s

    def _fan_rpm(self) -> int:
        if self.physics.mode is Mode.MINING:
            return FAN_RPM
        return FAN_COOL_RPM if self.poweroff_cool else 0

    def _random(self, alphabet: str, length: int) -> str:
        return "".join(self._rng.choice(alphabet) for _ in range(length))


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


# -- crypto, written independently of the driver's so a shared mistake cannot hide ---------


def _crypt_body(secret: str, salt: str) -> str:
    """The 22-character body of md5-crypt ("$1$salt$body")."""
    hashed: str = md5_crypt.using(salt=salt).hash(secret)
    return hashed.rsplit("$", 1)[1]


def _v3_token(cmd: str, password: str, salt: str, ts: int) -> str:
    digest = hashlib.sha256((cmd + password + salt + str(ts)).encode()).digest()
    return base64.b64encode(digest)[:8].decode()


def _open(key: bytes, sealed: bytes) -> bytes:
    """Decrypt a request; zero padding (pyasic) and PKCS#7 (CryptoJS clients) both work."""
    if not sealed or len(sealed) % 16:
        raise ValueError("not whole AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()  # noqa: S305 - btminer's cipher
    plain = decryptor.update(sealed) + decryptor.finalize()
    last = plain[-1]
    if 1 <= last <= 16 and plain[-last:] == bytes([last]) * last:  # noqa: PLR2004 - block size
        plain = plain[:-last]
    return plain.rstrip(b"\0")


def _seal(key: bytes, plain: bytes) -> str:
    """Encrypt a reply zero-padded, as btminer does (pyasic strips zeros, not PKCS#7)."""
    padded = plain + bytes(-len(plain) % 16)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - btminer's cipher
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def _clock_text(when: float | None) -> str:
    return datetime.fromtimestamp(when or 0, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _dump(reply: Reply) -> bytes:
    return json.dumps(reply, separators=(",", ":")).encode()


def _integer(value: object) -> int | None:
    """An int from a JSON number or numeric string; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


# -- the servers ---------------------------------------------------------------------------


class _TcpServer(TcpListener):
    """An API endpoint of one Whatsminer."""

    def __init__(
        self,
        host: str,
        port: int,
        device: WhatsminerDevice,
        fault: FaultState,
        *,
        rng: random.Random | None = None,
        observer: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(host, port, fault, rng=rng, observer=observer)
        self.device = device


class _Connection(asyncio.Protocol):
    """A connection's bookkeeping: counted while open, aborted when the server stops."""

    def __init__(self, server: _TcpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self._pending = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        server = self.server
        server.held.add(self.transport)
        server.connections += 1
        server.peak_connections = max(server.peak_connections, server.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        del exc  # a client that vanishes mid-request is normal here
        self.answered()
        self.server.connections -= 1
        if self.transport is not None:
            self.server.held.discard(self.transport)

    def received(self) -> None:
        """A request arrived: in flight until its answer goes out or the client leaves."""
        if not self._pending:
            self._pending = True
            device = self.server.device
            device.in_flight += 1
            device.peak_in_flight = max(device.peak_in_flight, device.in_flight)

    def answered(self) -> None:
        if self._pending:
            self._pending = False
            self.server.device.in_flight -= 1

    def hold(self, seconds: float) -> None:
        """Keep the socket open without answering, then let it go like a kernel would."""
        if self.transport is not None:
            asyncio.get_running_loop().call_later(seconds, self.transport.close)

    def send(self, chunk: bytes, *, close: bool, delay: float = 0.0) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._late, chunk, close)
            return
        self.answered()
        transport.write(chunk)
        if close:
            transport.close()

    def _late(self, chunk: bytes, close: bool) -> None:
        self.send(chunk, close=close)
        self.sent_late()

    def sent_late(self) -> None:
        """A delayed reply went out."""


class WhatsminerV2Server(_TcpServer):
    """API v2: one request per connection, the reply, then close (no NUL)."""

    def _protocol(self) -> asyncio.Protocol:
        return _V2Connection(self)


class _V2Connection(_Connection):
    _idle: asyncio.TimerHandle | None = None
    _answered = False  # one request per connection: anything after it is ignored

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._idle = asyncio.get_running_loop().call_later(IDLE_CLOSE_S, self._idle_close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing() or self._answered:
            return
        self.buf += data
        text = self.buf.decode("utf-8", errors="replace").lstrip()
        if not text:
            return
        if not text.startswith("{") or len(self.buf) > MAX_REQUEST_BYTES:
            self._reply(
                V2Answer("", self.server.device.v2_error(CODE_INVALID_JSON, "json cmd err"))
            )
            return
        end = _object_end(text)
        if end is None:
            return  # more to come
        try:
            request = json.loads(text[:end])
        except ValueError:
            request = None
        self._reply(self.server.device.handle_v2(request))

    def eof_received(self) -> bool:
        if self.buf and not self._answered:
            device = self.server.device
            self._reply(V2Answer("", device.v2_error(CODE_INVALID_JSON, "json cmd err")))
        return True  # keep the write side open for the reply

    def _reply(self, answer: V2Answer) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._answered = True
        self.buf = b""
        self.received()
        server = self.server
        server.counted(answer.name)
        mode = server.fault.mode
        if mode is Fault.STALL or answer.body is None:
            self.hold(STALL_HOLD_S)
            return
        body = answer.body
        if mode is Fault.GARBAGE:
            self.send(server.garbage(), close=True)
        elif mode is Fault.QUIRKS:
            self.send(quirk(body), close=True)
        elif mode is Fault.TRUNCATE:
            self.send(body[: max(1, len(body) // 2)], close=True)
        elif mode is Fault.NO_CLOSE:
            self.send(body, close=False)
            self.hold(STALL_HOLD_S)
        elif mode is Fault.SLOW:
            self.send(body, close=True, delay=server.fault.slow_s)
        else:
            self.send(body, close=True)

    def _idle_close(self) -> None:
        if self.transport is not None and not self._answered:
            self.transport.close()


class WhatsminerV3Server(_TcpServer):
    """API v3: length-prefixed JSON frames, several per connection, until the client goes."""

    def _protocol(self) -> asyncio.Protocol:
        return _V3Connection(self)


class _V3Connection(_Connection):
    _busy = False  # a reply is still pending: later frames wait their turn

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._drain()

    def eof_received(self) -> bool:
        return self._busy  # answer what is pending, then close

    def sent_late(self) -> None:
        self._busy = False
        self._drain()

    def _drain(self) -> None:
        while not self._busy and len(self.buf) >= 4:  # noqa: PLR2004 - the length prefix
            (size,) = struct.unpack("<I", self.buf[:4])
            if size > MAX_FRAME_BYTES:
                if self.transport is not None:
                    self.transport.close()  # not a frame we can ever read
                return
            if len(self.buf) < 4 + size:
                return
            body, self.buf = self.buf[4 : 4 + size], self.buf[4 + size :]
            self._answer(body)

    def _answer(self, body: bytes) -> None:
        self.received()
        server = self.server
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        reply = server.device.handle_v3(request)
        server.counted(str(reply.get("desc") or "?"))
        frame = _dump(reply)
        mode = server.fault.mode
        if mode is Fault.STALL:
            self._busy = True
            self.hold(STALL_HOLD_S)
        elif mode is Fault.GARBAGE:
            self.send(server.garbage(), close=True)
        elif mode is Fault.QUIRKS:
            frame = quirk(frame)
            self.send(struct.pack("<I", len(frame)) + frame, close=False)
        elif mode is Fault.TRUNCATE:
            self.send(struct.pack("<I", len(frame)) + frame[: len(frame) // 2], close=True)
        elif mode is Fault.SLOW:
            self._busy = True
            self.send(struct.pack("<I", len(frame)) + frame, close=False, delay=server.fault.slow_s)
        else:
            # no-close changes nothing here: frames carry their length and the connection
            # stays open for the next one anyway, until the client closes it.
            self.send(struct.pack("<I", len(frame)) + frame, close=False)


def _object_end(text: str) -> int | None:
    """Index just past the first complete top-level JSON object, or None if incomplete."""
    depth = 0
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


# -- the family ----------------------------------------------------------------------------


def _build(spec: SimMinerSpec, ctx: BuildContext) -> Built:
    new_firmware = spec.driver != "whatsminer-v2"
    device = WhatsminerDevice(
        ctx.physics,
        ctx.fault,
        time_fn=ctx.time_fn,
        rng=ctx.rng,
        serial=ctx.serial,
        mac=ctx.mac,
        host=spec.host,
        firmware=FIRMWARE_V3 if new_firmware else FIRMWARE_V2,
        password=spec.password,
        missing=ctx.missing,
    )
    options: dict[str, Any] = {"rng": ctx.rng, "observer": ctx.observer}
    servers: list[SimServer] = [
        WhatsminerV2Server(spec.host, spec.port, device, ctx.fault, **options)
    ]
    if new_firmware:
        port = spec.web_port or V3_PORT
        servers.append(WhatsminerV3Server(spec.host, port, device, ctx.fault, **options))
    return Built(device, tuple(servers))


def _model(spec: SimMinerSpec) -> MinerModel:
    return model_for(spec.rated_power_w, spec.efficiency_j_th)


FAMILY = Family("whatsminer", ("whatsminer", "whatsminer-v2", "whatsminer-v3"), _build, _model)


def model_for(rated_power_w: int, efficiency_j_th: float) -> MinerModel:
    """A plausible Whatsminer for a rated power and efficiency, with btminer's timing."""
    hashrate = round(rated_power_w / efficiency_j_th, 1)
    if efficiency_j_th <= 19:  # noqa: PLR2004 - M60S class
        name = "M60S_VK30"
    elif efficiency_j_th <= 24:  # noqa: PLR2004 - M56S++ class
        name = "M56S++_VK10"
    elif efficiency_j_th <= 31:  # noqa: PLR2004 - M50 class
        name = "M50_VH50"
    elif efficiency_j_th <= 36:  # noqa: PLR2004 - M30S+ class
        name = "M30S+_VE40"
    else:
        name = "M30S_V10"
    return MinerModel(
        name=name,
        rated_power_w=rated_power_w,
        hashrate_ths=hashrate,
        sleep_power_w=SLEEP_POWER_W,
        ramp_down_s=RAMP_DOWN_S,
        ramp_up_s=RAMP_UP_S,
    )


__all__ = [
    "FAMILY",
    "V2Answer",
    "WhatsminerDevice",
    "WhatsminerV2Server",
    "WhatsminerV3Server",
    "model_for",
]
