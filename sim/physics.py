"""Power and board temperature of a simulated miner as functions of time.

State is advanced lazily, on access, so a farm of 10,000 idle miners costs nothing between
requests. Power ramps linearly between levels (firmware steps frequency and voltage);
board temperature is a first-order lag toward a steady value set by the firmware's fan
control (see `MinerModel.board_steady_c`).

Winter: hashboards below `cold_boot_c` fail to initialise on a hard start (sensor and board
init errors on sub-5 degC cold boots; datasheets rate operation from 0 degC). A gentle start
(a low profile), or one after pre-heating, warms them slowly enough and succeeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.types import Mode

# The hashrate a miner keeps at a share of its rated draw: one concave curve every family's
# settings follow (LuxOS profiles, Braiins power targets, Whatsminer power percent and
# limit, stock Antminer low mode). No public table pairs firmware settings with measured
# watts and hashrate (searched Luxor's, Braiins' and MicroBT's documentation); what is
# published is LuxOS's preset ladder (docs.luxor.tech/firmware/features): linear steps of
# 25 MHz and 0.1 V around the nameplate, an S19j Pro 104T at 545 MHz and 13.4 V, 16 steps
# down and 8 up, hashrate proportional to frequency (104/100/96 TH/s at 545/525/505 MHz).
# Chip power is dynamic CMOS power, ~ f * V^2. So at step k the boards hash (1 + A k) of
# nameplate and draw (1 + A k)(1 + B k)^2 of rated; fans and control board are ignored.
#
#    step  MHz   V     hashrate  power  TH/s per W (x nameplate)
#    -16   145  11.8    0.266    0.206   1.29
#    -12   245  12.2    0.450    0.373   1.21
#     -8   345  12.6    0.633    0.560   1.13
#     -4   445  13.0    0.817    0.768   1.06
#      0   545  13.4    1.000    1.000   1.00
#     +4   645  13.8    1.183    1.255   0.94
#     +8   745  14.2    1.367    1.535   0.89
#
# Near nameplate this is ~6 % less hashrate for ~8 % less power, as the simulator's
# ladders had before; real autotuned S19/S21 curves are steeper (a tuner lowers voltage
# further than the preset ladder), so the gains measured on it are conservative.
STEP_FREQUENCY = 25 / 545  # A: one LuxOS step's share of the S19j Pro's 545 MHz
STEP_VOLTAGE = 0.1 / 13.4  # B: one step's share of its 13.4 V


def _ladder_power(step: float) -> float:
    return (1.0 + STEP_FREQUENCY * step) * (1.0 + STEP_VOLTAGE * step) ** 2


def hashrate_fraction(power_fraction: float) -> float:
    """The share of nameplate hashrate at `power_fraction` of rated draw (the curve
    above, between its points as a continuous step): 1.0 at 1.0, concave, 0 at 0."""
    if power_fraction <= 0:
        return 0.0
    low, high = -1.0 / STEP_FREQUENCY, 1.0
    while _ladder_power(high) < power_fraction:
        high *= 2.0
    for _ in range(60):  # bisection: the ladder's power rises with the step
        mid = (low + high) / 2
        if _ladder_power(mid) < power_fraction:
            low = mid
        else:
            high = mid
    return max(0.0, 1.0 + STEP_FREQUENCY * (low + high) / 2)


@dataclass(frozen=True, slots=True)
class Profile:
    """A named power profile: its draw and hashrate at steady state."""

    name: str
    power_w: int
    hashrate_ths: float


@dataclass(frozen=True, slots=True)
class MinerModel:
    """Static parameters of a simulated hardware model under one firmware."""

    name: str
    rated_power_w: int
    hashrate_ths: float
    boards: int = 3
    sleep_power_w: int = 25  # LuxOS: PSU and hashboards off, control board up
    ramp_down_s: float = 3.5  # LuxOS reaches ~25 W in under 5 s
    ramp_up_s: float = 9.0  # LuxOS reaches full power in under 10 s
    thermal_tau_s: float = 90.0  # board temperature time constant
    # After an outlet is restored: the control board boots and the firmware starts (its API
    # answers nothing meanwhile), then the hashboards initialise before power ramps up.
    # "Minutes" in the field; a LuxOS cold boot "can take up to 5 minutes".
    boot_s: float = 90.0
    board_init_s: float = 120.0
    temp_rise_c: float = 42.0  # boards above ambient at rated power, fans at full speed
    board_target_c: float = 60.0  # where firmware fan control holds the boards
    max_rise_c: float = 90.0  # boards above ambient at rated power, fans at their minimum
    cold_boot_c: float = 0.0  # below this a hard start's hashboards fail to initialise
    gentle_max_fraction: float = 0.75  # a start toward at most this share of rated is gentle
    profiles: tuple[Profile, ...] = field(default=())

    def board_steady_c(self, ambient_c: float, power_w: float) -> float:
        """Where the boards settle at `power_w` (board 0; the others run a little warmer).

        Fans regulate toward `board_target_c`; in the cold they bottom out and the boards
        stay below it; in heat they run flat out and the boards climb above it. Asleep or
        cut, the draw is next to nothing and the boards settle at ambient."""
        load = max(0.0, power_w) / max(self.rated_power_w, 1)
        fans_at_minimum = ambient_c + self.max_rise_c * load
        if fans_at_minimum <= self.board_target_c:
            return fans_at_minimum
        return max(self.board_target_c, ambient_c + self.temp_rise_c * load)

    def gentle(self, profile: Profile) -> bool:
        """Whether a start toward `profile` warms cold boards slowly enough to succeed."""
        return profile.power_w <= self.gentle_max_fraction * self.rated_power_w

    def profile(self, name: str) -> Profile | None:
        return next((p for p in self.all_profiles() if p.name == name), None)

    def all_profiles(self) -> tuple[Profile, ...]:
        """Explicit profiles, or LuxOS-style steps around the default when none are given."""
        if self.profiles:
            return self.profiles
        steps = []
        for step in range(-4, 3):
            scale = 1.0 + 0.08 * step
            name = "default" if step == 0 else f"{int(575 + 25 * step)}MHz"
            steps.append(
                Profile(
                    name,
                    round(self.rated_power_w * scale),
                    round(self.hashrate_ths * hashrate_fraction(scale), 1),
                )
            )
        return tuple(steps)


StartHook = Callable[[float, float], None]
"""Called with (time, watts of the profile it starts toward) when a unit starts."""


class MinerPhysics:
    """One miner's draw and temperatures, advanced on demand to `now` (seconds)."""

    __slots__ = (
        "_boot_until",
        "_from_w",
        "_ramp_end",
        "_ramp_start",
        "_real",
        "_t",
        "ambient_c",
        "board_temps_c",
        "cold_failed",
        "failed_cold_boots",
        "mode",
        "model",
        "on_start",
        "powered",
        "profile",
        "target_w",
    )

    def __init__(
        self,
        model: MinerModel,
        *,
        ambient_c: float,
        now: float,
        mode: Mode = Mode.MINING,
        profile: str = "default",
    ) -> None:
        self.model = model
        self.ambient_c = ambient_c
        self.mode = mode
        self.profile = model.profile(profile) or model.all_profiles()[0]
        self.target_w = self._level(mode)
        self._from_w = float(self.target_w)
        self._ramp_start = now
        self._ramp_end = now
        self._t = now
        self.powered = True  # the outlet feeding it is on
        self._boot_until = now  # the control board answers from then on
        self._real: MinerPhysics | None = None  # what it really does, when it deceives
        steady = model.board_steady_c(ambient_c, self.target_w)
        self.board_temps_c = [steady + 0.7 * i for i in range(model.boards)]
        self.failed_cold_boots = 0  # starts whose hashboards failed to initialise
        self.cold_failed = False  # the last start failed cold: it needs a warm-up
        self.on_start: StartHook | None = None  # told of every start that succeeds

    def power_w(self, now: float) -> float:
        """Draw at `now` as the firmware knows it (what a deceiving unit claims)."""
        self.advance(now)
        return self._power_at(now) if self.powered else 0.0

    def true_power_w(self, now: float) -> float:
        """Wall draw at `now`, as a PDU outlet or the site meter measures it."""
        if self._real is not None and self.powered:
            return self._real.power_w(now)
        return self.power_w(now)

    def true_mode(self) -> Mode:
        return self._real.mode if self._real is not None else self.mode

    def control_up(self, now: float) -> bool:
        """Whether the control board is up and its API can answer."""
        return self.powered and now >= self._boot_until

    def deceive(self, on: bool, now: float) -> None:
        """From now on commands that lower the draw (sleep, a lower profile) change only
        what the firmware reports; those that raise it still act. When it stops, the unit
        really does what it last reported."""
        self.advance(now)
        if on and self._real is None:
            real = MinerPhysics(self.model, ambient_c=self.ambient_c, now=now, mode=self.mode)
            real.profile = self.profile
            real.target_w = self.target_w
            real._from_w = self._power_at(now)
            real._ramp_start, real._ramp_end = self._ramp_start, self._ramp_end
            real.board_temps_c = list(self.board_temps_c)
            real.cold_failed = self.cold_failed
            self._real = real
        elif not on:
            self._real = None

    def cut(self, now: float) -> None:
        """The outlet is switched off: the draw stops at once and the boards cool."""
        self.advance(now)
        self.powered = False
        self.mode = Mode.SLEEPING  # nothing hashes; the firmware is gone until it boots
        self.target_w = 0
        self._from_w = 0.0
        self._ramp_start = self._ramp_end = now
        if self._real is not None:
            self._real.cut(now)

    def restore(self, now: float) -> None:
        """The outlet is switched on: the control board boots for `boot_s` at standby draw,
        the hashboards initialise, then the unit ramps up toward its saved profile (as after
        any power loss). Cold boards and a profile that is not gentle: the initialisation
        fails and the unit stays at standby, its API up, not mining."""
        if self.powered:
            return
        self.advance(now)
        unit: MinerPhysics = self._hardware(now)
        fails = unit.cold_start_fails(preheated=False)
        self._boot(now, fails=fails)
        if unit is not self:
            unit._boot(now, fails=fails)
        self._started(now, unit.profile.power_w, fails=fails)

    def hashrate_ths(self, now: float) -> float:
        """Hashrate at `now`: proportional to how far the boards are into their ramp."""
        if self.mode is not Mode.MINING:
            return 0.0
        power = self.power_w(now)
        floor = self.model.sleep_power_w
        span = max(self.profile.power_w - floor, 1)
        return round(self.profile.hashrate_ths * max(0.0, min(1.0, (power - floor) / span)), 2)

    def sleep(self, now: float) -> None:
        self._retarget(now, Mode.SLEEPING)

    def wake(self, now: float, *, preheated: bool = False) -> None:
        """Mine toward the current profile. From sleep this starts the hashboards: with
        boards below `cold_boot_c`, a start that is neither gentle nor `preheated` fails;
        the unit stays asleep at standby draw and is counted in `failed_cold_boots`."""
        self.advance(now)
        if not self.powered:
            return  # no firmware to obey: it is gone until the outlet is restored
        unit: MinerPhysics = self._hardware(now)
        starting = unit.mode is Mode.SLEEPING
        if starting and unit.cold_start_fails(preheated=preheated):
            self._started(now, unit.profile.power_w, fails=True)
            return
        self._retarget(now, Mode.MINING)
        if unit is not self:
            unit._retarget(now, Mode.MINING)  # a deceiving unit obeys what raises its draw
        if starting:
            self._started(now, unit.profile.power_w, fails=False)

    def cold_start_fails(self, *, preheated: bool) -> bool:
        """Whether starting now, toward the current profile, fails for cold boards."""
        if preheated or self.model.gentle(self.profile):
            return False
        return min(self.board_temps_c, default=self.ambient_c) < self.model.cold_boot_c

    def set_profile(self, profile: Profile, now: float) -> None:
        """Take `profile`; asleep, it is kept for the next start."""
        self.advance(now)
        self.profile = profile
        if self.mode is Mode.MINING:
            self._retarget(now, Mode.MINING)
        real = self._real
        if real is not None and profile.power_w >= real.profile.power_w:
            real.set_profile(profile, now)

    def force(self, mode: Mode, now: float) -> None:
        """Put the miner in `mode` at its steady draw at once (a simulator reset, no ramp)."""
        self.advance(now)
        self.powered = True
        self._boot_until = now
        self.mode = mode
        self.target_w = self._level(mode)
        self._from_w = float(self.target_w)
        self._ramp_start = self._ramp_end = now
        if mode is Mode.MINING:
            self.cold_failed = False
        if self._real is not None:
            self._real.force(mode, now)

    def set_ambient(self, ambient_c: float, now: float) -> None:
        self.advance(now)
        self.ambient_c = ambient_c
        if self._real is not None:
            self._real.set_ambient(ambient_c, now)

    def advance(self, now: float) -> None:
        """Integrate board temperatures from the last update to `now`."""
        if now <= self._t:
            return
        t = self._t
        # During a ramp power changes; integrate in short steps. Afterwards power is
        # constant and the first-order lag has an exact solution.
        while t < now and t < self._ramp_end:
            step = min(0.5, now - t, self._ramp_end - t)
            self._relax(self._power_at(t + step / 2), step)
            t += step
        if t < now:
            self._relax(self._power_at(now), now - t)
        self._t = now

    def _hardware(self, now: float) -> MinerPhysics:
        """What really runs (the mirror of a deceiving unit), brought up to `now`."""
        if self._real is None:
            return self
        self._real.advance(now)
        return self._real

    def _started(self, now: float, power_w: float, *, fails: bool) -> None:
        """Book a start: a failed one is counted and marks the unit for a warm-up."""
        for unit in (self, self._real):
            if unit is not None:
                unit.cold_failed = fails
        if fails:
            self.failed_cold_boots += 1
        elif self.on_start is not None:
            self.on_start(now, power_w)

    def _boot(self, now: float, *, fails: bool) -> None:
        self.powered = True
        self._boot_until = now + self.model.boot_s
        self._from_w = float(self.model.sleep_power_w)
        self._ramp_start = self._boot_until + self.model.board_init_s
        if fails:
            # Decided now, while the boards are as cold as they will be; the API cannot
            # answer until the control board is up, and then reports a unit not mining.
            self.mode = Mode.SLEEPING
            self.target_w = self.model.sleep_power_w
            self._ramp_end = self._ramp_start
        else:
            self.mode = Mode.MINING
            self.target_w = self.profile.power_w
            self._ramp_end = self._ramp_start + self.model.ramp_up_s

    def _retarget(self, now: float, mode: Mode) -> None:
        self.advance(now)
        current = self._power_at(now)
        self.mode = mode
        self.target_w = self._level(mode)
        self._from_w = current
        self._ramp_start = now
        ramp = self.model.ramp_down_s if self.target_w < current else self.model.ramp_up_s
        span = abs(self.target_w - current) / max(self.model.rated_power_w, 1)
        self._ramp_end = now + ramp * min(1.0, span)

    def _level(self, mode: Mode) -> int:
        return self.profile.power_w if mode is Mode.MINING else self.model.sleep_power_w

    def _power_at(self, t: float) -> float:
        if not self.powered:
            return 0.0
        if t >= self._ramp_end or self._ramp_end <= self._ramp_start:
            return float(self.target_w)
        frac = (t - self._ramp_start) / (self._ramp_end - self._ramp_start)
        return self._from_w + (self.target_w - self._from_w) * max(0.0, frac)

    def _relax(self, power_w: float, dt: float) -> None:
        steady = self.model.board_steady_c(self.ambient_c, power_w)
        k = 1.0 - math.exp(-dt / self.model.thermal_tau_s)
        self.board_temps_c = [
            temp + (steady + 0.7 * i - temp) * k for i, temp in enumerate(self.board_temps_c)
        ]


def antminer_class(efficiency_j_th: float) -> str | None:
    """The Antminer generation a nameplate efficiency points to; None past the S19j Pro,
    where each firmware family's simulator names its own older unit."""
    if efficiency_j_th <= 18.5:  # noqa: PLR2004 - S21 class
        return "Antminer S21"
    if efficiency_j_th <= 23:  # noqa: PLR2004 - S19 XP class
        return "Antminer S19 XP"
    if efficiency_j_th <= 30:  # noqa: PLR2004 - S19j Pro class
        return "Antminer S19j Pro"
    return None
