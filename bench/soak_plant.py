"""The tuning soak's plant: a simulated fleet's draw and hashrate as functions of time.

In-process and on a fake clock (10,000 TCP simulators do not fit two cores). Each unit has
a mode, the power target its firmware holds (kept across a sleep, as LuxOS and Braiins OS+
keep theirs) and a draw that ramps linearly to a command's new level over the family's
own time: `ramp_down_s` to sleep, `ramp_up_s` to wake, `retarget_s` for a new target (a
Braiins autotuner walks for two minutes). Hashrate follows the simulator's physics,
`sim.physics.hashrate_fraction` of the draw's share of rated power; asleep, none.

The fleet's draw is kept as a running sum over settled units plus the units in motion,
so sampling it several times a second costs what the ramps cost, not the fleet.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from copy import copy
from dataclasses import dataclass

from controller.core.model import ActionKind, MinerSpec
from drivers.types import MinerReading, Mode
from sim.physics import hashrate_fraction

TABLE_STEP = 0.0005  # the physics curve tabulated: its bisection per unit per sample is slow
TABLE = tuple(hashrate_fraction(k * TABLE_STEP) for k in range(round(1.25 / TABLE_STEP) + 2))


def fraction(share: float) -> float:
    """hashrate_fraction, interpolated on TABLE (within 1e-6 of it up to 1.25x rated)."""
    if share <= 0:
        return 0.0
    x = share / TABLE_STEP
    k = int(x)
    if k + 1 >= len(TABLE):
        return hashrate_fraction(share)
    return TABLE[k] + (TABLE[k + 1] - TABLE[k]) * (x - k)


@dataclass(slots=True)
class Unit:
    """One simulated miner: where its draw ramps from and to, and when."""

    spec: MinerSpec
    rated_ths: float
    levels: tuple[int, ...]  # the targets its firmware offers (LuxOS profiles); () any watts
    mode: Mode = Mode.MINING
    target_w: int = 0  # the firmware's power target (kept across a sleep)
    from_w: float = 0.0
    to_w: float = 0.0
    t0: float = 0.0
    t1: float = 0.0
    final_ths: float = 0.0  # hashrate once the ramp ends

    def level(self, t: float) -> float:
        if t >= self.t1:
            return self.to_w
        if t <= self.t0:
            return self.from_w
        return self.from_w + (self.to_w - self.from_w) * (t - self.t0) / (self.t1 - self.t0)

    def ths_at(self, watts: float) -> float:
        if self.mode is Mode.SLEEPING:
            return 0.0
        return self.rated_ths * fraction(watts / self.spec.rated_power_w)

    def resolve(self, watts: int) -> int:
        """The target the firmware takes for `watts`: LuxOS the largest profile drawing at
        most that (its lowest if none does), as the driver asks; others the watts."""
        if not self.levels:
            return watts
        fitting = [w for w in self.levels if w <= watts]
        return fitting[-1] if fitting else self.levels[0]


class Plant:
    """The fleet's true draw and hashrate; commands change it from when they land."""

    def __init__(self, units: Sequence[Unit], *, noise: float, rng: random.Random) -> None:
        self.units = [copy(u) for u in units]  # each run starts from the same farm
        self.noise = noise
        self.rng = rng
        self.moving: set[int] = set()
        self.settled_w = 0.0
        self.settled_ths = 0.0
        for u in self.units:  # every unit at rated, settled
            u.target_w = u.spec.rated_power_w
            u.from_w = u.to_w = float(u.target_w)
            u.final_ths = u.ths_at(u.to_w)
            self.settled_w += u.to_w
            self.settled_ths += u.final_ths
        self.rating_w = self.settled_w

    def apply(  # noqa: C901, PLR0912 - one branch per kind of command
        self, i: int, kind: ActionKind, target_w: int | None, t: float
    ) -> None:
        """A command lands on unit `i` at `t`: its draw ramps from where it is now."""
        u = self.units[i]
        traits = u.spec.traits
        now_w = u.level(t)
        if i in self.moving:
            self.moving.discard(i)
        else:
            self.settled_w -= u.to_w
            self.settled_ths -= u.final_ths
        asleep = u.mode is Mode.SLEEPING
        to_w, seconds = now_w, 0.0
        if kind is ActionKind.SLEEP:
            u.mode = Mode.SLEEPING
            to_w, seconds = float(traits.sleep_power_w), traits.ramp_down_s
        elif kind in {ActionKind.WAKE, ActionKind.WARM}:
            if asleep:
                u.mode = Mode.MINING
                to_w, seconds = float(u.target_w), traits.ramp_up_s
        elif kind in {ActionKind.LOWER, ActionKind.RAISE, ActionKind.TUNE}:
            if kind is ActionKind.LOWER:
                u.target_w = u.resolve(u.spec.floor_w() or u.spec.rated_power_w)
            elif kind is ActionKind.RAISE:
                u.target_w = u.spec.rated_power_w
            else:
                assert target_w is not None, "a TUNE carries its target"
                u.target_w = u.resolve(target_w)
            if asleep and kind is ActionKind.TUNE:  # the dispatch wakes a sleeper at it
                u.mode = Mode.MINING
                to_w, seconds = float(u.target_w), traits.ramp_up_s
            elif not asleep:
                to_w, seconds = float(u.target_w), traits.retarget_s
        else:
            raise ValueError(f"the soak's plant has no outlets: {kind.value} for {u.spec.id}")
        u.from_w, u.to_w, u.t0, u.t1 = now_w, to_w, t, t + seconds
        u.final_ths = u.ths_at(to_w)
        if seconds > 0:
            self.moving.add(i)
        else:
            self.settled_w += u.to_w
            self.settled_ths += u.final_ths

    def sample(self, t: float) -> tuple[float, float]:
        """The fleet's true draw (W) and hashrate (TH/s) at `t` (never earlier than the
        last sample: ramps that have ended are settled for good)."""
        draw, ths = 0.0, 0.0
        done = []
        for i in self.moving:
            u = self.units[i]
            if t >= u.t1:
                done.append(i)
                continue
            w = u.from_w + (u.to_w - u.from_w) * (t - u.t0) / (u.t1 - u.t0)
            draw += w
            ths += u.ths_at(w)
        for i in done:
            u = self.units[i]
            self.moving.discard(i)
            self.settled_w += u.to_w
            self.settled_ths += u.final_ths
        return self.settled_w + draw, self.settled_ths + ths

    def read(self, i: int, t: float) -> MinerReading:
        """What unit `i`'s firmware reports at `t`, with the readings' noise."""
        u = self.units[i]
        w = u.level(t)
        ths = u.final_ths if t >= u.t1 else u.ths_at(w)
        if self.noise:
            rnd = self.rng.random
            w *= 1.0 + self.noise * (2.0 * rnd() - 1.0)
            ths *= 1.0 + self.noise * (2.0 * rnd() - 1.0)
        return MinerReading(u.mode, round(w), round(ths, 2), ())
