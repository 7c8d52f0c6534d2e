"""`curtaild demo --scenario winter`: the demo farm at -35 °C.

The farm starts asleep and frozen; the heater floors wake gently inside the base
allowance. A surplus grant wakes the farm (gently, staggered: cold boards start at their
family's low level or after the vendor's pre-heat, and step up after a warm-up). A deep
curtailment follows (lowering first in the cold, no outlet cut below the hard-off
temperature, each container's floor kept at its lowest profile), then the grid operator
cancels the grant at short notice (KEGOC), and a new grant restores the farm.

The summary's `winter` section is judged on the simulator, not on the daemon's own
account: cuts made in containers below their hard-off temperature, cold boots that
failed, breaker trips, heater floors not held while the limit could carry them, and the
fastest rate at which draw came back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from controller.config import Loaded
from demo.grid import GridOperator, until
from demo.simulation import simulation
from drivers.shipped import shipped

if TYPE_CHECKING:
    from controller.app import Daemon
    from sim.farm import SimFarm

OVERLAY = shipped("scenarios", "winter.yaml")
DEEP_FRACTION = 0.25  # the curtailment: a quarter of the farm's rated draw ...
DEEP_DEADLINE_S = 45.0  # ... within 45 s: the slowest family takes ~30 s to ramp down
WAKE_TIMEOUT_S = 150.0  # gentle starts, warm-ups and staggering take minutes
WAKE_FRACTION = 0.75
HOLD_S = 20.0
FLOOR_GRACE_S = 60.0  # a floor may be short this long: gentle starts ramp for ~a minute
SAMPLE_S = 1.0
HEARTBEAT_S = 30.0


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` onto `base`, key by key; lists, scalars and empty mappings replace."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class FloorWatch:
    """Samples the simulated farm: is each cold container's draw at its heater floor
    while the daemon's limit could carry every floor? A shortfall that outlasts the grace
    (gentle wakes take minutes) is one violation."""

    def __init__(self, loaded: Loaded, farm: SimFarm, daemon: Daemon) -> None:
        self._farm = farm
        self._sup = daemon.supervisor
        safety = loaded.plan_rules().safety
        assert safety is not None
        containers = {m.container for m in loaded.miners}
        self._rules = {c: safety.rules(c) for c in containers}
        self._base_w = simulation(loaded).meter.base_load_kw * 1000
        self._margin_w = loaded.config.grid.margin_kw * 1000
        self._short_since: dict[str, float] = {}
        self.violations = 0
        self.samples = 0
        self.lowest_kw: dict[str, float] = {}

    def sample(self, now: float) -> None:
        limit = self._sup.limit
        if limit is None:
            return
        draws = self._farm.power_by_container_w()
        floors = {
            c: r.floor_w
            for c, r in self._rules.items()
            if r.floor_below_c is not None and self._farm.ambient_of(c) < r.floor_below_c
        }
        room = limit.limit_w - self._margin_w - self._base_w >= sum(floors.values())
        self.samples += 1
        for container, floor_w in floors.items():
            draw = draws.get(container, 0.0)
            if room:
                low = self.lowest_kw.get(container, draw / 1000)
                self.lowest_kw[container] = min(low, draw / 1000)
            if not room or draw >= floor_w:
                self._short_since.pop(container, None)
                continue
            since = self._short_since.setdefault(container, now)
            if since is not None and now - since >= FLOOR_GRACE_S:
                self.violations += 1
                self._short_since[container] = float("inf")  # one per episode

    async def run(self, time_fn: Callable[[], float]) -> None:
        while True:
            self.sample(time_fn())
            await asyncio.sleep(SAMPLE_S)


async def heartbeats(operator: GridOperator) -> None:
    """The grid operator's heartbeat: the demo outlasts the source's silence timeout."""
    while True:
        await operator.heartbeat()
        await asyncio.sleep(HEARTBEAT_S)


async def play(operator: GridOperator, daemon: Daemon, rated_kw: float) -> None:
    """The grid operator's winter day."""
    beating = asyncio.create_task(heartbeats(operator), name="demo.heartbeat")
    try:
        await _play(operator, daemon, rated_kw)
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


async def _play(operator: GridOperator, daemon: Daemon, rated_kw: float) -> None:
    sup = daemon.supervisor
    clock = operator.clock

    await asyncio.sleep(5)  # the frozen farm's heater floors wake within the base allowance
    granted = round(rated_kw * 1.05)
    await operator.mqtt(
        operator.grant("korem-winter-h10", granted, clock.now() + timedelta(hours=1)),
        f"surplus grant {granted} kW for an hour",
    )
    await until(
        lambda: (sup.draw.measured_w or 0) >= rated_kw * 1000 * WAKE_FRACTION, WAKE_TIMEOUT_S
    )
    deep = round(rated_kw * DEEP_FRACTION)
    await operator.mqtt(
        operator.curtailment("evt-winter-1", 1, deep, DEEP_DEADLINE_S),
        f"deep curtailment evt-winter-1 to {deep} kW (25 %; drawing "
        f"{(sup.draw.measured_w or 0) / 1000:.0f} kW) within {DEEP_DEADLINE_S:g} s",
    )
    await operator.reached("evt-winter-1", 1, DEEP_DEADLINE_S)
    await asyncio.sleep(HOLD_S)
    await operator.mqtt(
        operator.cancel("korem-winter-h10", 2),
        "KEGOC cancels the grant at short notice: back to the base allowance",
    )
    await until(lambda: not sup.pending_deadlines(), 30)
    await operator.mqtt(
        operator.cancel("evt-winter-1", 2),
        "the curtailment event is over too",
    )
    await asyncio.sleep(HOLD_S)  # boards of sleeping miners cool toward -35 °C
    await operator.mqtt(
        operator.grant("korem-winter-h11", granted, clock.now() + timedelta(hours=1)),
        f"a new surplus grant {granted} kW: restore, gently and staggered",
    )
    await until(
        lambda: (sup.draw.measured_w or 0) >= rated_kw * 1000 * WAKE_FRACTION, WAKE_TIMEOUT_S
    )
    await until(lambda: not sup.pending_deadlines(), 30)


def summary(loaded: Loaded, farm: SimFarm, daemon: Daemon, watch: FloorWatch) -> dict[str, Any]:
    """The `winter` section: judged on the simulator."""
    safety = loaded.plan_rules().safety
    assert safety is not None
    sup = daemon.supervisor
    cold_cuts = [
        miner
        for _, miner, container, ambient_c in farm.cuts
        if (threshold := safety.rules(container).hard_off_below_c) is not None
        and ambient_c < threshold
    ]
    emergency = {miner for _, miner, _ in sup.alarms.cold_cuts}
    control = loaded.config.control
    return {
        "ambient_c": {c: farm.ambient_of(c) for c in sorted({m.container for m in loaded.miners})},
        "cold_cuts": len([m for m in cold_cuts if m not in emergency]),
        "cold_cuts_in_emergencies": len([m for m in cold_cuts if m in emergency]),
        "failed_cold_boots": farm.failed_cold_boots(),
        "failed_cold_boot_miners": sorted(
            m for m, sim in farm.miners.items() if sim.physics.failed_cold_boots
        ),
        "breaker_trips": farm.breaker_trips(),
        "heater_floor_violations": watch.violations,
        "heater_floor_lowest_kw": {c: round(v, 1) for c, v in sorted(watch.lowest_kw.items())},
        "heater_floor_alarms": sup.alarms.counts.get("heater-floor", 0),
        "warm_wakes": len(sup.commands.warm_wakes),
        "peak_wake_kw_per_s": round(farm.peak_start_w_per_s() / 1000, 1),
        "peak_wake_by_driver": _peak_window(loaded, farm),
        "peak_planned_kw_per_s": round(sup.commands.peak_wake_w / 1000, 1),
        "wake_limit_kw_per_s": control.wake_max_kw_per_s,
        "wake_limit_per_s": control.wake_max_per_s,
    }


def _peak_window(loaded: Loaded, farm: SimFarm) -> dict[str, float]:
    """Which families' starts made the steepest second, in kW: where the rate came from."""
    driver = {m.id: m.driver for m in loaded.miners}
    starts = sorted(farm.starts)
    best: dict[str, float] = {}
    best_w = 0.0
    for i, (t, _, _) in enumerate(starts):
        window: dict[str, float] = {}
        for u, miner, watts in starts[i:]:
            if u >= t + 1.0:
                break
            window[driver[miner]] = window.get(driver[miner], 0.0) + watts / 1000
        if sum(window.values()) > best_w:
            best, best_w = window, sum(window.values())
    return {d: round(kw, 1) for d, kw in sorted(best.items())}


def passed(winter: dict[str, Any]) -> bool:
    return bool(
        winter["cold_cuts"] == 0
        and winter["failed_cold_boots"] == 0
        and winter["breaker_trips"] == 0
        and winter["heater_floor_violations"] == 0
    )


@contextlib.asynccontextmanager
async def watching(watch: FloorWatch, time_fn: Callable[[], float]) -> AsyncIterator[FloorWatch]:
    task = asyncio.create_task(watch.run(time_fn), name="demo.floor-watch")
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
