"""The site config: pydantic models, loading, and every problem reported with its location.

Loading fails closed: unknown keys, wrong types, missing secrets, unknown drivers and
duplicate miners are all errors, and all of them are reported at once, each with the
path into the file (`miners[12].host: ...`), before any hardware is touched.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from controller.core.frequency import FrequencyRules
from controller.core.model import PlanRules
from controller.core.safety import ColdRules, Safety
from controller.core.signals import GridMode, GridPolicy, SourcePolicy, StalePolicy
from controller.tls import TlsError, TlsFiles, is_loopback, server_context
from drivers.modbus_map import MapError, RegisterMap, load_map
from drivers.registry import MinerRegistry, UnknownDriverError, default_registry

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
MAX_RANGE = 65_536
# libyaml's loader parses a 10,000-miner site in a fraction of the pure-Python time.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Ident = Annotated[str, Field(pattern=_ID)]
Kilowatts = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ConfigError(Exception):
    """The config is wrong; `problems` lists every problem with its location."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))
        self.source = source
        self.problems = problems


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteCfg(_Model):
    id: Ident
    name: str | None = None


class GridCfg(_Model):
    mode: GridMode
    cap_kw: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    base_allowance_kw: Kilowatts = 0.0
    margin_kw: Kilowatts = 0.0
    grant_end_lead_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 15.0
    response_deadline_s: Seconds = 10.0

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.base_allowance_kw > self.cap_kw:
            raise ValueError("base_allowance_kw must not exceed cap_kw")
        if self.margin_kw >= self.cap_kw:
            raise ValueError("margin_kw must be below cap_kw")
        return self


class SecretRef(_Model):
    """A secret named by reference: an environment variable or a file, never inline."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def resolve(self) -> str:
        """The secret's value; ValueError naming what is missing."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ValueError(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            value = self.file.read_text().strip()
        except OSError as err:
            raise ValueError(f"cannot read {self.file}: {err.strerror}") from None
        if not value:
            raise ValueError(f"{self.file} is empty")
        return value


class SourceCfg(_Model):
    id: Ident
    key: SecretRef
    heartbeat_timeout_s: Seconds | None = None
    on_stale: StalePolicy = StalePolicy.HOLD
    stale_limit_kw: Kilowatts | None = None

    @model_validator(mode="after")
    def _fallback(self) -> Self:
        if self.on_stale is StalePolicy.LIMIT and self.stale_limit_kw is None:
            raise ValueError("on_stale: limit needs stale_limit_kw")
        if self.on_stale is not StalePolicy.HOLD and self.heartbeat_timeout_s is None:
            raise ValueError(f"on_stale: {self.on_stale.value} needs heartbeat_timeout_s")
        return self


class MqttCfg(_Model):
    url: Annotated[str, Field(pattern=r"^mqtts?://[^/\s:]+(:\d{1,5})?/?$")]
    topic_prefix: Annotated[str, Field(pattern=r"^[^#+\s]+$")] = "curtaild"
    client_id: str | None = None
    username: str | None = None
    password: SecretRef | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    reconnect_max_s: Seconds = 30.0

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1].rstrip("/").rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        rest = self.url.split("://", 1)[1].rstrip("/")
        if ":" in rest:
            return int(rest.rsplit(":", 1)[1])
        return 8883 if self.tls else 1883

    @property
    def tls(self) -> bool:
        return self.url.startswith("mqtts://")


class TlsCfg(_Model):
    """TLS for a listener. The files are re-read on SIGHUP; the rest needs a restart."""

    cert: Path  # PEM: the server certificate first, then any intermediates
    key: Path  # PEM private key
    key_password: SecretRef | None = None  # for an encrypted key

    def files(self) -> TlsFiles:
        password = self.key_password.resolve if self.key_password is not None else None
        return TlsFiles(self.cert, self.key, password)


class GridTlsCfg(TlsCfg):
    """The grid endpoint's TLS, which can also verify the grid side's client certificate."""

    client_ca: Path | None = None  # PEM bundle of the CAs that sign the grid side's certs
    require_client_cert: bool = False  # without one, the handshake fails (no HTTP answer)

    @model_validator(mode="after")
    def _ca(self) -> Self:
        if self.require_client_cert and self.client_ca is None:
            raise ValueError("require_client_cert needs client_ca, the CA bundle to verify with")
        return self

    def files(self) -> TlsFiles:
        return replace(
            super().files(), client_ca=self.client_ca, require_client_cert=self.require_client_cert
        )


class _Listener(_Model):
    """A section that listens on `listen` (host:port; port 0: any free port)."""

    listen: str
    tls: TlsCfg | None = None
    # Plain HTTP on an address other machines can reach: only when this says so.
    allow_plaintext: bool = False

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return check_listen(value)

    @model_validator(mode="after")
    def _exposed(self) -> Self:
        if self.tls is None and not self.allow_plaintext and not is_loopback(self.host):
            raise ValueError(
                f"{self.host} is not a loopback address, so requests to it cross the network "
                "in plain text: add a tls: section (cert, key), or allow_plaintext: true to "
                "serve plain HTTP there on purpose"
            )
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def plaintext_exposed(self) -> bool:
        """Plain HTTP that other machines can reach (allow_plaintext says so)."""
        return self.tls is None and not is_loopback(self.host)


class HttpCfg(_Listener):
    listen: str = "127.0.0.1:8480"
    tls: GridTlsCfg | None = None


Role = Literal["viewer", "operator", "admin"]


class ApiTokenCfg(_Model):
    """One operator's bearer token, stored as its SHA-256 only (`curtaild token` makes
    one). Tokens are 256 random bits, so a fast hash is enough: nothing to brute-force."""

    name: Ident  # who: every change made with this token is journaled under this name
    role: Role
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ApiCfg(_Listener):
    """The operator API, the dashboard and /metrics, on their own listener."""

    listen: str = "127.0.0.1:8481"
    tokens: list[ApiTokenCfg] = Field(default_factory=list)  # none: every request is 401
    history_s: Annotated[float, Field(ge=60, le=86_400, allow_inf_nan=False)] = 3600.0
    metrics_public: bool = True  # Prometheus scrapes /metrics without a token

    @field_validator("tokens")
    @classmethod
    def _unique(cls, tokens: list[ApiTokenCfg]) -> list[ApiTokenCfg]:
        if any(t.name == "curtaild" for t in tokens):
            raise ValueError("the name curtaild is the daemon's own in the journal")
        for what in ("name", "sha256"):
            seen = [getattr(t, what) for t in tokens]
            dupes = sorted({v for v in seen if seen.count(v) > 1})
            if dupes:
                raise ValueError(f"two tokens share a {what}: {', '.join(dupes)}")
        return tokens


class SignalsCfg(_Model):
    sources: Annotated[list[SourceCfg], Field(min_length=1)]
    mqtt: MqttCfg | None = None
    http: HttpCfg | None = None
    replay_window_s: Seconds = 30.0  # the contract's window; configurable for lab clocks

    @field_validator("sources")
    @classmethod
    def _unique(cls, sources: list[SourceCfg]) -> list[SourceCfg]:
        ids = [s.id for s in sources]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"source ids must be unique: {', '.join(dupes)}")
        return sources


class CredentialsCfg(_Model):
    username: str | None = None
    password: SecretRef | None = None


class MinerEntry(_Model):
    """One miner (`id` + `host`) or a range of them (`id_pattern` + `hosts`)."""

    driver: str
    rated_power_w: Annotated[int, Field(gt=0, le=100_000)]
    efficiency_j_th: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]
    container: Ident
    id: Ident | None = None
    host: str | None = None
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

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None:
            _check_host(value)
        return value

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
            try:
                sample = value.format(n=1)
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"use {{n}} for the index, e.g. c1-{{n:03d}}: {err}") from None
            if sample == value.format(n=2):
                raise ValueError("must contain {n}, e.g. c1-{n:03d}")
            if not re.match(_ID, sample):
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


class TelemetryCfg(_Model):
    interval_s: Seconds = 5.0
    fast_interval_s: Seconds = 1.0  # while a deadline is pending
    stale_after_s: Seconds = 15.0
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 128


class ControlCfg(_Model):
    tick_s: Seconds = 1.0
    fast_tick_s: Seconds = 0.25  # while commands or deadlines are pending
    # Commands in flight at once (each holds a socket); capped by the open-file limit.
    command_concurrency: Annotated[int, Field(ge=1, le=100_000)] = 16_384
    # Requests on the wire at once, commands and telemetry together; a request's own
    # deadline starts when it is admitted (drivers/transport/admission.py).
    io_concurrency: Annotated[int, Field(ge=1, le=100_000)] = 2048
    retry_backoff_s: Seconds = 2.0
    retry_backoff_max_s: Seconds = 60.0
    wake_max_per_s: Annotated[int, Field(ge=1)] = 10
    wake_max_kw_per_s: Kilowatts = 50.0
    wake_headroom_kw: Kilowatts = 5.0
    wake_hold_after_shed_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 30.0


class ModbusDeviceCfg(_Model):
    """A device on Modbus TCP. `map` names a shipped register map (config/modbus/<name>.yaml)
    or a map file, relative to this config file."""

    id: Ident
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    unit: Annotated[int, Field(ge=0, le=247)] = 1
    map: str
    # Short and few: pymodbus's defaults (3 s, 3 retries) can block one call ~12 s.
    timeout_s: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = 1.0
    retries: Annotated[int, Field(ge=0, le=3)] = 1

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        _check_host(value)
        return value


class OutletRange(_Model):
    """Outlets `first_outlet`.. in order feed the miners named by `pattern` from `first`."""

    pattern: str
    first: Annotated[int, Field(ge=0)] = 1
    first_outlet: Annotated[int, Field(ge=1)] = 1
    count: Annotated[int, Field(ge=1)] | None = None  # default: the rest of the PDU

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            sample = value.format(n=1)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"use {{n}} for the index, e.g. c1-{{n:03d}}: {err!r}") from None
        if sample == value.format(n=2):
            raise ValueError("must contain {n}, e.g. c1-{n:03d}")
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


class EscalationCfg(_Model):
    """The ladder: lower power target -> sleep -> cut the PDU outlet."""

    lower_first: bool = True
    # Outlets cut at once, and the pause between batches (waived under an emergency: a cut
    # draws no inrush, and a frequency trip wants its block shed now).
    cut_batch_size: Annotated[int, Field(ge=1, le=1000)] = 8
    cut_batch_spacing_s: Annotated[float, Field(ge=0, le=60, allow_inf_nan=False)] = 0.5
    # Outlets restored at once, and the pause between: every restored miner boots at once.
    restore_batch_size: Annotated[int, Field(ge=1, le=1000)] = 4
    restore_batch_spacing_s: Annotated[float, Field(ge=0, le=600, allow_inf_nan=False)] = 2.0
    restore_min_off_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 300.0
    # A restored miner boots, initialises and ramps up: rated power, not "stuck", meanwhile.
    restore_boot_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 600.0
    # Beyond the family's ramp-down (already a conservative bound) before a high outlet
    # reading counts as a lie; the planner counts it at the measured draw from the ramp's end.
    lie_grace_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    # How long a caught lie is remembered (across restarts too) before the outlet judges
    # the unit afresh: a day, so a firmware fixed or a unit swapped is not cut for good.
    # null: for good.
    lie_memory_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = 86_400.0
    pdu_interval_s: Seconds = 1.0
    switch_timeout_s: Seconds = 3.0


Celsius = Annotated[float, Field(ge=-80, le=80, allow_inf_nan=False)]
Duration = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ContainerSafetyCfg(_Model):
    """One container's cold-weather rules; only the keys given override the site's."""

    hard_off_below_c: Celsius | None = -10.0  # no outlet cut below this ambient (None: off)
    floor_below_c: Celsius | None = 0.0  # the heater floor applies below this ambient
    floor_kw: Kilowatts = 0.0  # keep at least this much running there (lowest profile) ...
    floor_miners: Annotated[int, Field(ge=0)] = 0  # ... and at least this many miners
    warm_below_c: Celsius | None = 10.0  # boards colder than this wake gently
    warm_up_s: Duration = 120.0  # at the gentle level this long before stepping up
    min_on_s: Duration = 300.0  # a woken miner is shed last for this long
    min_off_s: Duration = 120.0  # a shed miner is not woken again before this


class SafetyCfg(ContainerSafetyCfg):
    """Cold-weather protection, dwell times and warm restarts (controller/core/safety.py)."""

    temperature_stale_after_s: Seconds = 300.0  # older ambient readings count as cold
    containers: dict[Ident, ContainerSafetyCfg] = Field(default_factory=dict)


class FrequencyCfg(_Model):
    """Local under-frequency response from the site meter's frequency."""

    nominal_hz: Literal[50, 60]
    trip_below_hz: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    trip_after_s: Annotated[float, Field(ge=0, le=60, allow_inf_nan=False)] = 0.5
    shed_kw: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    deadline_s: Seconds = 2.0
    recover_above_hz: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    recover_after_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 30.0
    restore_kw_per_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 10.0

    @model_validator(mode="after")
    def _thresholds(self) -> Self:
        low = self.nominal_hz * 0.9
        if not low <= self.trip_below_hz < self.nominal_hz:
            raise ValueError(
                f"trip_below_hz must be below the {self.nominal_hz} Hz nominal and above "
                f"{low:g} Hz (a {self.nominal_hz} Hz grid)"
            )
        if not self.trip_below_hz < self.recover_above_hz <= self.nominal_hz:
            raise ValueError(
                "recover_above_hz must lie above trip_below_hz and at most the nominal, "
                "or the response could flap"
            )
        return self


class JournalCfg(_Model):
    path: Path


class LoggingCfg(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"


class SiteConfig(BaseSettings):
    """The whole site. Environment variables CURTAILD_<SECTION>__<KEY> override the file."""

    model_config = SettingsConfigDict(
        env_prefix="CURTAILD_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    site: SiteCfg
    grid: GridCfg
    signals: SignalsCfg
    miners: Annotated[list[MinerEntry], Field(min_length=1)]
    journal: JournalCfg
    telemetry: TelemetryCfg = TelemetryCfg()
    control: ControlCfg = ControlCfg()
    pdus: list[PduCfg] = Field(default_factory=list)
    meter: MeterCfg | None = None
    sensors: list[SensorCfg] = Field(default_factory=list)
    escalation: EscalationCfg = EscalationCfg()
    frequency: FrequencyCfg | None = None
    safety: SafetyCfg | None = None  # absent: no cold-weather rules
    api: ApiCfg | None = None  # absent: no operator API, dashboard or /metrics
    logging: LoggingCfg = LoggingCfg()
    # Only for `curtaild sim` and `curtaild demo`: how the simulated farm behaves. The
    # simulator owns its shape (sim/config.py); demo/farm.py validates it, with locations.
    simulation: dict[str, Any] | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        del settings_cls, dotenv_settings, file_secret_settings  # secrets are named explicitly
        return (env_settings, init_settings)


@dataclass(frozen=True, slots=True)
class MinerConfig:
    """One miner after ranges are expanded and secrets resolved."""

    id: str
    driver: str
    host: str
    port: int
    container: str
    rated_power_w: int
    efficiency_j_th: float
    timeout_s: float
    username: str | None
    password: str | None
    entry: int  # index into `miners` where it was declared
    web_port: int | None = None


@dataclass(frozen=True, slots=True)
class Loaded:
    """A validated config with everything derived from it."""

    config: SiteConfig
    miners: tuple[MinerConfig, ...]
    source_keys: dict[str, bytes]
    mqtt_password: str | None
    origin: str
    outlets: dict[str, tuple[str, int]] = field(default_factory=dict)  # miner -> (pdu, outlet)
    maps: dict[str, RegisterMap] = field(default_factory=dict)  # Modbus device id -> its map

    def grid_policy(self) -> GridPolicy:
        grid = self.config.grid
        return GridPolicy(
            mode=grid.mode,
            cap_w=_watts(grid.cap_kw),
            base_allowance_w=_watts(grid.base_allowance_kw),
            grant_end_lead=timedelta(seconds=grid.grant_end_lead_s),
            response_deadline=timedelta(seconds=grid.response_deadline_s),
            sources=tuple(
                SourcePolicy(
                    id=s.id,
                    heartbeat_timeout=(
                        timedelta(seconds=s.heartbeat_timeout_s) if s.heartbeat_timeout_s else None
                    ),
                    on_stale=s.on_stale,
                    stale_limit_w=_watts(s.stale_limit_kw)
                    if s.stale_limit_kw is not None
                    else None,
                )
                for s in self.config.signals.sources
            ),
        )

    def plan_rules(self) -> PlanRules:
        control = self.config.control
        return PlanRules(
            margin_w=_watts(self.config.grid.margin_kw),
            stale_after=timedelta(seconds=self.config.telemetry.stale_after_s),
            wake_headroom_w=_watts(control.wake_headroom_kw),
            wake_window=timedelta(seconds=1),
            wake_max_per_window=control.wake_max_per_s,
            wake_max_w_per_window=_watts(control.wake_max_kw_per_s),
            wake_hold_after_shed=timedelta(seconds=control.wake_hold_after_shed_s),
            lower_first=self.config.escalation.lower_first,
            restore_min_off=timedelta(seconds=self.config.escalation.restore_min_off_s),
            restore_boot=timedelta(seconds=self.config.escalation.restore_boot_s),
            safety=self.safety(),
        )

    def safety(self) -> Safety | None:
        cfg = self.config.safety
        if cfg is None:
            return None
        stale = timedelta(seconds=cfg.temperature_stale_after_s)
        containers = {name: _cold_rules(_container(cfg, name), stale) for name in cfg.containers}
        return Safety(_cold_rules(_container(cfg, None), stale), containers)

    def frequency_rules(self) -> FrequencyRules | None:
        f = self.config.frequency
        if f is None:
            return None
        return FrequencyRules(
            nominal_hz=f.nominal_hz,
            trip_below_hz=f.trip_below_hz,
            trip_after=timedelta(seconds=f.trip_after_s),
            shed_w=_watts(f.shed_kw),
            recover_above_hz=f.recover_above_hz,
            recover_after=timedelta(seconds=f.recover_after_s),
            restore_w_per_s=f.restore_kw_per_s * 1000,
            deadline=timedelta(seconds=f.deadline_s),
        )


def load(path: Path, *, resolve_secrets: bool = True) -> Loaded:
    """Read, validate and expand a site config; ConfigError lists every problem."""
    origin = str(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(origin, [f"cannot read the file: {err.strerror}"]) from None
    return parse(text, origin=origin, resolve_secrets=resolve_secrets)


def parse(text: str, *, origin: str = "<config>", resolve_secrets: bool = True) -> Loaded:
    """Validate config text (YAML or JSON)."""
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader, C or Python
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(origin, [f"{where}not valid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(origin, ["the file must be a mapping of sections (site, grid, ...)"])
    try:
        config = SiteConfig(**data)
    except ValidationError as err:
        raise ConfigError(origin, [describe(e) for e in err.errors()]) from None
    problems: list[str] = []
    miners = _expand(config, default_registry(), problems, resolve_secrets=resolve_secrets)
    keys, mqtt_password = _signal_secrets(config, problems, resolve=resolve_secrets)
    if resolve_secrets:  # the key files are secrets too
        problems.extend(_listener_tls(config))
    problems.extend(_cross_checks(config, miners))
    if config.signals.mqtt is None and config.signals.http is None:
        problems.append("signals: configure mqtt, http or both; otherwise no signal can arrive")
    maps, outlets = _modbus(config, miners, origin, problems)
    if problems:
        raise ConfigError(origin, problems)
    return Loaded(config, tuple(miners), keys, mqtt_password, origin, outlets, maps)


def _modbus(
    config: SiteConfig, miners: list[MinerConfig], origin: str, problems: list[str]
) -> tuple[dict[str, RegisterMap], dict[str, tuple[str, int]]]:
    """Load every device's register map and check the outlet wiring against the miners."""
    maps = _maps(config, origin, problems)
    ids = {m.id for m in miners}
    outlets: dict[str, tuple[str, int]] = {}
    for i, pdu in enumerate(config.pdus):
        pdu_map = maps.get(pdu.id)
        if pdu_map is None:
            continue
        for outlet, miner_id in sorted(_wiring(pdu, pdu_map.outlets).items()):
            loc = f"pdus[{i}].outlets.{outlet}"
            if not 1 <= outlet <= pdu_map.outlets:
                problems.append(f"{loc}: {pdu.id} has outlets 1-{pdu_map.outlets}")
            elif miner_id not in ids:
                problems.append(f"{loc}: no miner {miner_id!r}")
            elif miner_id in outlets:
                other = outlets[miner_id]
                problems.append(f"{loc}: {miner_id} is already on {other[0]} outlet {other[1]}")
            else:
                outlets[miner_id] = (pdu.id, outlet)
    if config.frequency is not None and config.meter is None:
        problems.append("frequency: the under-frequency response needs a meter to read")
    return maps, outlets


def _wiring(pdu: PduCfg, count: int) -> dict[int, str]:
    if isinstance(pdu.outlets, dict):
        return dict(pdu.outlets)
    wiring: dict[int, str] = {}
    for outlets in pdu.outlets:
        wiring.update(outlets.expand(count))
    return wiring


def _maps(config: SiteConfig, origin: str, problems: list[str]) -> dict[str, RegisterMap]:
    devices: list[tuple[str, ModbusDeviceCfg, str]] = [
        *((f"pdus[{i}]", d, "pdu") for i, d in enumerate(config.pdus)),
        *((f"sensors[{i}]", d, "sensor") for i, d in enumerate(config.sensors)),
    ]
    if config.meter is not None:
        devices.append(("meter", config.meter, "meter"))
    maps: dict[str, RegisterMap] = {}
    where: dict[tuple[str, int, int], str] = {}
    # A map given as a file is found next to the config, wherever the daemon runs from.
    base = Path(origin).parent if not origin.startswith("<") else Path()
    for loc, device, kind in devices:
        endpoint = (device.host, device.port, device.unit)
        if device.id in maps or device.id in where.values():
            problems.append(f"{loc}.id: {device.id!r} is already a Modbus device")
            continue
        if endpoint in where:
            problems.append(
                f"{loc}: {device.host}:{device.port} unit {device.unit} is already "
                f"{where[endpoint]}"
            )
        where[endpoint] = device.id
        is_file = "/" in device.map or device.map.endswith((".yaml", ".yml"))
        try:
            regmap = load_map(base / device.map if is_file else device.map)
        except MapError as err:
            problems.extend(f"{loc}.map: {problem}" for problem in err.problems)
            continue
        if regmap.kind != kind:
            problems.append(f"{loc}.map: {device.map!r} maps a {regmap.kind}, not a {kind}")
            continue
        maps[device.id] = regmap
    return maps


def _container(cfg: SafetyCfg, name: str | None) -> ContainerSafetyCfg:
    """A container's rules: the site's, with the keys its own entry gives."""
    site = ContainerSafetyCfg(**cfg.model_dump(include=set(ContainerSafetyCfg.model_fields)))
    override = cfg.containers.get(name) if name is not None else None
    if override is None:
        return site
    return site.model_copy(update=override.model_dump(include=override.model_fields_set))


def _cold_rules(cfg: ContainerSafetyCfg, stale: timedelta) -> ColdRules:
    return ColdRules(
        hard_off_below_c=cfg.hard_off_below_c,
        floor_below_c=cfg.floor_below_c,
        floor_w=_watts(cfg.floor_kw),
        floor_miners=cfg.floor_miners,
        warm_below_c=cfg.warm_below_c,
        warm_up=timedelta(seconds=cfg.warm_up_s),
        min_on=timedelta(seconds=cfg.min_on_s),
        min_off=timedelta(seconds=cfg.min_off_s),
        temperature_stale_after=stale,
    )


def _safety_checks(config: SiteConfig, miners: list[MinerConfig]) -> list[str]:
    """Cold-weather rules that name no container, or a floor a container can never hold."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for sensor in config.sensors:
        if sensor.container in seen:
            problems.append(
                f"sensors: {sensor.id} and {seen[sensor.container]} both measure container "
                f"{sensor.container}; one would silently override the other"
            )
        seen[sensor.container] = sensor.id
    cfg = config.safety
    if cfg is None:
        return problems
    rated: dict[str, list[int]] = {}
    for m in miners:
        rated.setdefault(m.container, []).append(m.rated_power_w)
    problems.extend(
        f"safety.containers.{name}: no miner is in container {name!r}"
        for name in cfg.containers
        if name not in rated
    )
    for name, watts in rated.items():
        rules = _container(cfg, name)
        floor_kw, floor_n = rules.floor_kw, rules.floor_miners
        where = f"safety.containers.{name}" if name in cfg.containers else "safety"
        if floor_kw * 1000 > sum(watts):
            problems.append(
                f"{where}.floor_kw: {floor_kw:g} kW is more than container {name}'s "
                f"{sum(watts) / 1000:g} kW rated: the heater floor could never be held"
            )
        if floor_n > len(watts):
            problems.append(
                f"{where}.floor_miners: {floor_n} is more than the {len(watts)} miners in "
                f"container {name}"
            )
    return problems


def _cross_checks(config: SiteConfig, miners: list[MinerConfig]) -> list[str]:
    """Settings that are each valid alone but together would misbehave."""
    problems = _safety_checks(config, miners)
    telemetry = config.telemetry
    if telemetry.stale_after_s < 2 * telemetry.interval_s:
        problems.append(
            f"telemetry.stale_after_s: {telemetry.stale_after_s:g} s is less than two poll "
            f"intervals ({2 * telemetry.interval_s:g} s): one late poll would make the fleet "
            "unknown and count every miner at rated power"
        )
    if config.grid.mode is GridMode.SURPLUS_ONLY and miners:
        registry = default_registry()
        slowest = max(miners, key=lambda m: registry.get(m.driver).traits.ramp_down_s)
        ramp = registry.get(slowest.driver).traits.ramp_down_s
        if config.grid.grant_end_lead_s < ramp:
            problems.append(
                f"grid.grant_end_lead_s: {config.grid.grant_end_lead_s:g} s is less than the "
                f"{ramp:g} s {slowest.driver} miners (e.g. {slowest.id}) take to ramp down, so "
                "the farm could not be under the next limit when a grant ends"
            )
    largest = max(miners, key=lambda m: m.rated_power_w, default=None)
    wake_w = config.control.wake_max_kw_per_s * 1000
    if largest is not None and wake_w < largest.rated_power_w:
        problems.append(
            f"control.wake_max_kw_per_s: {config.control.wake_max_kw_per_s:g} kW is less than "
            f"{largest.id}'s rated {largest.rated_power_w} W, so it could never be woken"
        )
    return problems


def _signal_secrets(
    config: SiteConfig, problems: list[str], *, resolve: bool
) -> tuple[dict[str, bytes], str | None]:
    """HMAC keys per source and the broker password, or problems naming what is missing."""
    keys: dict[str, bytes] = {}
    password = None
    if not resolve:
        return keys, password
    for i, source in enumerate(config.signals.sources):
        try:
            keys[source.id] = source.key.resolve().encode()
        except ValueError as err:
            problems.append(f"signals.sources[{i}].key: {err}")
    mqtt = config.signals.mqtt
    if mqtt is not None and mqtt.password is not None:
        try:
            password = mqtt.password.resolve()
        except ValueError as err:
            problems.append(f"signals.mqtt.password: {err}")
    return keys, password


def listeners(config: SiteConfig) -> dict[str, _Listener]:
    """The configured listeners by their place in the config: signals.http, api."""
    found: dict[str, _Listener | None] = {"signals.http": config.signals.http, "api": config.api}
    return {name: listener for name, listener in found.items() if listener is not None}


def _listener_tls(config: SiteConfig) -> list[str]:
    """Every listener's certificate and key load and match; its client CA loads."""
    problems: list[str] = []
    for name, listener in listeners(config).items():
        if listener.tls is None:
            continue
        try:
            server_context(listener.tls.files())
        except TlsError as err:
            problems.extend(f"{name}.tls.{key}: {detail}" for key, detail in err.problems)
    return problems


def expand_hosts(spec: str) -> list[str]:
    """'10.0.1.10-10.0.1.59' -> every IPv4 address in the inclusive range."""
    first, sep, last = spec.partition("-")
    if not sep:
        raise ValueError("give a range first-last, e.g. 10.0.1.10-10.0.1.59")
    try:
        lo = ipaddress.IPv4Address(first.strip())
        hi = ipaddress.IPv4Address(last.strip())
    except ValueError as err:
        raise ValueError(f"not an IPv4 range: {err}") from None
    count = int(hi) - int(lo) + 1
    if count < 1:
        raise ValueError(f"{hi} comes before {lo}")
    if count > MAX_RANGE:
        raise ValueError(f"{count} addresses; at most {MAX_RANGE} per range")
    return [str(ipaddress.IPv4Address(int(lo) + i)) for i in range(count)]


def _expand(
    config: SiteConfig, registry: MinerRegistry, problems: list[str], *, resolve_secrets: bool
) -> list[MinerConfig]:
    miners: list[MinerConfig] = []
    by_id: dict[str, str] = {}
    by_addr: dict[tuple[str, int], str] = {}
    for i, entry in enumerate(config.miners):
        where = f"miners[{i}]"
        try:
            family = registry.get(entry.driver)
        except UnknownDriverError as err:  # already reported by validation; be safe
            problems.append(f"{where}.driver: {err}")
            continue
        port = entry.port or family.default_port
        web_port = entry.web_port or family.default_web_port
        username = password = None
        if entry.credentials is not None:
            username = entry.credentials.username
            if entry.credentials.password is not None and resolve_secrets:
                try:
                    password = entry.credentials.password.resolve()
                except ValueError as err:
                    problems.append(f"{where}.credentials.password: {err}")
        if entry.hosts is not None and entry.id_pattern is not None:
            pairs = [
                (entry.id_pattern.format(n=entry.first_index + k), host)
                for k, host in enumerate(expand_hosts(entry.hosts))
            ]
        else:
            assert entry.id is not None
            assert entry.host is not None
            pairs = [(entry.id, entry.host)]
        for miner_id, host in pairs:
            if miner_id in by_id:
                problems.append(f"{where}: miner id {miner_id!r} is also used by {by_id[miner_id]}")
                continue
            if (host, port) in by_addr:
                problems.append(
                    f"{where}: {host}:{port} ({miner_id}) is also used by {by_addr[host, port]}"
                )
                continue
            by_id[miner_id] = where
            by_addr[host, port] = f"{where} ({miner_id})"
            miners.append(
                MinerConfig(
                    miner_id,
                    entry.driver,
                    host,
                    port,
                    entry.container,
                    entry.rated_power_w,
                    entry.efficiency_j_th,
                    entry.timeout_s,
                    username,
                    password,
                    i,
                    web_port,
                )
            )
    return miners


def describe(error: ErrorDetails) -> str:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (typo?)"
    return f"{loc or '<top>'}: {message}"


def check_listen(value: str) -> str:
    """A host:port to listen on (port 0: any free port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:  # noqa: PLR2004
        raise ValueError("give host:port, e.g. 127.0.0.1:8480")
    _check_host(host.strip("[]"))
    return value


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # All-numeric dotted names are mistyped addresses, not host names.
        if not _HOSTNAME.match(host) or re.fullmatch(r"[\d.]+", host):
            raise ValueError(f"{host!r} is neither an IP address nor a host name") from None


def _watts(kw: float) -> int:
    # Round limits down: a fraction of a watt must never round a limit up.
    return math.floor(kw * 1000 + 1e-6)


__all__ = [
    "ConfigError",
    "Loaded",
    "MinerConfig",
    "SiteConfig",
    "expand_hosts",
    "load",
    "parse",
]
