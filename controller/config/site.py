"""SiteConfig, the whole site config as one model, with the site's name and the loop's
own sections (telemetry, control, journal, logging)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from controller.config.devices import MeterCfg, MinerEntry, PduCfg, SensorCfg
from controller.config.fields import ConfigModel, Ident, Kilowatts, Seconds, SecretRef
from controller.config.grid import GridCfg, SignalsCfg
from controller.config.listeners import ApiCfg
from controller.config.pools import PoolsCfg
from controller.config.protection import EscalationCfg, FrequencyCfg, SafetyCfg


class SiteCfg(ConfigModel):
    id: Ident
    name: str | None = None


class TelemetryCfg(ConfigModel):
    interval_s: Seconds = 5.0
    fast_interval_s: Seconds = 1.0  # while a deadline is pending
    stale_after_s: Seconds = 15.0
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 128


class ControlCfg(ConfigModel):
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


class TuningCfg(ConfigModel):
    """The most hashrate under the limit (controller/core/tuning.py): once no deadline
    runs, power-target miners are moved along their efficiency curves, a bounded number
    per plan; off, the ladder alone holds a limit (lower to the floor, sleep the least
    efficient), as before."""

    enabled: bool = True
    hysteresis: Annotated[float, Field(ge=0, le=0.5)] = 0.01  # a smaller gain starts nothing
    max_changes: Annotated[int, Field(ge=1, le=100_000)] = 200  # settings changed per plan
    # A retuned or woken miner stays where it is this long (plus its family's retarget
    # time after a retune), so nothing flaps. A sleeper may be woken once its ramp down
    # is over: a grant must bring the farm back at once.
    dwell_s: Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)] = 300.0
    # The share of the budget left unspent, so the readings' noise cannot push a fully
    # allocated fleet into a shed.
    headroom: Annotated[float, Field(ge=0, le=0.5)] = 0.02
    # The share of the moving miners' hashrate one plan may take away to make room: a
    # swap of miners goes in rounds rather than emptying the farm at once.
    max_drop: Annotated[float, Field(gt=0, le=1)] = 0.25


class JournalCfg(ConfigModel):
    path: Path
    # Evidence rows older than this move to the archive (None: kept in the journal forever).
    # At least a day: recovery reads the decisions of the last minutes.
    retention_days: Annotated[int, Field(ge=1)] | None = None
    archive_path: Path | None = None  # default: beside the journal, <name>.archive.db


class SigningCfg(ConfigModel):
    """The site key exports are signed with: an Ed25519 private key (PEM, PKCS#8) or an
    HMAC-SHA256 secret, named by reference like every secret."""

    algorithm: Literal["ed25519", "hmac-sha256"]
    key: SecretRef


class EvidenceCfg(ConfigModel):
    signing: SigningCfg | None = None  # absent: exports are written unsigned


class LoggingCfg(ConfigModel):
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
    tuning: TuningCfg = TuningCfg()
    pdus: list[PduCfg] = Field(default_factory=list)
    meter: MeterCfg | None = None
    sensors: list[SensorCfg] = Field(default_factory=list)
    escalation: EscalationCfg = EscalationCfg()
    frequency: FrequencyCfg | None = None
    safety: SafetyCfg | None = None  # absent: no cold-weather rules
    api: ApiCfg | None = None  # absent: no operator API, dashboard or /metrics
    pools: PoolsCfg | None = None  # absent: pools are not checked
    logging: LoggingCfg = LoggingCfg()
    evidence: EvidenceCfg = EvidenceCfg()
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
