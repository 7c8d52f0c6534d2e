"""A site meter over Modbus TCP, its layout from a register map."""

from __future__ import annotations

import math

from drivers.errors import ProtocolError
from drivers.modbus_map import CodecError, Image, RegisterMap, plan_reads
from drivers.transport.modbus import ModbusLink
from drivers.types import MeterReading

# A power may read this far below zero (meter offset at no flow) and still be taken as 0 W.
NEGATIVE_TOLERANCE_W = 100.0
# Outside this a grid frequency reading is a decoding fault, not the grid: 50 and 60 Hz
# grids trip their generators long before.
FREQUENCY_RANGE_HZ = (40.0, 70.0)


class ModbusMeter:
    """Reads one site meter through `link`."""

    def __init__(self, name: str, link: ModbusLink, regmap: RegisterMap) -> None:
        if regmap.kind != "meter":
            raise ValueError(f"{name}: {regmap.source} is a {regmap.kind} map, not a meter map")
        self.name = name
        self.link = link
        self.regmap = regmap
        names = ["import_kw", "export_kw", "frequency_hz"]
        if regmap.get("generation_kw") is not None:
            names.append("generation_kw")
        self._plan = plan_reads(regmap, names)

    async def read(self) -> MeterReading:
        image = await self.link.read_many(self._plan)
        has_generation = self.regmap.get("generation_kw") is not None
        return MeterReading(
            import_w=self._power_w(image, "import_kw"),
            export_w=self._power_w(image, "export_kw"),
            frequency_hz=self._frequency(image),
            generation_w=self._power_w(image, "generation_kw") if has_generation else None,
        )

    async def close(self) -> None:
        await self.link.close()

    def _power_w(self, image: Image, name: str) -> float:
        value = 1000 * checked(self.name, image, self.regmap, name)
        if value < -NEGATIVE_TOLERANCE_W:
            raise ProtocolError(self.name, "read", f"{name}: impossible value {value / 1000} kW")
        return max(0.0, value)

    def _frequency(self, image: Image) -> float:
        value = checked(self.name, image, self.regmap, "frequency_hz")
        low, high = FREQUENCY_RANGE_HZ
        if not low <= value <= high:
            raise ProtocolError(
                self.name, "read", f"frequency_hz: impossible value {value} (not {low:g}..{high:g})"
            )
        return value


def checked(device: str, image: Image, regmap: RegisterMap, name: str) -> float:
    """A point's finite value, or a ProtocolError naming the device and the point."""
    try:
        value = image.number(regmap.point(name))
    except CodecError as err:
        raise ProtocolError(device, "read", str(err)) from None
    if not math.isfinite(value):
        raise ProtocolError(device, "read", f"{name}: impossible value {value}")
    return value


__all__ = ["ModbusMeter", "checked"]
