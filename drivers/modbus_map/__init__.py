"""Modbus register maps as data: load and validate YAML maps, decode and encode values, and
plan block reads. Pure: no I/O beyond reading a map file, no pymodbus.

A map names the points a driver needs (`outlet_power_w`, `import_kw`, ...) and where each
lives: table, address, type, scale, offset, word order, and for PDUs a per-outlet stride.
Units are fixed by the point's name; `scale` converts the device's raw number into them.

The package's rooms: points.py (the vocabulary and the map), codec.py (values to and from
registers), reads.py (block reads), loader.py (YAML in, every problem listed). The names
below are its public face; the modules import each other, never this file.
"""

from drivers.modbus_map.codec import (
    Image,
    decode_number,
    decode_state,
    encode_number,
    encode_raw,
    encode_state,
    from_bytes,
    raw_number,
    to_bytes,
)
from drivers.modbus_map.loader import MAPS_DIR, load_map, map_path, parse_map, shipped_maps
from drivers.modbus_map.points import (
    BIT_TABLES,
    INTEGER_TYPES,
    KINDS,
    MAX_ADDRESS,
    MAX_OUTLETS,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    ON_OFF,
    PER_OUTLET,
    POINTS,
    REQUIRED,
    TABLES,
    TYPES,
    WIDTH,
    WRITABLE_TABLES,
    CodecError,
    Kind,
    MapError,
    Order,
    Point,
    Raw,
    RegisterMap,
    Table,
    ValueType,
)
from drivers.modbus_map.reads import ReadRequest, plan_reads

__all__ = [
    "BIT_TABLES",
    "INTEGER_TYPES",
    "KINDS",
    "MAPS_DIR",
    "MAX_ADDRESS",
    "MAX_OUTLETS",
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "ON_OFF",
    "PER_OUTLET",
    "POINTS",
    "REQUIRED",
    "TABLES",
    "TYPES",
    "WIDTH",
    "WRITABLE_TABLES",
    "CodecError",
    "Image",
    "Kind",
    "MapError",
    "Order",
    "Point",
    "Raw",
    "ReadRequest",
    "RegisterMap",
    "Table",
    "ValueType",
    "decode_number",
    "decode_state",
    "encode_number",
    "encode_raw",
    "encode_state",
    "from_bytes",
    "load_map",
    "map_path",
    "parse_map",
    "plan_reads",
    "raw_number",
    "shipped_maps",
    "to_bytes",
]
