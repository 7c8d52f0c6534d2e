"""btminer's state over a Whatsminer's physics, which its API v2 and v3 both act on:
power_off drops draw in seconds; power_on brings draw back in seconds while the hashrate
climbs for minutes (upfreq); pre_power_on warms cold boards so that a full-power start
succeeds (see physics) and that climb is shorter; a power limit restarts btminer: draw
falls to the control board's and comes back over minutes.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from drivers.types import Mode
from sim.faults import FaultState
from sim.missing import Missing
from sim.physics import MinerPhysics, Profile, hashrate_fraction
from sim.pools import SimPools, default_pools
from sim.whatsminer.crypto import crypt_body

Reply = dict[str, Any]

V2_PASSWORD = "admin"  # noqa: S105 - btminer's documented factory admin password
V3_PASSWORD = "super"  # noqa: S105 - API v3 accounts default to their own names
SHADOW_SALT = "BQ5hoXV9"  # the factory admin hash's salt; get_token hands it out

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


class WhatsminerMachine:
    """One Whatsminer's state over its physics: what both APIs read and change. The APIs
    are subclasses (sim.whatsminer.v2, .v3); WhatsminerDevice speaks both."""

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
        pools: SimPools | None = None,
    ) -> None:
        self.physics = physics
        self.missing = missing or Missing()  # what this build lacks (sim.missing)
        self.pools = pools or SimPools()
        self.pools.preset(default_pools(serial))
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
        self._passwd_md5 = crypt_body(self.v2_password, SHADOW_SALT)
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
        # btminer lowers frequency and voltage to hold a limit: the shared concave curve
        share = hashrate_fraction(power_w / max(model.rated_power_w, 1))
        hashrate = round(model.hashrate_ths * share, 1)
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


def dump(reply: Reply) -> bytes:
    return json.dumps(reply, separators=(",", ":")).encode()


def integer(value: object) -> int | None:
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
