"""The checks across sections, run once the file has validated: Modbus devices and outlet
wiring against the miners, cold-weather floors the containers can hold, settings that
misbehave together, and the listeners' TLS files."""

from __future__ import annotations

from pathlib import Path

from controller.config.devices import ModbusDeviceCfg, PduCfg
from controller.config.listeners import Listener
from controller.config.loaded import MinerConfig
from controller.config.protection import container_rules
from controller.config.site import SiteConfig
from controller.core.signals import GridMode
from controller.tls import TlsError, TlsFiles, client_context, server_context
from drivers.modbus_map import MapError, RegisterMap, load_map
from drivers.registry import default_registry


def modbus_devices(
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


def cross_checks(config: SiteConfig, miners: list[MinerConfig]) -> list[str]:
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


def listeners(config: SiteConfig) -> dict[str, Listener]:
    """The configured listeners by their place in the config: signals.http, api."""
    found: dict[str, Listener | None] = {"signals.http": config.signals.http, "api": config.api}
    return {name: listener for name, listener in found.items() if listener is not None}


def listener_tls(config: SiteConfig) -> list[str]:
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


def openadr_checks(config: SiteConfig, *, resolve_secrets: bool) -> list[str]:
    """grid.openadr names a configured source, polls faster than that source's heartbeat
    timeout, only its source may go without a key, and (when secrets are resolved) the
    VEN's certificate, key and the VTN's CA load."""
    problems: list[str] = []
    openadr = config.grid.openadr
    ids = [s.id for s in config.signals.sources]
    if openadr is not None and openadr.source not in ids:
        problems.append(
            f"grid.openadr.source: {openadr.source!r} is not one of signals.sources "
            f"({', '.join(ids)})"
        )
    for i, source in enumerate(config.signals.sources):
        timeout = source.heartbeat_timeout_s
        if (
            openadr is not None
            and source.id == openadr.source
            and timeout is not None
            and openadr.poll_interval_s >= timeout
        ):
            problems.append(
                f"grid.openadr.poll_interval_s: {openadr.poll_interval_s:g} s must be "
                f"below signals.sources[{i}].heartbeat_timeout_s ({timeout:g} s): each "
                "poll is the VTN's heartbeat, so a slower poll makes it stale between polls"
            )
        if source.key is None and (openadr is None or source.id != openadr.source):
            problems.append(
                f"signals.sources[{i}].key: required (only grid.openadr's source, whose VTN "
                "is authenticated by TLS, may go without)"
            )
    if openadr is not None and resolve_secrets:
        password = openadr.key_password.resolve if openadr.key_password is not None else None
        try:
            client_context(
                TlsFiles(openadr.cert, openadr.key, password),
                openadr.vtn_ca,
                check_hostname=openadr.check_hostname,
            )
        except TlsError as err:
            problems.extend(f"grid.openadr.{key}: {detail}" for key, detail in err.problems)
    return problems
