"""What a simulator family is: how to build one firmware family's simulated device and
servers. Each family module (sim/luxos.py, ...) defines one; sim/catalog.py lists them.
Builders share the physics and fault model, so every family ramps, warms and fails the
same way.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from drivers.types import Mode
from sim.faults import Fault, FaultState
from sim.missing import Missing
from sim.physics import MinerModel, MinerPhysics
from sim.pools import SimPool, SimPools


@dataclass(frozen=True, slots=True)
class SimMinerSpec:
    """One simulated miner: where it listens and what hardware it pretends to be."""

    id: str
    driver: str
    host: str
    port: int
    container: str
    rated_power_w: int
    efficiency_j_th: float
    mode: Mode = Mode.MINING
    fault: Fault = Fault.NONE
    web_port: int | None = None
    password: str | None = None  # the credential the device accepts (None: its default)
    missing: frozenset[str] = frozenset()  # what its firmware lacks (sim.missing)
    pools: tuple[SimPool, ...] | None = None  # None: the firmware's factory default


class SimDevice(Protocol):
    """A simulated firmware's state over its physics."""

    physics: MinerPhysics
    commands: deque[str]  # writes carried out, for tests and witnesses

    def reset(self, mode: Mode) -> None: ...


class SimServer(Protocol):
    """One listening endpoint of a simulated device."""

    host: str
    port: int
    requests: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def set_fault(self, mode: Fault, *, slow_s: float | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a builder gets besides the spec."""

    physics: MinerPhysics
    fault: FaultState
    rng: random.Random
    time_fn: Callable[[], float]
    observer: Callable[[str], None]
    serial: str
    mac: str
    missing: Missing = field(default_factory=Missing)  # shared by the device's servers
    pools: SimPools = field(default_factory=SimPools)  # shared likewise (sim.pools)


@dataclass(frozen=True, slots=True)
class Built:
    device: SimDevice
    servers: tuple[SimServer, ...]  # the first is the device's main API


Builder = Callable[[SimMinerSpec, BuildContext], Built]


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    drivers: tuple[str, ...]
    build: Builder
    model: Callable[[SimMinerSpec], MinerModel]  # hardware and timing of one unit


def recent(maxlen: int = 256) -> deque[str]:
    """A bounded command log for a device."""
    return deque(maxlen=maxlen)


__all__ = ["BuildContext", "Built", "Family", "SimDevice", "SimMinerSpec", "SimServer"]
