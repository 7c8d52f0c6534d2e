"""Each miner's efficiency curve: the settings it can run at, with the draw and hashrate of
each, seeded from the nameplate or the firmware's profiles and learned from telemetry.

Pure: a curve is a value; `learn` takes one and a settled measurement and returns the next,
so the loop can journal every update and rebuild the curves after a restart.

The first setting is always asleep (the family's residual draw, no hashrate); the others
are the family's steps (LuxOS profiles, Braiins power targets, Whatsminer power percents,
a stock Antminer's low and normal modes) in ascending draw. The allocator (core.allocation)
works on each curve's upper hull, computed once here when the curve is made.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from controller.core.model import MinerSpec

ASLEEP = "asleep"
# Until a setting has been measured its hashrate is estimated as rated x share^0.75: about
# 6 % less hashrate for 8 % less power near rated, as LuxOS's published frequency and
# voltage ladder implies (hashrate ~ f, power ~ f V^2), and concave. Measurements replace it.
PRIOR_EXPONENT = 0.75
SEED_STEPS = 4  # steps between a power-target family's floor and rated power
LEARN_WEIGHT = 0.2  # each new measurement's weight once a setting has 5 of them


class Setting(NamedTuple):
    """One setting a miner can run at, and what it draws and hashes there."""

    name: str  # what the driver is told: a profile name, "2600W", "asleep"
    power_w: float
    hashrate_ths: float
    samples: int = 0  # measurements folded in (0: still the seed's estimate)


@dataclass(frozen=True, slots=True)
class Curve:
    """A miner's settings, asleep first, then in ascending draw. `hull` indexes the settings
    on the upper concave hull of (power, hashrate) from the lowest draw: the only settings a
    greedy walk on marginal TH/s per kW steps through (see core.allocation)."""

    settings: tuple[Setting, ...]
    hull: tuple[int, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.settings or self.settings[0].name != ASLEEP:
            raise ValueError("a curve starts with its asleep setting")
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ValueError(f"a curve names a setting twice: {names}")
        for s in self.settings:
            _check_measure(s.name, s.power_w, s.hashrate_ths)
        object.__setattr__(self, "hull", upper_hull(self.settings))

    def index(self, name: str) -> int:
        """The position of the setting called `name`; ValueError naming it if there is none."""
        for i, s in enumerate(self.settings):
            if s.name == name:
                return i
        raise ValueError(
            f"no setting {name!r} on this curve (has {[s.name for s in self.settings]})"
        )


MAX_FIGURE = 1e15  # no watts, TH/s or count of samples is larger
ON_CHORD = 1e-9  # relative: closer to a hull's chord than this is on it


def upper_hull(
    settings: Sequence[Setting], allowed: Iterable[int] | None = None
) -> tuple[int, ...]:
    """Indices of `settings` (all, or those `allowed`) on the upper concave hull of
    (power, hashrate), from the lowest draw up to the highest hashrate. Settings under the
    hull (a costly wake, a dominated step) are left out: no greedy step ever stops there.
    Its first index is the lowest-draw setting (the best hashrate among equal draws)."""
    pool = range(len(settings)) if allowed is None else allowed
    points = sorted(pool, key=lambda i: (settings[i].power_w, -settings[i].hashrate_ths))
    hull: list[int] = []
    for i in points:
        p, h = settings[i].power_w, settings[i].hashrate_ths
        if hull:
            last = settings[hull[-1]]
            if h <= last.hashrate_ths:
                continue  # draws as much or more for no more hashrate: never worth it
            if p <= last.power_w:
                continue  # same draw: the first (best hashrate) was kept
        while len(hull) >= 2:  # noqa: PLR2004 - a turn needs two points
            a, b = settings[hull[-2]], settings[hull[-1]]
            # b lies under the chord a -> i: drop it (the slope must not rise). A point on
            # the chord stays: it splits a long upgrade into two that fit more budgets. "On"
            # within rounding: sums of float gains put a collinear point 1e-14 off it.
            under = (b.hashrate_ths - a.hashrate_ths) * (p - a.power_w)
            chord = (h - a.hashrate_ths) * (b.power_w - a.power_w)
            if under < chord - ON_CHORD * max(abs(under), abs(chord)):
                hull.pop()
            else:
                break
        hull.append(i)
    return tuple(hull)


def nominal_w(setting: Setting) -> int:
    """The power target a setting asks the firmware for: the watts in its name ("2600W",
    as seeded), else its measured draw."""
    name = setting.name
    if name.endswith("W") and name[:-1].isdigit():
        return int(name[:-1])
    return round(setting.power_w)


def seed_curve(
    spec: MinerSpec,
    *,
    profiles: Sequence[tuple[str, float, float]] | None = None,
    fractions: Sequence[float] | None = None,
) -> Curve:
    """A miner's curve before anything is measured.

    `profiles`: (name, watts, TH/s) as the firmware lists them (LuxOS `profiles`); those
    above the rated power are left out (overclocks are not ours to choose). Otherwise
    `fractions` of rated power, or the family's own steps from its traits: a power-target
    family from its floor to rated in SEED_STEPS steps; a family with a gentle mode (a stock
    Antminer's low mode) that and rated; else rated alone (on or asleep). Hashrate at a
    share of rated is estimated on the prior (PRIOR_EXPONENT)."""
    traits = spec.traits
    asleep = Setting(ASLEEP, float(traits.sleep_power_w), 0.0)
    if profiles is not None:
        steps = [
            Setting(name, float(watts), float(ths))
            for name, watts, ths in profiles
            if watts <= spec.rated_power_w
        ]
        if not steps:
            raise ValueError(f"{spec.id}: no profile at or below its rated {spec.rated_power_w} W")
        return Curve((asleep, *sorted(steps, key=lambda s: s.power_w)))
    if fractions is None:
        fractions = _family_fractions(spec)
    rated_ths = spec.rated_power_w / spec.efficiency_j_th
    steps = []
    for share in sorted(set(fractions)):
        if not 0 < share <= 1:
            raise ValueError(f"{spec.id}: a step at {share} of rated power is outside (0, 1]")
        watts = round(spec.rated_power_w * share)
        ths = rated_ths * share**PRIOR_EXPONENT
        steps.append(Setting(f"{watts}W", float(watts), round(ths, 3)))
    return Curve((asleep, *steps))


def _family_fractions(spec: MinerSpec) -> tuple[float, ...]:
    traits = spec.traits
    floor = traits.power_floor_fraction
    if floor is not None:
        return tuple(floor + (1 - floor) * k / SEED_STEPS for k in range(SEED_STEPS + 1))
    if traits.gentle_fraction is not None:
        return (traits.gentle_fraction, 1.0)
    return (1.0,)


def learn(
    curve: Curve, name: str, power_w: float, hashrate_ths: float, *, weight: float = LEARN_WEIGHT
) -> Curve:
    """The curve after one settled measurement at setting `name` (the caller feeds only
    readings taken after a change has landed and ramped). The first few measurements are
    averaged; after 1/weight of them each new one moves the estimate by `weight`, so the
    curve follows ageing and seasons without chasing one noisy read. Asleep learns its draw
    only. A measurement that is not a finite, non-negative number raises ValueError naming
    it, and the curve is unchanged."""
    i = curve.index(name)
    _check_measure(name, power_w, hashrate_ths)
    if not 0 < weight <= 1:
        raise ValueError(f"learning weight {weight} is outside (0, 1]")
    old = curve.settings[i]
    alpha = max(weight, 1.0 / (old.samples + 1))
    ths = 0.0 if i == 0 else old.hashrate_ths + alpha * (hashrate_ths - old.hashrate_ths)
    new = Setting(old.name, old.power_w + alpha * (power_w - old.power_w), ths, old.samples + 1)
    return Curve((*curve.settings[:i], new, *curve.settings[i + 1 :]))


def _check_measure(name: str, power_w: float, hashrate_ths: float) -> None:
    for what, value in (("power_w", power_w), ("hashrate_ths", hashrate_ths)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"setting {name!r}: {what} {value!r} is not a finite number >= 0")


def curve_to_dict(curve: Curve) -> dict[str, Any]:
    """A curve as JSON-ready data, for the journal."""
    return {"settings": [list(s) for s in curve.settings]}


def curve_from_dict(data: Mapping[str, Any]) -> Curve:
    """A curve back from `curve_to_dict`'s data; ValueError naming the row that is wrong."""
    rows = data.get("settings")
    if not isinstance(rows, list):
        raise ValueError("curve: 'settings' is not a list")  # noqa: TRY004 - one error type
    settings = []
    for n, row in enumerate(rows):
        ok = (
            isinstance(row, list)
            and len(row) == 4  # noqa: PLR2004 - name, power, hashrate, samples
            and isinstance(row[0], str)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row[1:])
            # Numbers a float holds, and a count of samples that is a whole number >= 0:
            # Infinity, -1 or 10**400 from a hand-edited journal would stop the restore,
            # or the fold that divides by the count.
            and all(abs(v) < MAX_FIGURE for v in row[1:])
            and math.isfinite(row[3])
            and row[3] >= 0
            and float(row[3]).is_integer()
        )
        if not ok:
            raise ValueError(f"curve: settings row {n} is not [name, watts, TH/s, samples]")
        settings.append(Setting(row[0], float(row[1]), float(row[2]), int(row[3])))
    return Curve(tuple(settings))
