"""A simulated farm: many miners of any family in one asyncio process, each on its own
loopback address."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Self

from drivers.sim.families import (
    BuildContext,
    SimDevice,
    SimMinerSpec,
    SimServer,
    family_for,
    simulated_drivers,
)
from drivers.sim.faults import Fault, FaultState
from drivers.sim.physics import MinerPhysics
from drivers.types import Mode


@dataclass(slots=True)
class SimMiner:
    spec: SimMinerSpec
    physics: MinerPhysics
    device: SimDevice
    servers: tuple[SimServer, ...]
    fault: FaultState

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

    def _observe(self, command: str) -> None:
        if command not in self.first_at:
            self.first_at[command] = time.monotonic()
        self.commands[command] += 1

    async def start(self) -> None:
        """Listen on every miner's addresses; fails loudly if an address is taken."""
        batch = 256  # bounded so a 10,000-miner farm does not open every listener at once
        servers = [s for m in self.miners.values() for s in m.servers]
        for i in range(0, len(servers), batch):
            await asyncio.gather(*(s.start() for s in servers[i : i + batch]))

    async def stop(self) -> None:
        servers = [s for m in self.miners.values() for s in m.servers]
        await asyncio.gather(*(_close(s) for s in servers))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def power_w(self, miner_id: str) -> float:
        return self.miners[miner_id].physics.power_w(self._time())

    def total_power_w(self) -> float:
        """The farm's true draw, as a meter on the feeder would see it."""
        now = self._time()
        return sum(m.physics.power_w(now) for m in self.miners.values())

    def power_by_container_w(self) -> dict[str, float]:
        now = self._time()
        out: dict[str, float] = {}
        for m in self.miners.values():
            out[m.spec.container] = out.get(m.spec.container, 0.0) + m.physics.power_w(now)
        return out

    def modes(self) -> dict[Mode, int]:
        counts = dict.fromkeys(Mode, 0)
        for m in self.miners.values():
            counts[m.physics.mode] += 1
        return counts

    async def set_fault(self, miner_id: str, fault: Fault, *, slow_s: float | None = None) -> None:
        """Change a miner's fault live on every endpoint it serves."""
        miner = self.miners[miner_id]
        for server in miner.servers:
            await server.set_fault(fault, slow_s=slow_s)
        miner.spec = replace(miner.spec, fault=fault)

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
        model = replace(
            base,
            ramp_down_s=base.ramp_down_s * rng.uniform(0.85, 1.15),
            ramp_up_s=base.ramp_up_s * rng.uniform(0.85, 1.15),
            temp_rise_c=base.temp_rise_c * rng.uniform(0.9, 1.1),
        )
        physics = MinerPhysics(model, ambient_c=ambient_c, now=now, mode=spec.mode)
        fault = FaultState(spec.fault)
        context = BuildContext(
            physics=physics,
            fault=fault,
            rng=rng,
            time_fn=self._time,
            observer=self._observe,
            serial=digest[5:11].hex().upper(),
            mac=":".join(f"{b:02X}" for b in (0x02, *digest[:5])),
        )
        built = family.build(spec, context)
        return SimMiner(spec, physics, built.device, built.servers, fault)


async def _close(server: SimServer) -> None:
    closer = getattr(server, "close", None)  # servers holding more than a listener
    if closer is not None:
        await closer()
    else:
        await server.stop()


__all__ = ["SimFarm", "SimMiner", "SimMinerSpec", "UnsupportedSimError"]
