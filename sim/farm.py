"""A simulated farm: many miners of any family in one asyncio process, each on its own
loopback address."""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Self

from drivers.types import Mode
from sim.catalog import family_for, simulated_drivers
from sim.families import (
    BuildContext,
    SimDevice,
    SimMinerSpec,
    SimServer,
)
from sim.faults import Fault, FaultState
from sim.missing import Missing
from sim.physics import MinerPhysics
from sim.pools import SimPool, SimPools


@dataclass(slots=True)
class SimMiner:
    spec: SimMinerSpec
    physics: MinerPhysics
    device: SimDevice
    servers: tuple[SimServer, ...]
    fault: FaultState
    missing: Missing
    pools: SimPools

    @property
    def server(self) -> SimServer:
        """The device's main API."""
        return self.servers[0]


class UnsupportedSimError(ValueError):
    """No simulator exists for this driver family."""


class SimFarm:
    """Runs every simulated miner's servers; exposes the farm's true draw for checks."""

    def __init__(
        self,
        specs: Iterable[SimMinerSpec],
        *,
        time_fn: Callable[[], float],
        ambient_c: dict[str, float] | None = None,
        default_ambient_c: float = 15.0,
        seed: int = 1,
    ) -> None:
        self._time = time_fn
        self.miners: dict[str, SimMiner] = {}
        self.commands: Counter[str] = Counter()  # requests by command name, farm-wide
        self.first_at: dict[str, float] = {}  # time.monotonic() of each command's first request
        self.ambient_c = dict(ambient_c or {})
        self.default_ambient_c = default_ambient_c
        # Devices beside the miners (simulated PDUs, the site meter), by name.
        self.devices: dict[str, SimServer] = {}
        # Winter checks: every start that succeeded (time, miner, watts it starts toward),
        # from a wake out of sleep or an outlet restored; every outlet switched off (time,
        # miner, container, ambient degC). Appended by hooks, so 10,000 miners cost nothing.
        self.starts: list[tuple[float, str, float]] = []
        self.cuts: list[tuple[float, str, str, float]] = []
        now = time_fn()
        for spec in specs:
            ambient = self.ambient_c.get(spec.container, default_ambient_c)
            self.miners[spec.id] = self._build(spec, ambient, now, seed)

    def reset(self, mode: Mode = Mode.MINING) -> None:
        """Every miner in `mode` at steady draw, no sessions, counters cleared."""
        for miner in self.miners.values():
            miner.device.reset(mode)
        self.reset_counters()

    def reset_counters(self) -> None:
        self.commands.clear()
        self.first_at.clear()
        self.starts.clear()
        self.cuts.clear()
        for miner in self.miners.values():
            miner.physics.failed_cold_boots = 0

    def _observe(self, command: str) -> None:
        if command not in self.first_at:
            self.first_at[command] = time.monotonic()
        self.commands[command] += 1

    async def start(self) -> None:
        """Listen on every miner's addresses; fails loudly if an address is taken."""
        batch = 256  # bounded so a 10,000-miner farm does not open every listener at once
        servers = [s for m in self.miners.values() for s in m.servers]
        servers.extend(self.devices.values())
        for i in range(0, len(servers), batch):
            await asyncio.gather(*(s.start() for s in servers[i : i + batch]))

    async def stop(self) -> None:
        servers = [s for m in self.miners.values() for s in m.servers]
        servers.extend(self.devices.values())
        await asyncio.gather(*(_close(s) for s in servers))

    def add_device(self, name: str, server: SimServer) -> None:
        """A simulated device that lives and dies with the farm (a PDU, the meter)."""
        if name in self.devices or name in self.miners:
            raise ValueError(f"{name}: a simulated device or miner of that name exists")
        self.devices[name] = server

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def power_w(self, miner_id: str) -> float:
        """One miner's true draw (not what a deceiving firmware claims)."""
        return self.miners[miner_id].physics.true_power_w(self._time())

    def total_power_w(self) -> float:
        """The farm's true draw, as a meter on the feeder would see it."""
        now = self._time()
        return sum(m.physics.true_power_w(now) for m in self.miners.values())

    def hashrate_ths(self) -> float:
        """The farm's true hashrate, as its pools would see it."""
        now = self._time()
        return sum(m.physics.hashrate_ths(now) for m in self.miners.values())

    def power_by_container_w(self) -> dict[str, float]:
        now = self._time()
        out: dict[str, float] = {}
        for m in self.miners.values():
            draw = m.physics.true_power_w(now)
            out[m.spec.container] = out.get(m.spec.container, 0.0) + draw
        return out

    def modes(self) -> dict[Mode, int]:
        """Miners per true mode; a unit whose outlet is cut counts as sleeping."""
        counts = dict.fromkeys(Mode, 0)
        for m in self.miners.values():
            counts[m.physics.true_mode()] += 1
        return counts

    def cut_count(self) -> int:
        return sum(not m.physics.powered for m in self.miners.values())

    def failed_cold_boots(self) -> int:
        """Starts whose hashboards failed to initialise in the cold, farm-wide."""
        return sum(m.physics.failed_cold_boots for m in self.miners.values())

    def breaker_trips(self) -> int:
        """Breakers tripped by inrush, over every device that has one (the PDUs)."""
        return sum(getattr(d, "breaker_trips", 0) for d in self.devices.values())

    def peak_start_w_per_s(self, window_s: float = 1.0) -> float:
        """The steepest run of starts: the most starting power (the watts each start ramps
        toward) within any `window_s`, per second; what the grid sees as a load step."""
        if not window_s > 0:
            raise ValueError("window_s must be positive")
        starts = sorted((t, w) for t, _, w in self.starts)
        times = [t for t, _ in starts]
        sums = [0.0]
        for _, watts in starts:
            sums.append(sums[-1] + watts)
        best = 0.0
        for i, t in enumerate(times):
            end = bisect.bisect_left(times, t + window_s, lo=i)  # [t, t + window_s)
            best = max(best, sums[end] - sums[i])
        return best / window_s

    def outlet(self, miner_id: str) -> MinerOutlet:
        """The PDU outlet this miner is plugged into, as a PDU simulator drives it."""
        miner = self.miners[miner_id]
        spec = miner.spec

        def cut(now: float) -> None:
            self.cuts.append((now, spec.id, spec.container, miner.physics.ambient_c))

        return MinerOutlet(miner.physics, self._time, on_cut=cut)

    async def set_fault(self, miner_id: str, fault: Fault, *, slow_s: float | None = None) -> None:
        """Change a miner's (or a device's) fault live on every endpoint it serves."""
        if miner_id in self.devices:
            await self.devices[miner_id].set_fault(fault, slow_s=slow_s)
            return
        miner = self.miners[miner_id]
        for server in miner.servers:
            await server.set_fault(fault, slow_s=slow_s)
        miner.spec = replace(miner.spec, fault=fault)
        miner.physics.deceive(fault is Fault.DECEIVE, self._time())

    def set_missing(self, miner_id: str, names: Iterable[str]) -> None:
        """Change what a miner's firmware lacks, live (an upgrade or a downgrade)."""
        miner = self.miners[miner_id]
        miner.missing.set(names)
        miner.spec = replace(miner.spec, missing=miner.missing.names)

    def set_pools(self, miner_id: str, pools: Iterable[SimPool]) -> None:
        """Move a miner to other pools, live (a person at its web UI, a firmware reset)."""
        miner = self.miners[miner_id]
        miner.pools.set(pools)
        miner.spec = replace(miner.spec, pools=miner.pools.get())

    def ambient_of(self, container: str) -> float:
        """A container's ambient temperature now (a sensor there reads this)."""
        return self.ambient_c.get(container, self.default_ambient_c)

    def set_ambient(self, container: str, ambient_c: float) -> None:
        now = self._time()
        self.ambient_c[container] = ambient_c
        for m in self.miners.values():
            if m.spec.container == container:
                m.physics.set_ambient(ambient_c, now)

    def _build(self, spec: SimMinerSpec, ambient_c: float, now: float, seed: int) -> SimMiner:
        family = family_for(spec.driver)
        if family is None:
            raise UnsupportedSimError(
                f"{spec.id}: no simulator for driver {spec.driver!r} "
                f"(simulated: {', '.join(simulated_drivers())})"
            )
        digest = hashlib.sha256(f"{seed}:{spec.id}".encode()).digest()
        rng = random.Random(digest)  # noqa: S311 - simulation, not crypto
        base = family.model(spec)
        # Real units differ: ramps within +-15 %, thermal behaviour within +-10 %.
        ramp_down = rng.uniform(0.85, 1.15)
        ramp_up = rng.uniform(0.85, 1.15)
        thermal = rng.uniform(0.9, 1.1)  # one draw for both rises: the same airflow
        model = replace(
            base,
            ramp_down_s=base.ramp_down_s * ramp_down,
            ramp_up_s=base.ramp_up_s * ramp_up,
            temp_rise_c=base.temp_rise_c * thermal,
            max_rise_c=base.max_rise_c * thermal,
        )
        physics = MinerPhysics(model, ambient_c=ambient_c, now=now, mode=spec.mode)
        physics.on_start = lambda t, watts: self.starts.append((t, spec.id, watts))
        fault = FaultState(spec.fault, control_up=lambda: physics.control_up(self._time()))
        physics.deceive(spec.fault is Fault.DECEIVE, now)
        missing = Missing(spec.missing)
        pools = SimPools(spec.pools)
        context = BuildContext(
            physics=physics,
            fault=fault,
            rng=rng,
            time_fn=self._time,
            observer=self._observe,
            serial=digest[5:11].hex().upper(),
            mac=":".join(f"{b:02X}" for b in (0x02, *digest[:5])),
            missing=missing,
            pools=pools,
        )
        built = family.build(spec, context)
        return SimMiner(spec, physics, built.device, built.servers, fault, missing, pools)


class MinerOutlet:
    """A miner's side of a PDU outlet: cutting it stops the miner's draw at once (its boards
    cool); restoring it boots the miner, which takes minutes before it mines again."""

    __slots__ = ("_on_cut", "_physics", "_time")

    def __init__(
        self,
        physics: MinerPhysics,
        time_fn: Callable[[], float],
        *,
        on_cut: Callable[[float], None] | None = None,
    ) -> None:
        self._physics = physics
        self._time = time_fn
        self._on_cut = on_cut  # told when power actually goes off

    @property
    def on(self) -> bool:
        return self._physics.powered

    def power_w(self) -> float:
        return self._physics.true_power_w(self._time())

    def set_on(self, on: bool) -> None:
        now = self._time()
        if on:
            self._physics.restore(now)
        elif self._physics.powered:
            self._physics.cut(now)
            if self._on_cut is not None:
                self._on_cut(now)


async def _close(server: SimServer) -> None:
    closer = getattr(server, "close", None)  # servers holding more than a listener
    if closer is not None:
        await closer()
    else:
        await server.stop()


__all__ = ["SimFarm", "SimMiner", "SimMinerSpec", "UnsupportedSimError"]
