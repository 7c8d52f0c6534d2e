"""One Braiins OS+ miner's firmware state over its physics: tokens, pause and resume, the
tuner's power target, quick ramping and cooling. Its REST, gRPC and 4028 faces all read and
change this one object. Numbers no public source gives are marked (assumption).
"""

from __future__ import annotations

import copy
import random
import string
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from drivers.types import Mode
from sim.faults import FaultState
from sim.physics import MinerModel, MinerPhysics, Profile, hashrate_fraction
from sim.pools import SimPools, default_pools

USERNAME = "root"
TOKEN_TIMEOUT_S = 3600  # LoginResponse.timeout_s; pyasic re-logs in after 3540 s
MAX_TOKENS = 64  # pyasic logs in once per concurrent call; keep the newest
API_VERSION = (1, 7, 0)  # quick ramping and fan pause modes need >= 1.7.0 (BOS 25.07)
BOS_VERSION = "2025-07-24-0-3c4b8a5f-25.07-plus"  # pyasic takes split("-")[5] as fw_ver

# Quick ramping: the OpenAPI example {"down_s": 2, "up_s": 5}; defaults unpublished (assumption).
QUICK_UP_S = 5
QUICK_DOWN_S = 2
QUICK_RAMP_LIMITS_S = (0, 300)  # (assumption) per-device from hashboards_constraints
# The tuner walks to a new power target through intermediate profiles; users report tens
# of seconds to minutes. A full-rated-span move takes this long here (assumption).
RETUNE_S = 120.0
TARGET_MIN_FRACTION = 0.4  # power target range per model (assumption); rejected outside
TARGET_MAX_FRACTION = 1.3
AUTO_FAN_DECAY_S = 300.0  # auto pause mode: last mining speed "slowly" down to 0 (assumption)
LIMITED_FAN_RUNTIME_S = 600  # fan_pause_runtime_limited_duration_s (assumption)
FAN_MAX_RPM = 6000
FANS = 4

STATUS_NORMAL = 2  # MinerStatus (miner.proto)
STATUS_PAUSED = 3
RUNTIME_LIMITED = 1  # FanPauseRuntime
RUNTIME_INDEFINITE = 2

PAUSE_AUTO: dict[str, Any] = {"mode": {"auto": {}}}
TEMPERATURES: dict[str, Any] = {
    "target_temperature": {"degree_c": 75.0},
    "hot_temperature": {"degree_c": 90.0},
    "dangerous_temperature": {"degree_c": 100.0},
}
COOLING_DEFAULTS: dict[str, dict[str, Any]] = {
    "auto": {
        **TEMPERATURES,
        "min_fan_speed": None,
        "max_fan_speed": None,
        "minimum_required_fans": 1,
        "pause_mode": PAUSE_AUTO,
    },
    "manual": {
        **TEMPERATURES,
        "fan_speed_ratio": 0.6,
        "minimum_required_fans": 1,
        "pause_mode": PAUSE_AUTO,
    },
    "immersion": dict(TEMPERATURES),
    "hydro": dict(TEMPERATURES),
}


class BraiinsDevice:
    """One BOS+ miner's state over its physics, shared by its REST, gRPC and 4028 APIs."""

    def __init__(
        self,
        physics: MinerPhysics,
        fault: FaultState,
        *,
        time_fn: Callable[[], float],
        rng: random.Random,
        serial: str,
        mac: str,
        password: str,
        pools: SimPools | None = None,
    ) -> None:
        self.physics = physics
        self.fault = fault
        self.pools = pools or SimPools()
        self.pools.preset(default_pools(serial))
        self._now = time_fn
        self._rng = rng
        self.serial = serial
        self.mac = mac
        self.password = password
        self.commands: deque[str] = deque(maxlen=256)  # writes carried out, for tests
        self.tokens: dict[str, float] = {}  # token -> last use
        self.timeout_s = TOKEN_TIMEOUT_S
        now = time_fn()
        self._started = now
        self._since = now  # when the current status began
        self._paused_at: float | None = None if physics.mode is Mode.MINING else now
        self._fan_at_pause = 0.0
        self.quick_up_s = QUICK_UP_S
        self.quick_down_s = QUICK_DOWN_S
        # The farm spreads ramp times per unit; keep that spread when the ramping changes.
        self._spread = (
            physics.model.ramp_up_s / QUICK_UP_S,
            physics.model.ramp_down_s / QUICK_DOWN_S,
        )
        self.cooling: dict[str, dict[str, Any]] = {"auto": copy.deepcopy(COOLING_DEFAULTS["auto"])}
        self.target_w = physics.profile.power_w
        self.in_flight = 0  # REST requests being served right now
        self.peak_in_flight = 0
        self.accepted = 0

    def reset(self, mode: Mode) -> None:
        """Simulator control: drop every token and put the miner in `mode` at once."""
        now = self._now()
        self.physics.force(mode, now)
        self.tokens.clear()
        self._since = now
        self._paused_at = None if mode is Mode.MINING else now

    def now(self) -> float:
        return self._now()

    @property
    def since(self) -> float:
        """When the current status (mining or paused) began."""
        return self._since

    # -- authentication --------------------------------------------------------------------

    def login(self, username: object, password: object) -> str | None:
        """A new token, or None for bad credentials."""
        if username != USERNAME or password != self.password:
            return None
        now = self._now()
        for token, used in list(self.tokens.items()):
            if now - used > self.timeout_s:
                del self.tokens[token]
        while len(self.tokens) >= MAX_TOKENS:
            del self.tokens[next(iter(self.tokens))]
        alphabet = string.ascii_letters + string.digits
        token = "".join(self._rng.choice(alphabet) for _ in range(16))
        self.tokens[token] = now
        return token

    def authorised(self, token: str | None) -> bool:
        """Check a token and slide its expiry; `expire-sessions` expires all of them."""
        if self.fault.expiring:
            self.tokens.clear()
            return False
        if not token:
            return False
        used = self.tokens.get(token)
        now = self._now()
        if used is None:
            return False
        if now - used > self.timeout_s:
            del self.tokens[token]
            return False
        self.tokens[token] = now
        return True

    # -- actions ---------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self.physics.mode is Mode.SLEEPING

    def pause(self) -> bool:
        """Pause mining; True if it already was (the API's `already_paused`)."""
        already = self.paused
        if not already and not self.fault.lying:
            now = self._now()
            self._fan_at_pause = self.fan_ratio(now)
            self.physics.sleep(now)
            self._paused_at = self._since = now
            self.commands.append("pause")
        return already

    def resume(self) -> bool:
        """Resume mining; True if it already was (`already_mining`)."""
        already = not self.paused
        if not already and not self.fault.lying:
            now = self._now()
            self.physics.wake(now)
            self._paused_at = None
            self._since = now
            self.commands.append("resume")
        return already

    def target_range_w(self) -> tuple[int, int]:
        rated = self.physics.model.rated_power_w
        return round(rated * TARGET_MIN_FRACTION), round(rated * TARGET_MAX_FRACTION)

    def set_power_target(self, watt: int) -> str | None:
        """Retune to `watt`; the firmware's error message if it is out of range."""
        low, high = self.target_range_w()
        if not low <= watt <= high:
            return f"power target [{watt}W] is not in allowed range [Some({low}), Some({high})]"
        if self.fault.lying:
            return None
        now = self._now()
        model = self.physics.model
        self.physics.model = replace(model, ramp_down_s=RETUNE_S, ramp_up_s=RETUNE_S)
        try:
            self.physics.set_profile(self._profile(watt), now)
        finally:
            self.physics.model = model
        self.target_w = watt
        self.commands.append(f"power-target {watt}")
        return None

    def set_quick_ramping(self, up_s: int, down_s: int) -> str | None:
        low, high = QUICK_RAMP_LIMITS_S
        for name, value in (("up_s", up_s), ("down_s", down_s)):
            if not low <= value <= high:
                return f"quick ramping {name} [{value}s] is not in allowed range [{low}, {high}]"
        if self.fault.lying:
            return None
        self.quick_up_s, self.quick_down_s = up_s, down_s
        up, down = self._spread
        self.physics.model = replace(
            self.physics.model, ramp_up_s=up_s * up, ramp_down_s=down_s * down
        )
        self.commands.append(f"quick-ramping {up_s}/{down_s}")
        return None

    def set_cooling(self, request: object) -> tuple[dict[str, Any] | None, str | None]:
        """Apply a SetCoolingModeRequest: (the resulting mode, or an error message)."""
        if not isinstance(request, dict) or len(request) != 1:
            return None, "expected exactly one of auto, manual, immersion, hydro"
        kind, fields = next(iter(request.items()))
        if kind not in COOLING_DEFAULTS or not isinstance(fields, dict):
            return None, f"unknown cooling mode {kind!r}"
        current_kind, current = next(iter(self.cooling.items()))
        # Another mode starts from its defaults; the same mode is updated in place.
        result = copy.deepcopy(current if kind == current_kind else COOLING_DEFAULTS[kind])
        for key, value in fields.items():
            if key not in COOLING_DEFAULTS[kind]:
                return None, f"unknown field `{key}` for {kind} cooling"
            if value is None:
                continue
            if key == "pause_mode":
                problem = _pause_mode_problem(value)
                if problem is not None:
                    return None, problem
            result[key] = value
        if not self.fault.lying:
            self.cooling = {kind: result}
            self.commands.append(f"cooling {kind}")
        return {kind: result}, None

    # -- what the firmware reports ---------------------------------------------------------

    def status(self) -> int:
        return STATUS_PAUSED if self.paused else STATUS_NORMAL

    def power_w(self) -> int:
        return round(self.physics.power_w(self._now()))

    def hashrate_ghs(self) -> float:
        return round(self.physics.hashrate_ths(self._now()) * 1000, 2)

    def board_temps_c(self) -> list[float]:
        self.physics.advance(self._now())
        return [round(t, 1) for t in self.physics.board_temps_c]

    def chip_temps_c(self) -> list[float]:
        rise = 12.0 if not self.paused else 0.0
        return [round(t + rise, 1) for t in self.board_temps_c()]

    def tuning(self) -> bool:
        """True while the draw is still walking toward the target."""
        return not self.paused and abs(self.power_w() - self.physics.target_w) > 1

    def fan_ratio(self, now: float) -> float:
        """Fan PWM as a ratio: by temperature while mining, by the pause mode when paused."""
        kind, mode = next(iter(self.cooling.items()))
        if not self.paused or self._paused_at is None:
            if kind == "manual":
                return float(mode.get("fan_speed_ratio") or 0.0)
            if kind in ("immersion", "hydro"):
                return 0.0
            load = self.physics.power_w(now) / max(self.physics.model.rated_power_w, 1)
            return round(min(1.0, 0.3 + 0.4 * load), 3)
        paused_for = now - self._paused_at
        pause = (mode.get("pause_mode") or PAUSE_AUTO).get("mode") or {}
        manual = pause.get("manual")
        if isinstance(manual, dict):
            limited = manual.get("fan_pause_runtime") == RUNTIME_LIMITED
            if limited and paused_for >= LIMITED_FAN_RUNTIME_S:
                return 0.0
            return float(manual.get("pause_cooldown_fan_speed_ratio") or 0.0)
        return round(max(0.0, self._fan_at_pause * (1 - paused_for / AUTO_FAN_DECAY_S)), 3)

    def uptime_s(self) -> int:
        return int(self._now() - self._started)

    def model_name(self) -> str:
        return self.physics.model.name

    def _profile(self, watt: int) -> Profile:
        return target_profile(self.physics.model, watt)


def target_profile(model: MinerModel, watt: int) -> Profile:
    """The steady state the tuner settles at for a power target."""
    scale = watt / max(model.rated_power_w, 1)
    return Profile(f"{watt}W", watt, round(model.hashrate_ths * hashrate_fraction(scale), 1))


def _pause_mode_problem(value: object) -> str | None:
    mode = value.get("mode") if isinstance(value, dict) else None
    if not isinstance(mode, dict) or len(mode) != 1:
        return "pause_mode.mode must be one of auto, manual"
    if "auto" in mode:
        return None
    manual = mode.get("manual")
    if not isinstance(manual, dict):
        return "pause_mode.mode must be one of auto, manual"
    ratio = manual.get("pause_cooldown_fan_speed_ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        # cooling.proto says the ratio is required in a request; unset is an error
        return "pause_cooldown_fan_speed_ratio must be a number in 0.0..1.0"
    runtime = manual.get("fan_pause_runtime")
    if runtime is None:
        manual["fan_pause_runtime"] = RUNTIME_INDEFINITE  # default_fan_pause_runtime
    elif runtime not in (RUNTIME_LIMITED, RUNTIME_INDEFINITE):
        return "fan_pause_runtime must be 1 (limited) or 2 (indefinite)"
    return None
