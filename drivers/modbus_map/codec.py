"""Values to and from a point's registers (word and byte order, scale, on/off codes), and
the image of raw values a block read fills."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from drivers.modbus_map.points import (
    INTEGER_TYPES,
    TABLES,
    CodecError,
    Point,
    Raw,
    Table,
    ValueType,
)

_STRUCT: dict[ValueType, str] = {
    "uint16": ">H",
    "int16": ">h",
    "uint32": ">I",
    "int32": ">i",
    "float32": ">f",
    "uint64": ">Q",
    "int64": ">q",
    "float64": ">d",
}


def to_bytes(point: Point, registers: Sequence[int]) -> bytes:
    """The value's bytes, most significant first, after undoing word and byte order."""
    if len(registers) != point.width:
        raise CodecError(
            f"{point.name}: {len(registers)} register(s), the type needs {point.width}"
        )
    words = list(registers)
    if point.word_order == "little":
        words.reverse()
    try:
        raw = b"".join(w.to_bytes(2, "big") for w in words)
    except OverflowError:
        raise CodecError(f"{point.name}: a register value is outside 0..65535") from None
    if point.byte_order == "little":
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return raw


def from_bytes(point: Point, raw: bytes) -> list[int]:
    """Registers for the value's bytes (most significant first), in the point's order."""
    if point.byte_order == "little":
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if point.word_order == "little":
        words.reverse()
    return words


def raw_number(point: Point, registers: Sequence[int]) -> int | float:
    """The unscaled number the registers hold."""
    if point.type == "bool":
        raise CodecError(f"{point.name}: a bool point holds no number")
    value: int | float = struct.unpack(_STRUCT[point.type], to_bytes(point, registers))[0]
    return value


def decode_number(point: Point, registers: Sequence[int]) -> float:
    """The value in the point's unit: raw * scale + offset (may be NaN or inf for floats)."""
    return raw_number(point, registers) * point.scale + point.offset


def encode_number(point: Point, value: float) -> list[int]:
    """Registers holding `value` (in the point's unit)."""
    if point.type == "bool":
        raise CodecError(f"{point.name}: a bool point holds no number")
    exact = isinstance(value, int) and point.scale == 1 and point.offset == 0
    raw = value if exact else (value - point.offset) / point.scale  # ints stay exact
    fmt = _STRUCT[point.type]
    try:
        if point.type in INTEGER_TYPES:
            if not math.isfinite(raw):
                raise CodecError(f"{point.name}: {value} cannot be stored as {point.type}")
            packed = struct.pack(fmt, round(raw))
        else:
            packed = struct.pack(fmt, raw)
    except (struct.error, OverflowError):
        raise CodecError(f"{point.name}: {value} does not fit {point.type}") from None
    return from_bytes(point, packed)


def encode_raw(point: Point, raw: int) -> list[int]:
    """Registers holding an unscaled integer (on/off codes)."""
    try:
        return from_bytes(point, struct.pack(_STRUCT[point.type], raw))
    except (KeyError, struct.error):
        raise CodecError(f"{point.name}: {raw} does not fit {point.type}") from None


def decode_state(point: Point, raw: Sequence[Raw]) -> bool:
    """On/off from a bit, or from a register holding the point's `on` or `off` value."""
    if point.is_bits:
        if len(raw) != 1:
            raise CodecError(f"{point.name}: {len(raw)} bits, expected 1")
        return bool(raw[0])
    value = raw_number(point, [int(r) for r in raw])
    if value == point.on:
        return True
    if value == point.off:
        return False
    raise CodecError(
        f"{point.name}: value {value} is neither on ({point.on}) nor off ({point.off})"
    )


def encode_state(point: Point, on: bool) -> list[int] | list[bool]:
    """What to write (or serve) for on/off."""
    if point.is_bits:
        return [on]
    code = point.on if on else point.off
    if code is None:
        raise CodecError(f"{point.name}: no on/off values")
    return encode_raw(point, code)


class Image:
    """Raw values read from a device, by table and address; decodes points from them."""

    __slots__ = ("_cells",)

    def __init__(self) -> None:
        self._cells: dict[Table, dict[int, Raw]] = {t: {} for t in TABLES}

    def put(self, table: Table, address: int, values: Sequence[Raw]) -> None:
        cells = self._cells[table]
        for i, value in enumerate(values):
            cells[address + i] = value

    def raw(self, point: Point, outlet: int | None = None) -> list[Raw]:
        cells = self._cells[point.table]
        start = point.address_of(outlet)
        try:
            return [cells[a] for a in range(start, start + point.width)]
        except KeyError:
            raise CodecError(f"{point.label(outlet)}: not read") from None

    def number(self, point: Point, outlet: int | None = None) -> float:
        return decode_number(point, [int(r) for r in self.raw(point, outlet)])

    def state(self, point: Point, outlet: int | None = None) -> bool:
        return decode_state(point, self.raw(point, outlet))
