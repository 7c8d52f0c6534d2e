"""Every simulated firmware family, by the driver names it serves."""

from __future__ import annotations

from sim import antminer_stock, braiins_os, luxos, whatsminer
from sim.families import Family


def _by_driver(*families: Family) -> dict[str, Family]:
    found: dict[str, Family] = {}
    for family in families:
        for driver in family.drivers:
            if driver in found:
                raise ValueError(f"simulator for driver {driver!r} is registered twice")
            found[driver] = family
    return found


_FAMILIES = _by_driver(luxos.FAMILY, braiins_os.FAMILY, whatsminer.FAMILY, antminer_stock.FAMILY)


def family_for(driver: str) -> Family | None:
    return _FAMILIES.get(driver)


def simulated_drivers() -> list[str]:
    return sorted(_FAMILIES)
