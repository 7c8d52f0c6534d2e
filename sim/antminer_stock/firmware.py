"""A stock Bitmain Antminer's (bmminer/cgminer firmware) state over its physics, which its
4028 API and web CGI both read. Saving a config restarts the mining process: 4028 refuses
connections for `restart_s` (sim time), then the new process runs in the new mode. Power
falls over ~20 s and returns over a longer board init. Which mode key a build honours is a
switch (`mode_key`), as real builds differ. What no source shows is marked (inferred).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.types import Mode
from sim.antminer_stock.digest import DigestAuth
from sim.families import recent
from sim.faults import FaultState
from sim.physics import MinerPhysics
from sim.pools import SimPool

RESTART_S = 10.0  # 4028 is down while bmminer restarts (Tether: "mode changes take 10-20 s")
CONF_REPLY_DELAY_S = 1.0  # wall time; real: ~21 s (S19j Pro 2022), the S17 CGI sleeps 30 s
SLEEP_FAN_RPM = 960  # a sleeping S19 (hass-miner #424)
MINING_FAN_RPM = 5400

MODE_NORMAL = 0
MODE_SLEEP = 1
MODE_HIGH = 2  # HEM on S19k Pro; simulated at normal power
MODE_LOW = 3
MODE_NAMES = {MODE_NORMAL: "normal", MODE_SLEEP: "sleep", MODE_HIGH: "high", MODE_LOW: "low"}

# The stock `api-groups "A:stats:pools:devs:summary:version"`: all that 4028 may answer.
READ_COMMANDS = frozenset({"stats", "pools", "devs", "summary", "version"})

POOL_SLOTS = 3  # the CGI's pool slots

OK_REPLY = {"stats": "success", "code": "M000", "msg": "OK!"}
BAD_POOL_REPLY = {"stats": "error", "code": "M001", "msg": "Invalid pool!"}  # Tether mock
BAD_DATA_REPLY = {"stats": "error", "code": "M001", "msg": "Invalid data!"}  # (inferred)


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


class StockFirmware:
    """One stock Antminer's firmware state over its physics: config, runtime mode, the web
    auth. Its 4028 and CGI faces are subclasses (sim.antminer_stock.rpc, .cgi)."""

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
        self.serial = serial
        self.mac = mac
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
        self._started = time_fn()
        self.auth = DigestAuth(password, web_fault, time_fn=time_fn, rng=rng)
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
        self.auth.forget()

    @property
    def challenges(self) -> int:
        """401 Digest challenges sent."""
        return self.auth.challenges

    def restarting(self) -> bool:
        """True while the mining process restarts: 4028 refuses, the CGIs have no stats."""
        return self._now() < self._restart_until

    @property
    def runtime_mode(self) -> int:
        """The work mode the running bmminer process was started in."""
        return self._mode_before if self.restarting() else self._next_mode

    # -- the pools: the CGI's three slots are this miner's sim.pools store -----------------

    def load_pools(self) -> tuple[SimPool, ...]:
        slots = self.conf.get("pools") or ()
        return tuple(SimPool(p["url"], p["user"], p["pass"]) for p in slots if p.get("url"))

    def store_pools(self, pools: tuple[SimPool, ...]) -> None:
        """Three slots, configured ones first; stock firmware has no disabled slot, so a
        disabled pool is left out."""
        slots = [{"url": p.url, "user": p.user, "pass": p.password} for p in pools if p.enabled]
        slots = slots[:POOL_SLOTS]
        slots += [{"url": "", "user": "", "pass": ""} for _ in range(POOL_SLOTS - len(slots))]
        self.conf["pools"] = slots

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
        and len(pools) <= POOL_SLOTS
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
