"""The `simulation:` section of a site config, validated against the site's miners and devices.

Apart from the farm itself so that `curtaild check-config` can check a simulated farm's
config without loading the simulators (and their protocol libraries)."""

from __future__ import annotations

from pydantic import ValidationError

from controller.config import ConfigError, Loaded, describe
from sim.config import SimulationCfg


def simulation(loaded: Loaded) -> SimulationCfg:
    """The site's `simulation:` section, validated against its miners and devices;
    ConfigError names every problem with its location."""
    try:
        sim = SimulationCfg.model_validate(loaded.config.simulation or {})
    except ValidationError as err:
        problems = [f"simulation.{describe(e)}" for e in err.errors()]
        raise ConfigError(loaded.origin, problems) from None
    miners = {m.id for m in loaded.miners}
    devices = miners | set(loaded.maps)
    problems = [
        f"simulation.faults.{name}: no such miner or Modbus device"
        for name in sim.faults
        if name not in devices
    ]
    problems += [
        f"simulation.missing.{name}: no such miner" for name in sim.missing if name not in miners
    ]
    problems += [
        f"simulation.pools.{name}: no such miner" for name in sim.pools if name not in miners
    ]
    if problems:
        raise ConfigError(loaded.origin, problems)
    return sim
