"""A simulated stock Bitmain Antminer (bmminer/cgminer firmware): 4028 and the web CGI.

Reply shapes follow captures from real units where they exist (asic-rs: S21 XP Hyd and
S23 Hyd `stats`; Block's S21 fixtures; pyasic and asic-rs issues) and the decompiled S19
Pro bmminer otherwise. What no source shows is marked (inferred).

- 4028 is read-only, as the stock `api-groups "A:stats:pools:devs:summary:version"` and
  `api-allow "A:0/0,W:*"` make it: any other known command answers E 45 "Access denied",
  an unknown one E 14.
- The CGI sits behind lighttpd's HTTP Digest (realm "antMiner Configuration", qop auth,
  MD5). `set_miner_conf.cgi` takes the browser's JSON; which mode key this build honours
  is a switch (`mode_key`), as real builds differ.
- Saving restarts the mining process: 4028 refuses connections for `restart_s` (sim
  time), then the new process runs in the new mode. Power falls over ~20 s and returns
  over a longer board init. The CGI answers only after the restart, 20-30 s on real units;
  here after `conf_reply_delay_s` of wall time, short by default so tests stay fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import random
import re
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from drivers.types import Mode
from sim.cgminer_server import (
    CODE_ACCESS_DENIED,
    CODE_INVALID_COMMAND,
    CgminerServer,
    Reply,
    _Connection,
)
from sim.families import BuildContext, Built, Family, SimMinerSpec, recent
from sim.faults import Fault, FaultState
from sim.http_server import Handler, HttpSimServer
from sim.missing import Missing, http_missing
from sim.physics import MinerModel, MinerPhysics, Profile, antminer_class

REALM = "antMiner Configuration"
USER = "root"  # the only web user on stock firmware
DEFAULT_PASSWORD = "root"  # noqa: S105 - the firmware's published default
DEFAULT_WEB_PORT = 80
NONCE_TTL_S = 600.0  # (inferred) how long an issued digest nonce stays valid
MAX_NONCES = 64  # lighttpd keeps no nonce table at all; a bound is enough here

RESTART_S = 10.0  # 4028 is down while bmminer restarts (Tether: "mode changes take 10-20 s")
CONF_REPLY_DELAY_S = 1.0  # wall time; real: ~21 s (S19j Pro 2022), the S17 CGI sleeps 30 s
SLEEP_POWER_W = 55  # (inferred) control board, PSU standby, four fans at ~960 rpm
SLEEP_FAN_RPM = 960  # a sleeping S19 (hass-miner #424)
MINING_FAN_RPM = 5400
RAMP_DOWN_S = 20.0  # the restart stops hashing; the PSU winds down over tens of seconds
RAMP_UP_S = 75.0  # the new process re-initialises every board before hashing fully
LOW_POWER = (0.7, 0.67)  # mode 3: power and hashrate scale (hass-miner #525: 90 -> 60 TH)

MODE_NORMAL = 0
MODE_SLEEP = 1
MODE_HIGH = 2  # HEM on S19k Pro; simulated at normal power
MODE_LOW = 3
MODE_NAMES = {MODE_NORMAL: "normal", MODE_SLEEP: "sleep", MODE_HIGH: "high", MODE_LOW: "low"}

DESCRIPTION = "cgminer 1.0.0"  # STATUS Description on S19, S21 and S21 XP Hyd
CODE_POOLS = 7
CODE_DEVS = 9
CODE_SUMMARY = 11
CODE_VERSION = 22
CODE_STATS = 70

READ_COMMANDS = frozenset({"stats", "pools", "devs", "summary", "version"})
# bitmaintech/cgminer api.c's command table: known, so denied (45) rather than invalid (14).
KNOWN_COMMANDS = READ_COMMANDS | frozenset(
    {
        "config", "edevs", "estats", "devdetails", "switchpool", "addpool", "poolpriority",
        "poolquota", "enablepool", "disablepool", "removepool", "save", "quit", "restart",
        "privileged", "notify", "check", "failover-only", "coin", "debug", "setconfig",
        "usbstats", "zero", "hotplug", "asc", "ascenable", "ascdisable", "ascidentify",
        "ascset", "asccount", "pga", "pgaenable", "pgadisable", "pgaidentify", "pgaset",
        "pgacount", "lcd", "lockstats",
    }
)  # fmt: skip

OK_REPLY = {"stats": "success", "code": "M000", "msg": "OK!"}
BAD_POOL_REPLY = {"stats": "error", "code": "M001", "msg": "Invalid pool!"}  # Tether mock
BAD_DATA_REPLY = {"stats": "error", "code": "M001", "msg": "Invalid data!"}  # (inferred)

_UNAUTHORIZED_PAGE = (
    '<?xml version="1.0" encoding="iso-8859-1"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML'
    ' 1.0 Transitional//EN"\n         "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">'
    '\n<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n <head>\n'
    "  <title>401 Unauthorized</title>\n </head>\n <body>\n  <h1>401 Unauthorized</h1>\n"
    " </body>\n</html>\n"
)  # lighttpd's page, as pyasic #243 shows it


@dataclass(frozen=True, slots=True)
class Build:
    """What the firmware says about itself."""

    miner: str
    compile_time: str
    asic_num: int


# The S19-class identity is the S19j Pro build of asic-rs #245 (honours only "miner-mode");
# the S21 one is Block's S21 capture.
S19_BUILD = Build("49.0.1.3", "Mon Dec 26 17:10:01 CST 2022", 126)
S21_BUILD = Build("uart_trans.1.3", "Thu Jul 11 16:38:25 CST 2024", 108)


@dataclass(slots=True)
class _Nonce:
    issued_at: float
    last_nc: int = 0


class AntminerStockDevice:
    """One stock Antminer's firmware state over its physics: config, runtime mode, nonces."""

    def __init__(
        self,
        physics: MinerPhysics,
        *,
        rpc_fault: FaultState,
        web_fault: FaultState,
        time_fn: Callable[[], float],
        rng: random.Random,
        serial: str,
        mac: str,
        password: str,
    ) -> None:
        self.physics = physics
        self.commands = recent()  # mode changes actually carried out
        self.rpc_fault = rpc_fault
        self.web_fault = web_fault
        self._now = time_fn
        self._rng = rng
        self.serial = serial
        self.mac = mac
        self.password = password
        self.build = S21_BUILD if physics.model.name.startswith("Antminer S21") else S19_BUILD
        # Knobs a test may turn to model other builds and failures:
        self.mode_key = "miner-mode"  # the write key this build honours (see module doc)
        self.restart_s = RESTART_S
        self.conf_reply_delay_s = CONF_REPLY_DELAY_S
        self.conf_error_status: int | None = None  # get_miner_conf answers this status
        self.allowed = READ_COMMANDS  # the api-groups "A" list
        self.joinable = READ_COMMANDS  # bmminer-mix joins; empty: "a+b" is refused
        self.posts: deque[dict[str, Any]] = deque(maxlen=32)  # authorised set_miner_conf bodies
        self.in_flight = 0  # requests being served on either endpoint
        self.peak_in_flight = 0
        self.refused_connections = 0  # 4028 connections reset during a restart
        self.challenges = 0  # 401 Digest challenges sent
        self._started = time_fn()
        self._nonces: dict[str, _Nonce] = {}
        self._serving: set[asyncio.Task[Any]] = set()
        mode = MODE_NORMAL if physics.mode is Mode.MINING else MODE_SLEEP
        self._mode_before = mode  # the old process's mode, until the restart ends
        self._next_mode = mode  # the mode the new process starts in
        self._restart_until = -math.inf
        self.conf = _initial_conf(serial, mode)

    def reset(self, mode: Mode) -> None:
        """Simulator control: `mode` at steady draw at once, no restart pending, no nonces."""
        now = self._now()
        self.physics.force(mode, now)
        self._mode_before = self._next_mode = MODE_NORMAL if mode is Mode.MINING else MODE_SLEEP
        self.conf["bitmain-work-mode"] = str(self._next_mode)
        self._restart_until = -math.inf
        self._nonces.clear()

    def restarting(self) -> bool:
        """True while the mining process restarts: 4028 refuses, the CGIs have no stats."""
        return self._now() < self._restart_until

    @property
    def runtime_mode(self) -> int:
        """The work mode the running bmminer process was started in."""
        return self._mode_before if self.restarting() else self._next_mode

    # -- 4028 ------------------------------------------------------------------------------

    def handle(self, command: str, parameter: str | None) -> Reply:
        del parameter  # no read command of group A takes one
        if command not in KNOWN_COMMANDS:
            return self.error(CODE_INVALID_COMMAND, "Invalid command")
        if command not in self.allowed:
            return self.error(CODE_ACCESS_DENIED, f"Access denied to '{command}' command")
        result: Reply = getattr(self, f"_rpc_{command}")()
        return result

    def error(self, code: int, msg: str) -> Reply:
        return {"STATUS": [self._status(code, msg, "E")], "id": 1}

    def _rpc_version(self) -> Reply:
        version = {
            "BMMiner": "1.0.0",
            "API": "3.1",
            "Miner": self.build.miner,
            "CompileTime": self.build.compile_time,
            "Type": self.physics.model.name,
        }
        return self._ok(CODE_VERSION, "CGMiner versions", "VERSION", [version])

    def _rpc_summary(self) -> Reply:
        now = self._now()
        ghs = self.physics.hashrate_ths(now) * 1000
        summary = {
            "Elapsed": int(now - self._started),
            "GHS 5s": f"{ghs:.2f}",  # a string on the S19 Pro bmminer (api_add_string)
            "GHS av": round(ghs, 2),
            "Found Blocks": 0,
            "Getworks": 0,
            "Accepted": 0,
            "Rejected": 0,
            "Hardware Errors": 0,
            "Utility": 0.0,
            "Discarded": 0,
            "Stale": 0,
            "Get Failures": 0,
            "Local Work": 0,
            "Remote Failures": 0,
            "Network Blocks": 0,
            "Total MH": 0.0,
            "Work Utility": 0.0,
            "Difficulty Accepted": 0.0,
            "Difficulty Rejected": 0.0,
            "Difficulty Stale": 0.0,
            "Best Share": 0,
            "Device Hardware%": 0.0,
            "Device Rejected%": 0.0,
            "Pool Rejected%": 0.0,
            "Pool Stale%": 0.0,
            "Last getwork": int(now),
        }
        return self._ok(CODE_SUMMARY, "Summary", "SUMMARY", [summary])

    def _rpc_stats(self) -> Reply:
        now = self._now()
        chains = self._chains(now)
        ghs = sum(c["rate"] for c in chains)
        ideal = self.physics.profile.hashrate_ths * 1000
        fan = self._fan_rpm()
        board: dict[str, Any] = {
            "STATS": 0,
            "ID": "BTM_SOC0",
            "Elapsed": int(now - self._started),
            "Calls": 0,
            "Wait": 0,
            "Max": 0,
            "Min": 99999999,
            "GHS 5s": round(ghs, 2),
            "GHS av": round(ghs, 2),
            "rate_30m": round(ghs, 2),
            "Mode": self.runtime_mode,
            "miner_count": len(chains),
            "frequency": chains[0]["freq"] if chains else 0,
            "fan_num": 4,
        }
        board.update({f"fan{i}": fan for i in range(1, 5)})
        board["temp_num"] = len(chains)
        for i, chain in enumerate(chains, start=1):
            board[f"temp{i}"] = max(chain["pcb"])
            board[f"temp2_{i}"] = max(chain["chip"])
        for key in ("pcb", "chip", "pic"):
            for i in range(1, 5):
                values = chains[i - 1][key] if i <= len(chains) else [0, 0, 0, 0]
                board[f"temp_{key}{i}"] = "-".join(str(v) for v in values)
        board.update(
            {
                "total_rateideal": round(ideal, 2),
                "rate_unit": "GH",
                "total_freqavg": chains[0]["freq"] if chains else 0,
                "total_acn": sum(c["acn"] for c in chains),
                "total rate": round(ghs, 2),
                "temp_max": max((max(c["chip"]) for c in chains), default=0),
                "no_matching_work": 0,
            }
        )
        for i in range(1, 5):
            slot = chains[i - 1] if i <= len(chains) else None
            board[f"chain_acn{i}"] = slot["acn"] if slot else 0
            board[f"chain_acs{i}"] = _acs(slot["acn"]) if slot else ""
        for i in range(1, 5):
            board[f"chain_hw{i}"] = 0
        for i in range(1, 5):
            slot = chains[i - 1] if i <= len(chains) else None
            board[f"chain_rate{i}"] = f"{slot['rate']:.2f}" if slot else ""
        for i in range(1, 5):
            board[f"freq{i}"] = chains[i - 1]["freq"] if i <= len(chains) else 0
        board["miner_version"] = self.build.miner
        board["miner_id"] = self.serial.lower()
        header = {
            "BMMiner": "1.0.0",
            "Miner": self.build.miner,
            "CompileTime": self.build.compile_time,
            "Type": self.physics.model.name,
        }
        return self._ok(CODE_STATS, "CGMiner stats", "STATS", [header, board])

    def _rpc_pools(self) -> Reply:
        pools = []
        for i, pool in enumerate(self.conf["pools"]):
            configured = bool(pool["url"])
            pools.append(
                {
                    "POOL": i,
                    "URL": pool["url"],
                    "Status": "Alive" if configured else "Deed",  # sic, Block's S21 capture
                    "Priority": i,
                    "Quota": 1,
                    "Long Poll": "N",
                    "Getworks": 0,
                    "Accepted": 0,
                    "Rejected": 0,
                    "Discarded": 0,
                    "Stale": 0,
                    "Get Failures": 0,
                    "Remote Failures": 0,
                    "User": pool["user"],
                    "Last Share Time": "0",
                    "Diff": "",
                    "Diff1 Shares": 0,
                    "Proxy Type": "",
                    "Proxy": "",
                    "Difficulty Accepted": 0.0,
                    "Difficulty Rejected": 0.0,
                    "Difficulty Stale": 0.0,
                    "Last Share Difficulty": 0.0,
                    "Has Stratum": configured,
                    "Stratum Active": configured and i == 0 and self.runtime_mode != MODE_SLEEP,
                    "Stratum URL": pool["url"].split("//")[-1].split(":")[0],
                    "Has GBT": False,
                    "Best Share": 0.0,
                    "Pool Rejected%": 0.0,
                    "Pool Stale%%": 0.0,  # sic
                }
            )
        return self._ok(CODE_POOLS, f"{len(pools)} Pool(s)", "POOLS", pools)

    def _rpc_devs(self) -> Reply:
        now = self._now()
        mhs = self.physics.hashrate_ths(now) * 1e6
        temps = self._temps(now)
        dev = {
            "ASC": 0,
            "Name": "BTM_SOC",
            "ID": 0,
            "Enabled": "Y",
            "Status": "Alive",
            "Temperature": round(max(temps, default=0.0), 1),
            "MHS av": round(mhs, 2),
            "MHS 5s": round(mhs, 2),
            "Accepted": 0,
            "Rejected": 0,
            "Hardware Errors": 0,
            "Utility": 0.0,
            "Last Share Pool": 0,
            "Last Share Time": int(now),
            "Total MH": 0.0,
            "Diff1 Work": 0,
            "Difficulty Accepted": 0,
            "Difficulty Rejected": 0,
            "Last Share Difficulty": 0,
            "Last Valid Work": int(now),
            "Device Hardware%": 0.0,
            "Device Rejected%": 0.0,
            "Device Elapsed": int(now - self._started),
        }
        return self._ok(CODE_DEVS, "1 ASC(s)", "DEVS", [dev])

    # -- the web CGI -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.track])
        app.router.add_get("/", self._index)
        app.router.add_get("/cgi-bin/get_miner_conf.cgi", self._get_miner_conf)
        app.router.add_post("/cgi-bin/set_miner_conf.cgi", self._set_miner_conf)
        app.router.add_get("/cgi-bin/stats.cgi", self._stats_cgi)
        app.router.add_get("/cgi-bin/summary.cgi", self._summary_cgi)
        app.router.add_get("/cgi-bin/get_system_info.cgi", self._system_info)
        app.router.add_get("/cgi-bin/get_blink_status.cgi", self._blink_status)
        return app

    @web.middleware
    async def track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Outermost: count requests in flight and keep their tasks for cancel_serving."""
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1
            self._serving.discard(task)

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every path is behind Digest auth (lighttpd protects `/` too)."""
        refusal = self._check_digest(request)
        if refusal is not None:
            return refusal
        return await handler(request)

    def cancel_serving(self) -> list[asyncio.Task[Any]]:
        """End requests still being served: a stalled reply holds its handler for a
        minute, and aiohttp's shutdown would wait that long for it."""
        tasks = list(self._serving)
        for task in tasks:
            task.cancel()
        return tasks

    async def _index(self, _: web.Request) -> web.Response:
        return web.Response(text="<html><body>Antminer</body></html>", content_type="text/html")

    async def _get_miner_conf(self, _: web.Request) -> web.Response:
        if self.conf_error_status is not None:
            return web.Response(status=self.conf_error_status, text="")
        return _json(self.conf)

    async def _set_miner_conf(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        reply = self._apply(body) if isinstance(body, dict) else BAD_DATA_REPLY
        # The real CGI restarts bmminer, then sleeps before answering; the write stands
        # even if the client has given up by then.
        await asyncio.sleep(self.conf_reply_delay_s)
        return _json(reply)

    async def _stats_cgi(self, _: web.Request) -> web.Response:
        now = self._now()
        stats: list[dict[str, Any]] = []
        if not self.restarting():
            chains = self._chains(now)
            ghs = sum(c["rate"] for c in chains)
            ideal = self.physics.profile.hashrate_ths * 1000
            stats.append(
                {
                    "elapsed": int(now - self._started),
                    "rate_5s": round(ghs, 2),
                    "rate_30m": round(ghs, 2),
                    "rate_avg": round(ghs, 2),
                    "rate_ideal": round(ideal, 2),
                    "rate_unit": "GH/s",
                    "chain_num": len(chains),
                    "fan_num": 4,
                    "fan": [self._fan_rpm()] * 4,
                    "hwp_total": 0.0,
                    "miner-mode": self.runtime_mode,  # the runtime mode (asic-rs #245)
                    "chain": [
                        {
                            "index": i,
                            "freq_avg": c["freq"],
                            "rate_ideal": round(ideal / len(chains), 2),
                            "rate_real": round(c["rate"], 2),
                            "asic_num": c["acn"],
                            "temp_pic": c["pic"],
                            "temp_pcb": c["pcb"],
                            "temp_chip": c["chip"],
                            "hw": 0,
                            "sn": f"{self.serial}{i:02d}",
                            "hwp": 0.0,
                        }
                        for i, c in enumerate(chains)
                    ],
                }
            )
        # While bmminer restarts the CGI has nothing to relay (inferred; Tether's mock
        # answers an empty STATS while asleep).
        return _json({"STATUS": self._web_status("stats"), "INFO": self._info(), "STATS": stats})

    async def _summary_cgi(self, _: web.Request) -> web.Response:
        now = self._now()
        summary: list[dict[str, Any]] = []
        if not self.restarting():
            ghs = self.physics.hashrate_ths(now) * 1000
            ideal = self.physics.profile.hashrate_ths * 1000
            ok = [
                {"type": kind, "status": "s", "code": 0, "msg": ""}
                for kind in ("rate", "network", "fans", "temp")
            ]
            summary.append(
                {
                    "elapsed": int(now - self._started),
                    "rate_5s": round(ghs, 2),
                    "rate_30m": round(ghs, 2),
                    "rate_avg": round(ghs, 2),
                    "rate_ideal": round(ideal, 2),
                    "rate_unit": "GH/s",
                    "hw_all": 0,
                    "bestshare": 0,
                    "status": ok,
                }
            )
        return _json(
            {"STATUS": self._web_status("summary"), "INFO": self._info(), "SUMMARY": summary}
        )

    async def _system_info(self, _: web.Request) -> web.Response:
        return _json(
            {
                "minertype": self.physics.model.name,
                "nettype": "DHCP",
                "netdevice": "eth0",
                "macaddr": self.mac,
                "hostname": "Antminer",
                "ipaddress": "",
                "netmask": "255.255.255.0",
                "gateway": "",
                "dnsservers": "",
                "system_mode": "GNU/Linux",
                "system_kernel_version": "Linux 4.6.0-xilinx-g03c746f7 #2 SMP PREEMPT",
                "system_filesystem_version": self.build.compile_time,
                "firmware_type": "Release",
                "serinum": self.serial,
            }
        )

    async def _blink_status(self, _: web.Request) -> web.Response:
        return _json({"blink": False})

    # -- the write -------------------------------------------------------------------------

    def _apply(self, body: dict[str, Any]) -> dict[str, str]:
        """Store what the browser's form carries; restart bmminer unless lying."""
        pools = body.get("pools")
        if pools is not None and not _valid_pools(pools):
            return BAD_POOL_REPLY
        raw_mode = body.get(self.mode_key)
        mode = _mode_value(raw_mode)
        if raw_mode is not None and mode is None:
            return BAD_DATA_REPLY
        self.posts.append(body)
        # The CGI overwrites only the pool slots it is sent (asic-rs).
        for i, pool in enumerate(pools or ()):
            self.conf["pools"][i] = {"url": pool["url"], "user": pool["user"], "pass": pool["pass"]}
        if isinstance(body.get("bitmain-fan-ctrl"), bool):
            self.conf["bitmain-fan-ctrl"] = body["bitmain-fan-ctrl"]
        if "bitmain-fan-pwm" in body:
            self.conf["bitmain-fan-pwm"] = str(body["bitmain-fan-pwm"])
        if "freq-level" in body:
            self.conf["bitmain-freq-level"] = str(body["freq-level"])
        if mode is not None:
            # The stored intent changes even when the process does not act (asic-rs #245).
            self.conf["bitmain-work-mode"] = str(mode)
        if not self.web_fault.lying:
            self._restart(self._next_mode if mode is None else mode)
        return OK_REPLY

    def _restart(self, mode: int) -> None:
        now = self._now()
        previous = self._next_mode
        self._mode_before = self.runtime_mode
        self._next_mode = mode
        self._restart_until = now + self.restart_s
        if mode == previous:
            return
        low = self.physics.model.profile("low")
        default = self.physics.model.profile("default")
        if mode == MODE_SLEEP:
            self.physics.sleep(now)
        else:
            profile = low if mode == MODE_LOW else default
            if profile is not None and profile != self.physics.profile:
                self.physics.set_profile(profile, now)
            self.physics.wake(now)
        self.commands.append(MODE_NAMES[mode])

    # -- digest auth -----------------------------------------------------------------------

    def _check_digest(self, request: web.Request) -> web.Response | None:
        """None if the request carries a valid Digest response, else the 401 to send."""
        scheme, _, rest = request.headers.get("Authorization", "").partition(" ")
        params = _auth_params(rest) if scheme.lower() == "digest" else {}
        expected = self._expected_response(request, params)
        if expected is None or not hmac.compare_digest(expected, params.get("response", "")):
            return self._challenge()
        if not self._fresh(params.get("nonce", "")):
            # Right password, but the nonce is not (or no longer) valid: RFC 7616 stale.
            return self._challenge(stale=True)
        if not self._counted(params):
            return self._challenge()  # a replayed request
        return None

    def _expected_response(self, request: web.Request, params: dict[str, str]) -> str | None:
        """The response a client knowing the password computes, None if malformed."""
        uri = params.get("uri", "")
        if (
            params.get("username") != USER
            or params.get("realm") != REALM
            or uri != request.raw_path
            or params.get("algorithm", "MD5").upper() != "MD5"
        ):
            return None
        nonce = params.get("nonce", "")
        ha1 = _md5(f"{USER}:{REALM}:{self.password}")
        ha2 = _md5(f"{request.method}:{uri}")
        qop = params.get("qop")
        if qop == "auth":
            return _md5(
                f"{ha1}:{nonce}:{params.get('nc', '')}:{params.get('cnonce', '')}:auth:{ha2}"
            )
        if qop is None:
            return _md5(f"{ha1}:{nonce}:{ha2}")  # RFC 2069 clients
        return None

    def _fresh(self, nonce: str) -> bool:
        state = self._nonces.get(nonce)
        return (
            state is not None
            and not self.web_fault.expiring
            and self._now() - state.issued_at <= NONCE_TTL_S
        )

    def _counted(self, params: dict[str, str]) -> bool:
        """qop=auth requests count up per nonce; a count seen before is a replay."""
        if params.get("qop") != "auth":
            return True
        state = self._nonces[params.get("nonce", "")]
        try:
            count = int(params.get("nc", ""), 16)
        except ValueError:
            return False
        if count <= state.last_nc:
            return False
        state.last_nc = count
        return True

    def _challenge(self, *, stale: bool = False) -> web.Response:
        self.challenges += 1
        nonce = f"{self._rng.getrandbits(128):032x}"
        self._nonces[nonce] = _Nonce(self._now())
        while len(self._nonces) > MAX_NONCES:
            del self._nonces[next(iter(self._nonces))]
        # Old lighttpd mod_auth sends exactly realm, nonce and qop; `stale` is RFC 7616's,
        # sent only for a right password with a dead nonce (inferred for this firmware).
        value = f'Digest realm="{REALM}", nonce="{nonce}", qop="auth"'
        if stale:
            value += ", stale=true"
        return web.Response(
            status=401,
            text=_UNAUTHORIZED_PAGE,
            content_type="text/html",
            headers={"WWW-Authenticate": value, "Server": "lighttpd/1.4.32"},
        )

    # -- helpers ---------------------------------------------------------------------------

    def _chains(self, now: float) -> list[dict[str, Any]]:
        temps = self._temps(now)
        rate = self.physics.hashrate_ths(now) * 1000 / max(len(temps), 1)
        hashing = rate > 0
        chains = []
        for temp in temps:
            pcb = round(temp)
            chip = pcb + 12 if hashing else pcb
            chains.append(
                {
                    "rate": rate,
                    "acn": self.build.asic_num,
                    "freq": 525 if self.physics.profile.name == "default" else 420,
                    "pcb": [pcb - 10, pcb - 3, pcb - 4, pcb],
                    "chip": [chip - 4, chip - 1, chip - 3, chip],
                    "pic": [pcb - 8, pcb - 5, pcb - 6, pcb - 2],
                }
            )
        return chains

    def _temps(self, now: float) -> list[float]:
        self.physics.advance(now)
        return list(self.physics.board_temps_c)

    def _fan_rpm(self) -> int:
        return MINING_FAN_RPM if self.runtime_mode != MODE_SLEEP else SLEEP_FAN_RPM

    def _info(self) -> dict[str, str]:
        return {
            "miner_version": self.build.miner,
            "CompileTime": self.build.compile_time,
            "type": self.physics.model.name,
        }

    def _web_status(self, msg: str) -> dict[str, Any]:
        return {"STATUS": "S", "when": int(self._now()), "Msg": msg, "api_version": "1.0.0"}

    def _status(self, code: int, msg: str, status: str = "S") -> dict[str, Any]:
        return {
            "STATUS": status,
            "When": int(self._now()),
            "Code": code,
            "Msg": msg,
            "Description": DESCRIPTION,
        }

    def _ok(self, code: int, msg: str, section: str, data: list[dict[str, Any]]) -> Reply:
        return {"STATUS": [self._status(code, msg)], section: data, "id": 1}


class StockRpcServer(CgminerServer):
    """The CGMiner API server, refusing connections while the mining process restarts."""

    def __init__(
        self,
        host: str,
        port: int,
        device: AntminerStockDevice,
        fault: FaultState,
        *,
        rng: random.Random | None = None,
        observer: Callable[[str], None] | None = None,
        missing: Missing | None = None,
    ) -> None:
        super().__init__(host, port, device, fault, rng=rng, observer=observer, missing=missing)
        self.stock = device

    async def start(self) -> None:
        if self._server is None and self.fault.mode is not Fault.REFUSE:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                lambda: _RpcConnection(self), self.host, self.port, reuse_address=True, backlog=256
            )


class StockCgiServer(HttpSimServer):
    """The CGI endpoint: HttpSimServer's wire faults, and a stop that does not wait out a
    stalled reply."""

    def __init__(
        self,
        host: str,
        port: int,
        app: web.Application,
        fault: FaultState,
        *,
        device: AntminerStockDevice,
        rng: random.Random | None = None,
        observer: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(host, port, app, fault, rng=rng, observer=observer)
        self._device = device

    async def stop(self) -> None:
        cancelled = self._device.cancel_serving()
        if cancelled:
            await asyncio.wait(cancelled, timeout=1.0)
        await super().stop()


class _RpcConnection(_Connection):
    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        device = cast("StockRpcServer", self._server).stock
        device.in_flight += 1
        device.peak_in_flight = max(device.peak_in_flight, device.in_flight)
        if device.restarting():
            device.refused_connections += 1
            # Nothing listens while bmminer restarts: reset at once (SO_LINGER 0 sends an
            # RST), which a client sees as the refused connection real units give.
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            cast("asyncio.Transport", transport).abort()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        cast("StockRpcServer", self._server).stock.in_flight -= 1


def _build(spec: SimMinerSpec, ctx: BuildContext) -> Built:
    # Each endpoint has its own fault state so a test can fail one of them alone;
    # SimFarm.set_fault sets both.
    web_fault = FaultState(ctx.fault.mode, ctx.fault.slow_s, ctx.fault.control_up)
    device = AntminerStockDevice(
        ctx.physics,
        rpc_fault=ctx.fault,
        web_fault=web_fault,
        time_fn=ctx.time_fn,
        rng=ctx.rng,
        serial=ctx.serial,
        mac=ctx.mac,
        password=spec.password or DEFAULT_PASSWORD,
    )
    rpc = StockRpcServer(
        spec.host,
        spec.port,
        device,
        ctx.fault,
        rng=ctx.rng,
        observer=ctx.observer,
        missing=ctx.missing,
    )
    app = device.app()
    cgi = StockCgiServer(
        spec.host,
        spec.web_port or DEFAULT_WEB_PORT,
        app,
        web_fault,
        device=device,
        rng=ctx.rng,
        observer=ctx.observer,
    )
    # Inside the server's fault middleware, so wire faults hit the 401s too; a CGI the
    # build lacks is a 404 behind the Digest auth, as any unknown path is (lighttpd).
    app.middlewares.append(device.guard)
    app.middlewares.append(http_missing(ctx.missing))
    return Built(device, (rpc, cgi))


def _model(spec: SimMinerSpec) -> MinerModel:
    return model_for(spec.rated_power_w, spec.efficiency_j_th)


FAMILY = Family("antminer-stock", ("antminer-stock",), _build, _model)


def model_for(rated_power_w: int, efficiency_j_th: float) -> MinerModel:
    """A stock Antminer model for a rated power and efficiency, with its low-power mode."""
    hashrate = round(rated_power_w / efficiency_j_th, 1)
    # Past the S19j Pro: the 34.5 J/TH S19, the nameplate the driver estimates with.
    name = antminer_class(efficiency_j_th) or "Antminer S19"
    power_scale, hash_scale = LOW_POWER
    return MinerModel(
        name=name,
        rated_power_w=rated_power_w,
        hashrate_ths=hashrate,
        sleep_power_w=SLEEP_POWER_W,
        ramp_down_s=RAMP_DOWN_S,
        ramp_up_s=RAMP_UP_S,
        profiles=(
            Profile("default", rated_power_w, hashrate),
            Profile("low", round(rated_power_w * power_scale), round(hashrate * hash_scale, 1)),
        ),
    )


def _initial_conf(serial: str, mode: int) -> dict[str, Any]:
    """The stock get_miner_conf key set (Block's S21 fixture), in its order."""
    return {
        "pools": [
            {"url": "stratum+tcp://pool.example:3333", "user": f"farm.{serial[-4:]}", "pass": "x"},
            {"url": "stratum+tcp://backup.example:443", "user": f"farm.{serial[-4:]}", "pass": "x"},
            {"url": "", "user": "", "pass": ""},
        ],
        "api-listen": True,
        "api-network": True,
        "api-groups": "A:stats:pools:devs:summary:version",
        "api-allow": "A:0/0,W:*",
        "bitmain-fan-ctrl": False,
        "bitmain-fan-pwm": "100",
        "bitmain-use-vil": True,
        "bitmain-freq": "525",
        "bitmain-voltage": "1320",
        "bitmain-ccdelay": "0",
        "bitmain-pwth": "3",
        "bitmain-work-mode": str(mode),
        "bitmain-hashrate-percent": "100",
        "bitmain-freq-level": "100",
    }


def _valid_pools(pools: object) -> bool:
    return (
        isinstance(pools, list)
        and len(pools) <= 3  # noqa: PLR2004 - the CGI has three pool slots
        and all(
            isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("url", "user", "pass"))
            for p in pools
        )
    )


def _mode_value(raw: object) -> int | None:
    """A work mode as the browser (int) or pyasic's string option ("1") sends it."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and raw.isdigit():
        value = int(raw)
    else:
        return None
    return value if value in MODE_NAMES else None


_AUTH_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def _auth_params(text: str) -> dict[str, str]:
    return {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _AUTH_PARAM.finditer(text)
    }


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _acs(chips: int) -> str:
    """Chip status as bmminer prints it: " oooooooo oooooooo ..." (one o per good chip)."""
    return "".join(" " + "o" * min(8, chips - i) for i in range(0, chips, 8))


def _json(data: object) -> web.Response:
    return web.Response(text=json.dumps(data, separators=(",", ":")), content_type="text/plain")


__all__ = ["FAMILY", "AntminerStockDevice", "StockCgiServer", "StockRpcServer", "model_for"]
