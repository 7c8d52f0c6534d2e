"""A register map's vocabulary: tables, value types, the points each kind of device knows, and
the validated map itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

Table = Literal["coil", "discrete", "holding", "input"]
ValueType = Literal[
    "bool", "uint16", "int16", "uint32", "int32", "float32", "uint64", "int64", "float64"
]
Kind = Literal["pdu", "meter", "sensor"]
Order = Literal["big", "little"]
Raw = int | bool

TABLES: tuple[Table, ...] = get_args(Table)
TYPES: tuple[ValueType, ...] = get_args(ValueType)
KINDS: tuple[Kind, ...] = get_args(Kind)
BIT_TABLES: frozenset[Table] = frozenset({"coil", "discrete"})
WRITABLE_TABLES: frozenset[Table] = frozenset({"coil", "holding"})
WIDTH: dict[ValueType, int] = {
    "bool": 1,
    "uint16": 1,
    "int16": 1,
    "uint32": 2,
    "int32": 2,
    "float32": 2,
    "uint64": 4,
    "int64": 4,
    "float64": 4,
}
INTEGER_TYPES = frozenset({"uint16", "int16", "uint32", "int32", "uint64", "int64"})

# Modbus limits per request (the spec's PDU size): FC3/FC4 read at most 125 registers,
# FC1/FC2 at most 2000 bits.
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_ADDRESS = 65_535
MAX_OUTLETS = 256

# The points each kind knows; units are in the names. Required ones must be in the map.
POINTS: dict[Kind, frozenset[str]] = {
    "pdu": frozenset({"outlet_state", "outlet_switch", "outlet_power_w", "total_power_w"}),
    "meter": frozenset({"import_kw", "export_kw", "frequency_hz", "generation_kw"}),
    "sensor": frozenset({"temperature_c"}),
}
REQUIRED: dict[Kind, tuple[str, ...]] = {
    "pdu": ("outlet_state", "outlet_power_w", "total_power_w"),
    "meter": ("import_kw", "export_kw", "frequency_hz"),
    "sensor": ("temperature_c",),
}
PER_OUTLET = frozenset({"outlet_state", "outlet_switch", "outlet_power_w"})
ON_OFF = frozenset({"outlet_state", "outlet_switch"})  # points that hold on/off, not numbers


class MapError(Exception):
    """A register map is wrong; `problems` lists every problem with the point it is in."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))
        self.source = source
        self.problems = problems


class CodecError(ValueError):
    """A value cannot be decoded from, or encoded into, a point's registers."""


@dataclass(frozen=True, slots=True)
class Point:
    """One value on the device; per-outlet points repeat every `stride` addresses."""

    name: str
    table: Table
    address: int
    type: ValueType
    scale: float = 1.0
    offset: float = 0.0
    word_order: Order = "big"
    byte_order: Order = "big"
    per_outlet: bool = False
    stride: int = 1
    writable: bool = False
    on: int | None = None  # raw register value meaning "on" (register-based on/off points)
    off: int | None = None

    @property
    def width(self) -> int:
        """Registers (or bits) one value takes."""
        return WIDTH[self.type]

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES

    def address_of(self, outlet: int | None = None) -> int:
        """The first address of the value; `outlet` counts from 1, as printed on PDUs."""
        if not self.per_outlet:
            return self.address
        if outlet is None or outlet < 1:
            raise ValueError(f"{self.name} is per outlet: give an outlet number from 1")
        return self.address + (outlet - 1) * self.stride

    def label(self, outlet: int | None = None) -> str:
        return f"{self.name}[{outlet}]" if self.per_outlet else self.name


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A validated map: what kind of device, its points, and where it was loaded from."""

    name: str
    kind: Kind
    points: Mapping[str, Point]
    source: str = "<map>"
    outlets: int = 0
    read_gap: int = 0  # unused registers a block read may span; the device must answer them

    def point(self, name: str) -> Point:
        try:
            return self.points[name]
        except KeyError:
            raise KeyError(f"{self.source}: no point {name!r}") from None

    def get(self, name: str) -> Point | None:
        return self.points.get(name)

    @property
    def switch_point(self) -> Point:
        """The point a PDU is switched through: `outlet_switch`, else `outlet_state`."""
        return self.points.get("outlet_switch") or self.point("outlet_state")
