"""A switched PDU over Modbus TCP, its layout from a register map.

Switching is checked by reading the outlet back: its state, and when cut, its power. A PDU
that acknowledges a cut but keeps the outlet live shows it only in the power it measures.
"""

from __future__ import annotations

import math

from drivers import readback
from drivers.errors import ProtocolError, UnsupportedError, VerificationError
from drivers.modbus_map import CodecError, Image, Point, RegisterMap, encode_state, plan_reads
from drivers.transport.modbus import ModbusLink
from drivers.types import PduOutlet, PduReading

# An outlet may read a few watts below zero (sensor offset) and still be taken as 0 W.
NEGATIVE_TOLERANCE_W = 5.0
# What a cut outlet may still show: PDU current sensors read a little noise at no load.
OFF_POWER_W = 20.0
_READ = ("outlet_state", "outlet_power_w", "total_power_w")


class ModbusPdu:
    """Reads and switches the outlets of one PDU through `link`."""

    def __init__(
        self,
        name: str,
        link: ModbusLink,
        regmap: RegisterMap,
        *,
        readback_attempts: int = readback.ATTEMPTS,
        readback_interval_s: float = readback.INTERVAL_S,
    ) -> None:
        if regmap.kind != "pdu":
            raise ValueError(f"{name}: {regmap.source} is a {regmap.kind} map, not a PDU map")
        self.name = name
        self.link = link
        self.regmap = regmap
        self.readback_attempts = readback_attempts
        self.readback_interval_s = readback_interval_s
        self._plan = plan_reads(regmap, _READ)

    @property
    def outlet_count(self) -> int:
        return self.regmap.outlets

    async def read(self) -> PduReading:
        """Every outlet's state and power, and the PDU's total, in as few reads as fit."""
        image = await self.link.read_many(self._plan)
        outlets = tuple(self._outlet(image, n, "read") for n in range(1, self.regmap.outlets + 1))
        total = self._power(image, self.regmap.point("total_power_w"), None, "read")
        return PduReading(outlets, total)

    async def read_outlet(self, outlet: int) -> PduOutlet:
        self._check_outlet(outlet, "read")
        image = await self.link.read_many(
            plan_reads(self.regmap, ("outlet_state", "outlet_power_w"), [outlet])
        )
        return self._outlet(image, outlet, "read")

    async def switch(self, outlet: int, on: bool) -> PduOutlet:
        """Switch `outlet` (from 1) and read it back; VerificationError if it did not act."""
        op = f"switch outlet {outlet} {'on' if on else 'off'}"
        self._check_outlet(outlet, op)
        point = self.regmap.switch_point
        await self.link.write(
            point.table,
            point.address_of(outlet),
            encode_state(point, on),
            what=point.label(outlet),
        )

        def acted(seen: PduOutlet) -> bool:
            # A cut outlet must also stop drawing; a restored one may draw nothing yet.
            return seen.on == on and (on or seen.power_w <= OFF_POWER_W)

        seen, done = await readback.until(
            lambda: self.read_outlet(outlet),
            acted,
            attempts=self.readback_attempts,
            interval_s=self.readback_interval_s,
        )
        if not done:
            if seen.on != on:
                detail = f"outlet_state[{outlet}] still reads {'on' if seen.on else 'off'}"
            else:
                detail = f"outlet_state[{outlet}] reads off but it still draws {seen.power_w:.0f} W"
            raise VerificationError(self.name, op, detail)
        return seen

    async def close(self) -> None:
        await self.link.close()

    def _check_outlet(self, outlet: int, op: str) -> None:
        if not 1 <= outlet <= self.regmap.outlets:
            raise UnsupportedError(
                self.name, op, f"no outlet {outlet}: the map has outlets 1..{self.regmap.outlets}"
            )

    def _outlet(self, image: Image, outlet: int, op: str) -> PduOutlet:
        state = self.regmap.point("outlet_state")
        try:
            on = image.state(state, outlet)
        except CodecError as err:
            raise ProtocolError(self.name, op, str(err)) from None
        power = self._power(image, self.regmap.point("outlet_power_w"), outlet, op)
        return PduOutlet(outlet, on, power)

    def _power(self, image: Image, point: Point, outlet: int | None, op: str) -> float:
        try:
            value = image.number(point, outlet)
        except CodecError as err:
            raise ProtocolError(self.name, op, str(err)) from None
        if not math.isfinite(value) or value < -NEGATIVE_TOLERANCE_W:
            raise ProtocolError(self.name, op, f"{point.label(outlet)}: impossible value {value}")
        return max(0.0, value)


__all__ = ["ModbusPdu"]
