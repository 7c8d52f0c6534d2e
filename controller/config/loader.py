"""load() and parse(): config text to Loaded, every problem in it reported at once with
its location. Miner ranges are expanded and secrets resolved here."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from controller.config.checks import cross_checks, listener_tls, modbus_devices, openadr_checks
from controller.config.errors import ConfigError, describe
from controller.config.fields import expand_hosts
from controller.config.loaded import Loaded, MinerConfig
from controller.config.site import SiteConfig
from drivers.registry import MinerRegistry, UnknownDriverError, default_registry

# libyaml's loader parses a 10,000-miner site in a fraction of the pure-Python time.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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
        problems.extend(listener_tls(config))
    problems.extend(cross_checks(config, miners))
    problems.extend(openadr_checks(config, resolve_secrets=resolve_secrets))
    if config.signals.mqtt is None and config.signals.http is None and config.grid.openadr is None:
        problems.append(
            "signals: configure mqtt, http or grid.openadr; otherwise no signal can arrive"
        )
    maps, outlets = modbus_devices(config, miners, origin, problems)
    if problems:
        raise ConfigError(origin, problems)
    return Loaded(config, tuple(miners), keys, mqtt_password, origin, outlets, maps)


def _signal_secrets(
    config: SiteConfig, problems: list[str], *, resolve: bool
) -> tuple[dict[str, bytes], str | None]:
    """HMAC keys per source and the broker password, or problems naming what is missing."""
    keys: dict[str, bytes] = {}
    password = None
    if not resolve:
        return keys, password
    for i, source in enumerate(config.signals.sources):
        if source.key is None:  # openadr_checks says whether it may go without
            continue
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
