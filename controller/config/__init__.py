"""The site config: pydantic models, loading, and every problem reported with its location.

Loading fails closed: unknown keys, wrong types, missing secrets, unknown drivers and
duplicate miners are all errors, and all of them are reported at once, each with the
path into the file (`miners[12].host: ...`), before any hardware is touched.

The models, the loader and the checks live in the modules beside this one; the rest of
the daemon imports them from here.
"""

from controller.config.checks import listeners
from controller.config.devices import (
    CredentialsCfg,
    MeterCfg,
    MinerEntry,
    ModbusDeviceCfg,
    OutletRange,
    PduCfg,
    SensorCfg,
)
from controller.config.errors import ConfigError, describe
from controller.config.fields import (
    MAX_RANGE,
    Ident,
    Kilowatts,
    Seconds,
    SecretRef,
    check_listen,
    expand_hosts,
)
from controller.config.grid import GridCfg, MqttCfg, SignalsCfg, SourceCfg
from controller.config.listeners import ApiCfg, ApiTokenCfg, GridTlsCfg, HttpCfg, Role, TlsCfg
from controller.config.loaded import Loaded, MinerConfig
from controller.config.loader import load, parse
from controller.config.pools import ApprovedPoolCfg, PoolsCfg
from controller.config.protection import (
    Celsius,
    ContainerSafetyCfg,
    Duration,
    EscalationCfg,
    FrequencyCfg,
    SafetyCfg,
)
from controller.config.site import (
    ControlCfg,
    EvidenceCfg,
    JournalCfg,
    LoggingCfg,
    SigningCfg,
    SiteCfg,
    SiteConfig,
    TelemetryCfg,
    TuningCfg,
)

__all__ = [
    "MAX_RANGE",
    "ApiCfg",
    "ApiTokenCfg",
    "ApprovedPoolCfg",
    "Celsius",
    "ConfigError",
    "ContainerSafetyCfg",
    "ControlCfg",
    "CredentialsCfg",
    "Duration",
    "EscalationCfg",
    "EvidenceCfg",
    "FrequencyCfg",
    "GridCfg",
    "GridTlsCfg",
    "HttpCfg",
    "Ident",
    "JournalCfg",
    "Kilowatts",
    "Loaded",
    "LoggingCfg",
    "MeterCfg",
    "MinerConfig",
    "MinerEntry",
    "ModbusDeviceCfg",
    "MqttCfg",
    "OutletRange",
    "PduCfg",
    "PoolsCfg",
    "Role",
    "SafetyCfg",
    "Seconds",
    "SecretRef",
    "SensorCfg",
    "SignalsCfg",
    "SigningCfg",
    "SiteCfg",
    "SiteConfig",
    "SourceCfg",
    "TelemetryCfg",
    "TlsCfg",
    "TuningCfg",
    "check_listen",
    "describe",
    "expand_hosts",
    "listeners",
    "load",
    "parse",
]
