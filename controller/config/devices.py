"""The hardware in the config: the miners (one by one or by address range) and the
Modbus devices beside them, PDUs with their outlet wiring, the site meter and sensors."""

from __future__ import annotations

import re
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator

from controller.config.fields import (
    ID_PATTERN,
    ConfigModel,
    Host,
    Ident,
    Seconds,
    SecretRef,
    expand_hosts,
    index_sample,
)
from drivers.registry import UnknownDriverError, default_registry


class CredentialsCfg(ConfigModel):
    username: str | None = None
    password: SecretRef | None = None


class MinerEntry(ConfigModel):
    """One miner (`id` + `host`) or a range of them (`id_pattern` + `hosts`)."""

    driver: str
    rated_power_w: Annotated[int, Field(gt=0, le=100_000)]
    efficiency_j_th: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]
    container: Ident
    id: Ident | None = None
    host: Host | None = None
    id_pattern: str | None = None
    hosts: str | None = None
    first_index: Annotated[int, Field(ge=0)] = 1
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    web_port: Annotated[int, Field(ge=1, le=65535)] | None = None  # HTTP/gRPC API, if any
    credentials: CredentialsCfg | None = None
    timeout_s: Seconds = 3.0

    @field_validator("driver")
    @classmethod
    def _driver(cls, value: str) -> str:
        try:
            default_registry().get(value)
        except UnknownDriverError as err:
            raise ValueError(str(err)) from None  # names the valid drivers
        return value.lower()

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: str | None) -> str | None:
        if value is not None:
            expand_hosts(value)
        return value

    @field_validator("id_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            sample = index_sample(value)
            if not re.match(ID_PATTERN, sample):
                raise ValueError(f"yields an invalid id {sample!r}")
        return value

    @model_validator(mode="after")
    def _form(self) -> Self:
        single = self.id is not None or self.host is not None
        ranged = self.id_pattern is not None or self.hosts is not None
        if single and ranged:
            raise ValueError("give either id + host, or id_pattern + hosts, not both")
        if single and (self.id is None or self.host is None):
            raise ValueError("a single miner needs both id and host")
        if ranged and (self.id_pattern is None or self.hosts is None):
            raise ValueError("a range needs both id_pattern and hosts")
        if not single and not ranged:
            raise ValueError("give id + host, or id_pattern + hosts")
        return self


class ModbusDeviceCfg(ConfigModel):
    """A device on Modbus TCP. `map` names a shipped register map (config/modbus/<name>.yaml)
    or a map file, relative to this config file."""

    id: Ident
    host: Host
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    unit: Annotated[int, Field(ge=0, le=247)] = 1
    map: str
    # Short and few: pymodbus's defaults (3 s, 3 retries) can block one call ~12 s.
    timeout_s: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = 1.0
    retries: Annotated[int, Field(ge=0, le=3)] = 1


MAX_OUTLETS = 1024


class OutletRange(ConfigModel):
    """Outlets `first_outlet`.. in order feed the miners named by `pattern` from `first`."""

    pattern: str
    first: Annotated[int, Field(ge=0)] = 1
    # Bounded so a typo (count: 99999999) is a located error, not a loader out of memory:
    # no switched PDU has more than a few dozen outlets.
    first_outlet: Annotated[int, Field(ge=1, le=MAX_OUTLETS)] = 1
    count: Annotated[int, Field(ge=1, le=MAX_OUTLETS)] | None = None  # default: the rest

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        index_sample(value, quote_error=True)
        return value

    def expand(self, outlets: int) -> dict[int, str]:
        last = outlets if self.count is None else self.first_outlet + self.count - 1
        return {
            outlet: self.pattern.format(n=self.first + outlet - self.first_outlet)
            for outlet in range(self.first_outlet, last + 1)
        }


class PduCfg(ModbusDeviceCfg):
    """A switched, metered PDU and which miner each outlet feeds."""

    outlets: dict[int, Ident] | list[OutletRange]


class MeterCfg(ModbusDeviceCfg):
    """The site meter at the grid connection: the farm is judged by it."""

    interval_s: Seconds = 0.5
    stale_after_s: Seconds = 3.0  # older readings: the draw is unknown, counted over the limit
    update_lag_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0  # its own refresh
    generation_exempt: bool = False  # on-site generation is added to the allowed draw


class SensorCfg(ModbusDeviceCfg):
    """A container's ambient temperature sensor."""

    container: Ident
    interval_s: Seconds = 10.0
