"""The `simulation:` section of a site config: how the simulated farm behaves. Only for
`curtaild sim` and `curtaild demo`; the daemon never reads it (demo/farm.py validates it
against the site's miners and devices)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.types import Mode
from sim.faults import Fault

Kilowatts = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Celsius = Annotated[float, Field(ge=-60, le=60)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimMeterCfg(_Model):
    """The simulated site meter: what it adds to the farm's true draw, and how it reads."""

    base_load_kw: Kilowatts = 0.0  # lights, cooling, the edge box: not behind any PDU
    noise_kw: Kilowatts = 0.0
    update_interval_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    generation_kw: Kilowatts = 0.0


class SimBreakerCfg(_Model):
    """A simulated PDU's breaker: more outlets switched on within `window_s` than
    `max_switch_on` is an inrush the breaker does not survive (every outlet goes dark)."""

    max_switch_on: Annotated[int, Field(ge=1, le=1000)] = 8
    window_s: Annotated[float, Field(gt=0, le=60, allow_inf_nan=False)] = 1.0


class SimPoolCfg(_Model):
    """One pool a simulated miner is configured with (sim/pools.py)."""

    url: Annotated[str, Field(min_length=1, max_length=300)]
    user: Annotated[str, Field(max_length=200)] = ""
    password: Annotated[str, Field(max_length=200)] = "x"  # noqa: S105 - pools take any
    enabled: bool = True
    alive: bool = True


class SimulationCfg(_Model):
    """How the simulated farm behaves."""

    default_ambient_c: Celsius = 15.0
    ambient_c: dict[str, Celsius] = Field(default_factory=dict)
    start_mode: Mode = Mode.MINING
    faults: dict[str, Fault] = Field(default_factory=dict)  # miners and Modbus devices
    # Per miner, what its simulated firmware lacks, as an older or newer build does: commands,
    # HTTP paths or "command:key" reply fields (sim/missing.py).
    missing: dict[str, list[Annotated[str, Field(min_length=1, max_length=200)]]] = Field(
        default_factory=dict
    )
    # Per miner, the pools it is configured with in failover order (absent: its firmware's
    # factory default); the control API's PUT /v1/miners/{id}/pools changes them live.
    pools: dict[str, list[SimPoolCfg]] = Field(default_factory=dict)
    seed: int = 1
    meter: SimMeterCfg = SimMeterCfg()
    breaker: SimBreakerCfg = SimBreakerCfg()
    control_listen: str | None = None  # host:port of the simulator's control API

    @field_validator("control_listen")
    @classmethod
    def _control(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:  # noqa: PLR2004
            raise ValueError("give host:port, e.g. 127.0.0.1:8479")
        return value
