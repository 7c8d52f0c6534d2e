"""What allocate() costs at fleet scale, and what it holds under a cap against sleeping alone.

    python -m bench.allocate [--miners 10000] [--repeats 21] [--cap 0.6]

A mixed fleet (LuxOS, Braiins OS+, Whatsminer, stock Antminer; S21-, S19 XP- and S19j
Pro-class efficiencies) on the simulator's own curves (sim.physics.hashrate_fraction): every
miner starts at rated and the allowed power is `cap` of the fleet's rating. Timed twice:
with one curve per model (as seeded: miners of a model share one curve object) and with a
distinct curve per miner (as learned: each a little off its model's). Pure CPU, no I/O.

The gain: the hashrate the allocation's target holds against a sleep-only plan (sleep the
least efficient miners, at their sleep draw, until the fleet is within the cap; the rest at
rated), both on the same curves.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from controller.core.allocation import MinerChoice, allocate
from controller.core.curves import Curve, Setting, seed_curve
from controller.core.model import MinerSpec
from drivers.miners.antminer_stock.driver import TRAITS as STOCK
from drivers.miners.braiins_os.driver import TRAITS as BRAIINS
from drivers.miners.luxos import TRAITS as LUXOS
from drivers.miners.whatsminer.dialect import TRAITS as WHATSMINER
from drivers.types import DriverTraits
from sim import antminer_stock, braiins_os, luxos
from sim.physics import MinerModel, hashrate_fraction

RATED_W = (3250, 3500, 5360)
EFFICIENCY = (17.5, 21.5, 29.5)
WHATSMINER_PCT = (50, 60, 70, 80, 90, 100)  # power percents the bench lets it take
BRAIINS_FRACTIONS = (0.6, 0.7, 0.8, 0.9, 1.0)  # power targets within the firmware's range


def _profiles(model: MinerModel) -> list[tuple[str, float, float]]:
    return [(p.name, p.power_w, p.hashrate_ths) for p in model.all_profiles()]


def _targets(model: MinerModel, fractions: tuple[float, ...]) -> list[tuple[str, float, float]]:
    found: list[tuple[str, float, float]] = []
    for share in fractions:
        watts = round(model.rated_power_w * share)
        found.append((f"{watts}W", watts, model.hashrate_ths * hashrate_fraction(share)))
    return found


Family = tuple[str, DriverTraits, Callable[[int, float], list[tuple[str, float, float]]]]
FAMILIES: tuple[Family, ...] = (
    ("luxos", LUXOS, lambda w, e: _profiles(luxos.model_for(w, e))),
    (
        "braiins-os",
        BRAIINS,
        lambda w, e: _targets(braiins_os.family.model_for(w, e), BRAIINS_FRACTIONS),
    ),
    (
        "whatsminer",
        WHATSMINER,
        lambda w, e: _targets(
            MinerModel("M", w, round(w / e, 1)), tuple(p / 100 for p in WHATSMINER_PCT)
        ),
    ),
    ("antminer-stock", STOCK, lambda w, e: _profiles(antminer_stock.family.model_for(w, e))),
)


def model_curves() -> list[tuple[MinerSpec, Curve]]:
    """One seeded curve per (family, rated power, efficiency)."""
    found = []
    for name, traits, profiles in FAMILIES:
        for rated in RATED_W:
            for eff in EFFICIENCY:
                spec = MinerSpec(f"{name}-{rated}-{eff}", name, "c1", rated, eff, traits)
                found.append((spec, seed_curve(spec, profiles=profiles(rated, eff))))
    return found


def fleet(n: int, *, distinct: bool, uniform: bool = False, seed: int = 7) -> list[MinerChoice]:
    """`uniform`: one model only (LuxOS S19j Pro class), where efficiency does not differ
    between units and sleeping the least efficient has nothing to pick from."""
    rng = random.Random(seed)
    models = model_curves()[:1] if uniform else model_curves()
    miners = []
    for i in range(n):
        _, curve = models[i % len(models)]
        if distinct:  # learned: each unit a little off its model, so no two curves match
            curve = Curve(
                tuple(
                    s
                    if k == 0
                    else s._replace(hashrate_ths=s.hashrate_ths * rng.uniform(0.98, 1.02))
                    for k, s in enumerate(curve.settings)
                )
            )
        miners.append(MinerChoice(f"m{i:05d}", curve, len(curve.settings) - 1))
    return miners


def rated(m: MinerChoice) -> Setting:
    """The miner's setting at its rated draw (its highest within rated)."""
    return m.curve.settings[-1]


def sleep_only_ths(miners: list[MinerChoice], allowed_w: float) -> float:
    """Sleep the least efficient (J/TH at rated) until within `allowed_w`; the rest at rated."""
    order = sorted(miners, key=lambda m: rated(m).power_w / rated(m).hashrate_ths, reverse=True)
    draw = sum(rated(m).power_w for m in miners)
    ths = sum(rated(m).hashrate_ths for m in miners)
    for m in order:
        if draw <= allowed_w:
            break
        draw -= rated(m).power_w - m.curve.settings[0].power_w
        ths -= rated(m).hashrate_ths
    return ths


def timed(miners: list[MinerChoice], allowed_w: float, repeats: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of one allocate() call."""
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        allocate(miners, allowed_w, max_changes=200)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall) * 1000, statistics.median(cpu) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--miners", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--cap", type=float, default=0.6)
    args = parser.parse_args()
    for distinct, uniform in ((False, False), (True, False), (False, True)):
        miners = fleet(args.miners, distinct=distinct, uniform=uniform)
        rating = sum(rated(m).power_w for m in miners)
        allowed = args.cap * rating
        wall, cpu = timed(miners, allowed, args.repeats)
        plan = allocate(miners, allowed, max_changes=200)
        base = sleep_only_ths(miners, allowed)
        kind = "distinct curves (learned)" if distinct else "one curve per model (seeded)"
        kind += ", one model" if uniform else ", mixed models"
        print(f"{args.miners} miners, {kind}: median {wall:.1f} ms wall, {cpu:.1f} ms CPU")
        print(
            f"  cap {args.cap:.0%} of {rating / 1e6:.2f} MW: allocation holds "
            f"{plan.target_ths / 1000:.2f} PH/s at {plan.target_w / 1e6:.3f} MW; sleep-only "
            f"{base / 1000:.2f} PH/s: {100 * (plan.target_ths / base - 1):+.1f} %"
        )


if __name__ == "__main__":
    main()
