"""The small seam between the controller and every device driver."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Mode(enum.StrEnum):
    """What a miner is doing, as its firmware reports it."""

    MINING = "mining"
    SLEEPING = "sleeping"


class Capability(enum.StrEnum):
    """Optional abilities a driver declares after probing the firmware."""

    SLEEP = "sleep"  # sleep/wake with the control board kept up
    POWER_PROFILE = "power-profile"  # named power profiles (LuxOS profileset)
    POWER_TARGET = "power-target"  # a draw in watts the firmware tunes itself to


class FanPause(enum.StrEnum):
    """What the fans do while a miner sleeps: it matters at -35 degC."""

    OFF = "off"  # fans stop with the hashboards
    LOW = "low"  # firmware keeps them turning slowly
    CONFIGURABLE = "configurable"  # the driver can set the pause fan mode


@dataclass(frozen=True, slots=True)
class MinerReading:
    """One read of a miner: what its firmware says about itself."""

    mode: Mode
    power_w: int  # firmware estimate, not a meter
    hashrate_ths: float
    board_temps_c: tuple[float, ...]
    profile: str | None = None


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """One pool a miner is configured to mine for, as its firmware reports it."""

    url: str  # as the firmware gives it (scheme, host, port; a path for Stratum V2)
    user: str  # the worker name the pool is logged into with
    priority: int  # failover order: 0 is tried first
    enabled: bool = True  # False: configured but switched off (it cannot take the hashrate)
    active: bool = False  # the pool the miner hashes for now
    alive: bool | None = None  # the pool answers (None: the firmware does not say)


@dataclass(frozen=True, slots=True)
class DriverTraits:
    """Timing and residual draw of a firmware family, used by the planner."""

    sleep_power_w: int  # residual draw while asleep (control board, PSU standby)
    ramp_down_s: float  # from an acknowledged sleep to the residual draw
    ramp_up_s: float  # from an acknowledged wake to full draw
    fans_when_asleep: FanPause = FanPause.OFF
    # How long one sleep or wake may wait on the device beyond its requests' own deadlines,
    # when a family needs that (a stock Antminer restarts its mining process for tens of
    # seconds). The controller adds a handful of the miner's request deadlines for the
    # requests around the wait. None: those request deadlines alone.
    command_budget_s: float | None = None
    # False where the firmware has no watts of its own and the driver estimates them from
    # hashrate and a nameplate (stock Antminer): the controller then counts a running unit
    # at its configured rated power, never at an estimate that may be low.
    reports_power: bool = True
    # The power-target step of the escalation ladder: the lowest target the firmware is
    # lowered to, as a fraction of rated power (None: no such step for this family), and
    # how long a new target takes to land. A lower target keeps boards warm and hashing.
    power_floor_fraction: float | None = None
    retarget_s: float = 0.0
    # Waking with cold boards (a cold boot at full power fails below the vendor's
    # threshold): the family's gentle start as a fraction of rated power, a low power
    # target or work mode the boards warm up at (None: no low start; the wake relies on
    # the vendor's pre-heat, or on nothing), and how much longer a gentle wake may take
    # than a plain one (a Whatsminer pre-heats its boards for up to a minute first).
    gentle_fraction: float | None = None
    gentle_extra_s: float = 0.0


class MinerDriver(Protocol):
    """What the supervisor needs of a miner. Every method raises DriverError on failure."""

    @property
    def miner_id(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    async def probe(self) -> None: ...

    async def read(self) -> MinerReading: ...

    async def sleep(self) -> MinerReading:
        """Put the miner to sleep; return the read-back that proves it."""
        ...

    async def wake(self, *, gentle: bool = False, step_up: bool = False) -> MinerReading:
        """Wake the miner; return the read-back that proves it.

        `gentle`: its boards are cold. Start at the family's gentle level (a low power
        target or work mode: `DriverTraits.gentle_fraction`) or after the vendor's
        pre-heat, so the cold boot does not fail. The supervisor steps it up after the
        warm-up: with set_power_target, or with wake(step_up=True) where the family has
        no power target. `step_up`: the miner runs at its gentle level because our gentle
        wake put it there (perhaps before a restart, which the driver does not remember):
        bring it to its default, even where a plain wake would leave a low mode a person
        chose. Families with a power target may ignore it."""
        ...

    async def set_profile(self, profile: str) -> MinerReading:
        """Select a named power profile; return the read-back that proves it.
        UnsupportedError without Capability.POWER_PROFILE."""
        ...

    async def set_power_target(self, watts: int) -> MinerReading:
        """Tune to draw about `watts`; return the read-back that proves it.
        UnsupportedError without Capability.POWER_TARGET."""
        ...

    async def pools(self) -> tuple[PoolConfig, ...]:
        """The pools the miner is configured with, in failover order, empty slots left
        out. UnsupportedError where the firmware has no pools read (learnt once per
        miner, drivers.lacking): the readings and commands go on without it."""
        ...

    async def reclaim(self) -> None:
        """After a restart: release what a dead process of ours may have left held on the
        device (a LuxOS write session, which blocks every write until it idles out). Called
        only for a miner our journal shows a command on the wire to when we died."""
        ...

    async def close(self) -> None:
        """Release what the driver holds (HTTP sessions); it is not used afterwards."""
        ...


@dataclass(frozen=True, slots=True)
class MinerEndpoint:
    """Where a miner is and how to talk to it."""

    miner_id: str
    host: str
    port: int
    timeout_s: float
    username: str | None = None
    password: str | None = None
    web_port: int | None = None  # the HTTP/gRPC API where a family has one besides `port`


@dataclass(frozen=True, slots=True)
class MinerDriverEntry:
    """A registered miner driver family."""

    name: str
    factory: Callable[[MinerEndpoint], MinerDriver]
    traits: DriverTraits
    default_port: int
    summary: str
    default_web_port: int | None = None


# -- PDUs, meters and sensors -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PduOutlet:
    """One outlet as its PDU reads it."""

    outlet: int  # from 1, as printed on the PDU
    on: bool
    power_w: float


@dataclass(frozen=True, slots=True)
class PduReading:
    outlets: tuple[PduOutlet, ...]
    total_w: float


@dataclass(frozen=True, slots=True)
class MeterReading:
    """The site meter at the grid connection."""

    import_w: float
    export_w: float
    frequency_hz: float
    generation_w: float | None  # None: the meter does not measure generation


class PduDriver(Protocol):
    """A switched PDU. Every method raises DriverError on failure."""

    @property
    def name(self) -> str: ...

    async def read(self) -> PduReading: ...

    async def switch(self, outlet: int, on: bool) -> PduOutlet:
        """Switch one outlet; return the read-back that proves it (its state, and when cut,
        its power)."""
        ...

    async def close(self) -> None: ...


class MeterDriver(Protocol):
    """The site meter. Raises DriverError on failure."""

    @property
    def name(self) -> str: ...

    async def read(self) -> MeterReading: ...

    async def close(self) -> None: ...


class SensorDriver(Protocol):
    """A container's ambient temperature sensor, in degrees Celsius."""

    @property
    def name(self) -> str: ...

    async def read(self) -> float: ...

    async def close(self) -> None: ...
