"""What the cold-weather rules cost the planner: plan() on a synthetic fleet, with and
without `safety`, for a fleet-wide shed under a deadline and for a staggered wake.

    python -m bench.plan_cold [--miners 10000] [--repeats 15]

Pure CPU, no I/O: the planner runs between a signal and its first command.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from controller.core.model import Limit, MinerSpec, MinerView, PlanRules, Snapshot
from controller.core.planner import plan, shed_order
from controller.core.safety import ColdRules, Safety
from drivers.types import DriverTraits, MinerReading, Mode

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
LUX = DriverTraits(25, 5.0, 10.0, power_floor_fraction=0.7, retarget_s=5.0, gentle_fraction=0.7)
COLD = Safety(
    ColdRules(
        hard_off_below_c=-10,
        floor_below_c=0,
        floor_w=20_000,
        warm_below_c=10,
        min_on=timedelta(minutes=5),
        min_off=timedelta(minutes=2),
    )
)


def fleet(n: int, mode: Mode) -> tuple[MinerView, ...]:
    views = []
    for i in range(n):
        spec = MinerSpec(
            f"m{i:05d}", "luxos", f"c{i % 8}", 3250, (17.5, 21.5, 29.5)[i % 3], LUX, f"p#{i}"
        )
        power = 3250 if mode is Mode.MINING else 25
        reading = MinerReading(mode, power, 100.0, (55.0 if mode is Mode.MINING else -30.0,))
        views.append(
            MinerView(
                spec, reading, NOW - timedelta(seconds=1), mode_since=NOW - timedelta(hours=1)
            )
        )
    return tuple(views)


def timed(snapshot: Snapshot, limit: Limit, rules: PlanRules, repeats: int) -> float:
    plan(snapshot, limit, rules)  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        plan(snapshot, limit, rules)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--miners", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    base = PlanRules(wake_hold_after_shed=timedelta(0), wake_max_per_window=50)
    ambient = {f"c{i}": (-35.0, NOW) for i in range(8)}
    mining, asleep = fleet(args.miners, Mode.MINING), fleet(args.miners, Mode.SLEEPING)
    due = Limit(args.miners * 800, ("bench",), NOW + timedelta(seconds=10))
    wide = Limit(args.miners * 4000, ("bench",))
    print(f"plan() at {args.miners} miners, median of {args.repeats}, ms")
    for name, views, limit in (("shed to 25 %", mining, due), ("staggered wake", asleep, wide)):
        order = shed_order(views)
        snapshot = Snapshot(NOW, views, order=order, ambient=ambient)
        plain = timed(snapshot, limit, base, args.repeats)
        cold = timed(snapshot, limit, replace(base, safety=COLD), args.repeats)
        print(f"  {name:<16} without safety {plain:7.1f}   with safety {cold:7.1f}")


if __name__ == "__main__":
    main()
