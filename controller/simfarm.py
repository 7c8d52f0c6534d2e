"""Builds a simulated farm from a site config (drivers/sim must not import the controller)."""

from __future__ import annotations

from collections.abc import Callable

from controller.config import Loaded, SimulationCfg
from drivers.sim.farm import SimFarm, SimMinerSpec
from drivers.sim.faults import Fault


def farm_from_config(loaded: Loaded, time_fn: Callable[[], float]) -> SimFarm:
    """Every configured miner simulated at its configured address."""
    sim = loaded.config.simulation or SimulationCfg()
    specs = [
        SimMinerSpec(
            m.id,
            m.driver,
            m.host,
            m.port,
            m.container,
            m.rated_power_w,
            m.efficiency_j_th,
            sim.start_mode,
            sim.faults.get(m.id, Fault.NONE),
            web_port=m.web_port,
            password=m.password,
        )
        for m in loaded.miners
    ]
    return SimFarm(
        specs,
        time_fn=time_fn,
        ambient_c=dict(sim.ambient_c),
        default_ambient_c=sim.default_ambient_c,
        seed=sim.seed,
    )
