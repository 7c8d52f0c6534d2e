"""Builds a simulated farm from a site config (sim/ must not import the controller): its
miners, and the PDUs, site meter and ambient sensors the config names, wired to the
miners' physics and the containers' simulated ambient."""

from __future__ import annotations

import random
from collections.abc import Callable

from controller.config import Loaded
from demo.simulation import simulation
from sim.config import SimPoolCfg
from sim.farm import SimFarm, SimMinerSpec
from sim.faults import Fault, FaultState
from sim.modbus import EmptyOutlet, OutletPort, SimMeter, SimPdu, SimSensor
from sim.pools import SimPool


def farm_from_config(loaded: Loaded, time_fn: Callable[[], float]) -> SimFarm:
    """Every configured miner simulated at its configured address, with its PDUs (each
    behind a breaker), the meter and the containers' temperature sensors."""
    sim = simulation(loaded)
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
            missing=frozenset(sim.missing.get(m.id, ())),
            pools=_pools(sim.pools[m.id]) if m.id in sim.pools else None,
        )
        for m in loaded.miners
    ]
    farm = SimFarm(
        specs,
        time_fn=time_fn,
        ambient_c=dict(sim.ambient_c),
        default_ambient_c=sim.default_ambient_c,
        seed=sim.seed,
    )
    config = loaded.config
    plugged = {plug: miner for miner, plug in loaded.outlets.items()}
    for pdu in config.pdus:
        regmap = loaded.maps[pdu.id]
        ports: list[OutletPort] = [
            farm.outlet(plugged[pdu.id, n]) if (pdu.id, n) in plugged else EmptyOutlet()
            for n in range(1, regmap.outlets + 1)
        ]
        farm.add_device(
            pdu.id,
            SimPdu(
                pdu.id,
                pdu.host,
                pdu.port,
                regmap,
                ports,
                unit=pdu.unit,
                fault=FaultState(sim.faults.get(pdu.id, Fault.NONE)),
                rng=random.Random(f"{sim.seed}:{pdu.id}"),  # noqa: S311 - simulation
                # The farm's clock: inrush is judged on the time the miners live in.
                time_fn=time_fn,
                breaker_max_on=sim.breaker.max_switch_on,
                breaker_window_s=sim.breaker.window_s,
            ),
        )
    for sensor in config.sensors:
        farm.add_device(
            sensor.id,
            SimSensor(
                sensor.id,
                sensor.host,
                sensor.port,
                loaded.maps[sensor.id],
                temperature_c=_ambient(farm, sensor.container),
                unit=sensor.unit,
                fault=FaultState(sim.faults.get(sensor.id, Fault.NONE)),
                time_fn=time_fn,
            ),
        )
    meter = config.meter
    if meter is not None:
        m = sim.meter
        generation_w = m.generation_kw * 1000
        farm.add_device(
            meter.id,
            SimMeter(
                meter.id,
                meter.host,
                meter.port,
                loaded.maps[meter.id],
                load_w=farm.total_power_w,
                time_fn=time_fn,
                base_load_w=m.base_load_kw * 1000,
                noise_w=m.noise_kw * 1000,
                update_interval_s=m.update_interval_s,
                generation_w=(lambda: generation_w) if generation_w else None,
                nominal_hz=config.frequency.nominal_hz if config.frequency else 50.0,
                seed=sim.seed,
                unit=meter.unit,
                fault=FaultState(sim.faults.get(meter.id, Fault.NONE)),
            ),
        )
    return farm


def _pools(rows: list[SimPoolCfg]) -> tuple[SimPool, ...]:
    return tuple(SimPool(p.url, p.user, p.password, p.enabled, p.alive) for p in rows)


def _ambient(farm: SimFarm, container: str) -> Callable[[], float]:
    """The container's ambient, read live so scripted changes show at the sensor."""
    return lambda: farm.ambient_of(container)
