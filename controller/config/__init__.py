"""The site config: pydantic models, loading, and every problem reported with its location.

Loading fails closed: unknown keys, wrong types, missing secrets, unknown drivers and
duplicate miners are all errors, and all of them are reported at once, each with the
path into the file (`miners[12].host: ...`), before any hardware is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import yaml
from pydantic import ValidationError

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
from controller.config.listeners import (
    ApiCfg,
    ApiTokenCfg,
    GridTlsCfg,
    HttpCfg,
    Listener,
    Role,
    TlsCfg,
)
from controller.config.protection import (
    Celsius,
    ContainerSafetyCfg,
    Duration,
    EscalationCfg,
    FrequencyCfg,
    SafetyCfg,
    container_rules,
)
from controller.config.site import (
    ControlCfg,
    JournalCfg,
    LoggingCfg,
    SiteCfg,
    SiteConfig,
    TelemetryCfg,
)
from controller.core.frequency import FrequencyRules
from controller.core.model import PlanRules
from controller.core.safety import ColdRules, Safety
from controller.core.signals import GridMode, GridPolicy, SourcePolicy
from controller.tls import TlsError, server_context
from drivers.modbus_map import MapError, RegisterMap, load_map
from drivers.registry import MinerRegistry, UnknownDriverError, default_registry

# libyaml's loader parses a 10,000-miner site in a fraction of the pure-Python time.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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
        containers = {
            name: _cold_rules(container_rules(cfg, name), stale) for name in cfg.containers
        }
        return Safety(_cold_rules(container_rules(cfg, None), stale), containers)

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
        rules = container_rules(cfg, name)
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


def listeners(config: SiteConfig) -> dict[str, Listener]:
    """The configured listeners by their place in the config: signals.http, api."""
    found: dict[str, Listener | None] = {"signals.http": config.signals.http, "api": config.api}
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


def _watts(kw: float) -> int:
    # Round limits down: a fraction of a watt must never round a limit up.
    return math.floor(kw * 1000 + 1e-6)


__all__ = [
    "MAX_RANGE",
    "ApiCfg",
    "ApiTokenCfg",
    "Celsius",
    "ConfigError",
    "ContainerSafetyCfg",
    "ControlCfg",
    "CredentialsCfg",
    "Duration",
    "EscalationCfg",
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
    "Role",
    "SafetyCfg",
    "Seconds",
    "SecretRef",
    "SensorCfg",
    "SignalsCfg",
    "SiteCfg",
    "SiteConfig",
    "SourceCfg",
    "TelemetryCfg",
    "TlsCfg",
    "check_listen",
    "describe",
    "expand_hosts",
    "listeners",
    "load",
    "parse",
]
