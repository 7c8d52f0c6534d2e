"""A temperature sensor over Modbus TCP, its layout from a register map."""

from __future__ import annotations

from drivers.errors import ProtocolError
from drivers.meter.modbus_meter import checked
from drivers.modbus_map import RegisterMap, plan_reads
from drivers.transport.modbus import ModbusLink

# Beyond what container sensors measure: a reading outside is a fault code or a broken
# probe (sensors often report -3276.8 or 3276.7, an int16's ends, when disconnected).
TEMPERATURE_RANGE_C = (-60.0, 150.0)


class ModbusTemperature:
    """Reads one temperature (degrees Celsius) through `link`."""

    def __init__(self, name: str, link: ModbusLink, regmap: RegisterMap) -> None:
        if regmap.kind != "sensor":
            raise ValueError(f"{name}: {regmap.source} is a {regmap.kind} map, not a sensor map")
        self.name = name
        self.link = link
        self.regmap = regmap
        self._plan = plan_reads(regmap, ["temperature_c"])

    async def read(self) -> float:
        image = await self.link.read_many(self._plan)
        value = checked(self.name, image, self.regmap, "temperature_c")
        low, high = TEMPERATURE_RANGE_C
        if not low <= value <= high:
            raise ProtocolError(
                self.name,
                "read",
                f"temperature_c: impossible value {value:g} (not {low:g}..{high:g})",
            )
        return value

    async def close(self) -> None:
        await self.link.close()


__all__ = ["ModbusTemperature"]
