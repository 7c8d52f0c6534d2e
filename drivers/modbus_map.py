"""Modbus register maps as data: load and validate YAML maps, decode and encode values, and
plan block reads. Pure: no I/O beyond reading a map file, no pymodbus.

A map names the points a driver needs (`outlet_power_w`, `import_kw`, ...) and where each
lives: table, address, type, scale, offset, word order, and for PDUs a per-outlet stride.
Units are fixed by the point's name; `scale` converts the device's raw number into them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard, TypeVar, get_args

import yaml

from drivers.shipped import shipped

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

MAPS_DIR = shipped("modbus")

_MAP_KEYS = frozenset({"name", "kind", "outlets", "byte_order", "word_order", "read_gap", "points"})
_POINT_KEYS = frozenset(
    {
        "table",
        "address",
        "type",
        "scale",
        "offset",
        "word_order",
        "byte_order",
        "per_outlet",
        "stride",
        "writable",
        "on",
        "off",
    }
)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BOOL_KEYS = {True: "on", False: "off"}
_N = TypeVar("_N", bound=str)
_TABLE_NAMES: dict[str, Table] = {t: t for t in TABLES}
_TYPE_NAMES: dict[str, ValueType] = {t: t for t in TYPES}
_KIND_NAMES: dict[str, Kind] = {k: k for k in KINDS}


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


# ---- codec ---------------------------------------------------------------------------


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


# ---- read planning ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: `count` registers or bits from `address`; `what` names the points."""

    table: Table
    address: int
    count: int
    what: str

    @property
    def where(self) -> str:
        return f"{self.table} {self.address}+{self.count}"


def plan_reads(
    regmap: RegisterMap,
    names: Iterable[str],
    outlets: Iterable[int] | None = None,
    *,
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
) -> list[ReadRequest]:
    """Group the named points (per-outlet ones for `outlets`, default all) into as few
    contiguous reads per table as the Modbus limits allow; a value is never split."""
    wanted = list(range(1, regmap.outlets + 1)) if outlets is None else sorted(set(outlets))
    items: dict[Table, dict[int, tuple[int, str, int | None]]] = {t: {} for t in TABLES}
    for name in dict.fromkeys(names):
        point = regmap.point(name)
        for outlet in wanted if point.per_outlet else [None]:
            items[point.table][point.address_of(outlet)] = (point.width, name, outlet)
    requests: list[ReadRequest] = []
    for table in TABLES:
        limit = max_bits if table in BIT_TABLES else max_registers
        group: list[tuple[int, int, str, int | None]] = []
        for address in sorted(items[table]):
            width, name, outlet = items[table][address]
            if group:
                start = group[0][0]
                end = max(a + w for a, w, _, _ in group)
                if address - end > regmap.read_gap or address + width - start > limit:
                    requests.append(_request(table, group))
                    group = []
            group.append((address, width, name, outlet))
        if group:
            requests.append(_request(table, group))
    return requests


def _request(table: Table, group: list[tuple[int, int, str, int | None]]) -> ReadRequest:
    start = group[0][0]
    end = max(a + w for a, w, _, _ in group)
    outlets: dict[str, list[int]] = {}
    for _, _, name, outlet in group:
        outlets.setdefault(name, [])
        if outlet is not None:
            outlets[name].append(outlet)
    what = ", ".join(f"{n}[{_ranges(o)}]" if o else n for n, o in outlets.items())
    return ReadRequest(table, start, end - start, what)


def _ranges(numbers: list[int]) -> str:
    """1,2,3,5 -> '1-3,5'."""
    parts: list[str] = []
    ordered = sorted(numbers)
    first = prev = ordered[0]
    for n in [*ordered[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(first) if first == prev else f"{first}-{prev}")
        if n is not None:
            first = prev = n
    return ",".join(parts)


# ---- loading and validation ---------------------------------------------------------


def shipped_maps() -> list[str]:
    """Names of the maps in config/modbus (file names without .yaml)."""
    return sorted(p.stem for p in MAPS_DIR.glob("*.yaml"))


def map_path(name_or_path: str | Path) -> Path:
    """A shipped map's file for a bare name (`pdu-coil-24`); anything else is a path."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        return Path(name_or_path)
    path = MAPS_DIR / f"{text}.yaml"
    if not path.is_file():
        raise MapError(text, [f"no shipped map of that name; shipped: {', '.join(shipped_maps())}"])
    return path


def load_map(name_or_path: str | Path) -> RegisterMap:
    """Read and validate a map file (or a shipped map by name); MapError lists every problem."""
    path = map_path(name_or_path)
    try:
        text = path.read_text()
    except OSError as err:
        raise MapError(str(path), [f"cannot read the file: {err.strerror or err}"]) from None
    return parse_map(text, source=str(path))


def parse_map(text: str, *, source: str = "<map>") -> RegisterMap:
    """Validate map text (YAML)."""
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader, C or Python
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise MapError(source, [f"{where}not valid YAML: {getattr(err, 'problem', err)}"]) from None
    if not isinstance(data, dict):
        raise MapError(source, ["the file must be a mapping with name, kind and points"])
    problems: list[str] = []
    regmap = _build(data, source, problems)
    if problems or regmap is None:
        raise MapError(source, problems)
    return regmap


def _build(data: dict[str, Any], source: str, problems: list[str]) -> RegisterMap | None:
    problems.extend(f"unknown key {k!r}" for k in sorted(set(data) - _MAP_KEYS, key=str))
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append("name: required, a non-empty string")
    kind = _named(data.get("kind"), _KIND_NAMES)
    if kind is None:
        problems.append(f"kind: must be one of {', '.join(KINDS)}, not {data.get('kind')!r}")
        return None
    outlets = _outlets(kind, data, problems)
    read_gap = data.get("read_gap", 0)
    if not _is_int(read_gap) or not 0 <= read_gap <= MAX_READ_REGISTERS:
        problems.append(f"read_gap: an integer 0..{MAX_READ_REGISTERS}")
        read_gap = 0
    defaults = {
        key: _order(key, data.get(key, "big"), key, problems)
        for key in ("word_order", "byte_order")
    }
    raw_points = data.get("points")
    if not isinstance(raw_points, dict) or not raw_points:
        problems.append("points: required, a mapping of point name to its definition")
        return None
    points: dict[str, Point] = {}
    for point_name, spec in raw_points.items():
        point = _point(kind, str(point_name), spec, defaults, problems)
        if point is not None:
            points[point.name] = point
    problems.extend(
        f"points.{r}: required in a {kind} map, missing"
        for r in REQUIRED[kind]
        if r not in raw_points
    )
    if kind == "pdu" and "outlet_switch" not in raw_points:
        state = points.get("outlet_state")
        if state is not None and not state.writable:
            problems.append(
                "points.outlet_state: read-only and there is no outlet_switch; "
                "make outlet_state writable or add an outlet_switch point"
            )
    _check_layout(points, outlets, problems)
    if problems or not isinstance(name, str):
        return None
    return RegisterMap(name, kind, points, source, outlets, read_gap)


def _outlets(kind: Kind, data: dict[str, Any], problems: list[str]) -> int:
    outlets = data.get("outlets")
    if kind != "pdu":
        if "outlets" in data:
            problems.append(f"outlets: only PDU maps have outlets, not a {kind} map")
        return 0
    if not _is_int(outlets) or not 1 <= outlets <= MAX_OUTLETS:
        problems.append(f"outlets: a PDU map needs an outlet count 1..{MAX_OUTLETS}")
        return 0
    return outlets


def _order(key: str, value: object, where: str, problems: list[str]) -> Order:
    if value == "little":
        return "little"
    if value != "big":
        problems.append(f"{where}: {key} must be big or little, not {value!r}")
    return "big"


def _point(
    kind: Kind, name: str, spec: object, defaults: dict[str, Order], problems: list[str]
) -> Point | None:
    where = f"points.{name}"
    if name not in POINTS[kind]:
        valid = ", ".join(sorted(POINTS[kind]))
        problems.append(f"{where}: unknown point for a {kind} map; known: {valid}")
        return None
    if not isinstance(spec, dict):
        problems.append(f"{where}: must be a mapping (table, address, type, ...)")
        return None
    # YAML 1.1 reads the keys `on` and `off` as true and false; take them back as names.
    keys = {_BOOL_KEYS.get(k, k) if isinstance(k, bool) else k: v for k, v in spec.items()}
    before = len(problems)
    problems.extend(f"{where}: unknown key {k!r}" for k in sorted(set(keys) - _POINT_KEYS, key=str))
    basics = _basics(where, keys, problems)
    if basics is None:
        return None
    table, address, vtype = basics
    scale, offset = _scaling(where, keys, vtype, problems)
    word_order = _order(
        "word_order", keys.get("word_order", defaults["word_order"]), where, problems
    )
    byte_order = _order(
        "byte_order", keys.get("byte_order", defaults["byte_order"]), where, problems
    )
    if "word_order" in keys and WIDTH[vtype] < 2:  # noqa: PLR2004 - a word order needs two
        problems.append(f"{where}: word_order applies to multi-register types, not {vtype}")
    if "byte_order" in keys and vtype == "bool":
        problems.append(f"{where}: byte_order does not apply to bool")
    per_outlet, stride = _repetition(where, name, keys, vtype, problems)
    writable = _switching(where, name, keys, table=table, vtype=vtype, problems=problems)
    if len(problems) > before:
        return None
    return Point(
        name=name,
        table=table,
        address=address,
        type=vtype,
        scale=scale,
        offset=offset,
        word_order=word_order,
        byte_order=byte_order,
        per_outlet=per_outlet,
        stride=stride,
        writable=writable,
        on=keys.get("on"),
        off=keys.get("off"),
    )


def _basics(
    where: str, keys: dict[Any, Any], problems: list[str]
) -> tuple[Table, int, ValueType] | None:
    table = _named(keys.get("table"), _TABLE_NAMES)
    vtype = _named(keys.get("type"), _TYPE_NAMES)
    address = keys.get("address")
    if table is None:
        problems.append(
            f"{where}: table must be one of {', '.join(TABLES)}, not {keys.get('table')!r}"
        )
    if vtype is None:
        problems.append(
            f"{where}: type must be one of {', '.join(TYPES)}, not {keys.get('type')!r}"
        )
    if not _is_int(address) or not 0 <= address <= MAX_ADDRESS:
        problems.append(f"{where}: address must be an integer 0..{MAX_ADDRESS}, not {address!r}")
        return None
    if table is None or vtype is None:
        return None
    if table in BIT_TABLES and vtype != "bool":
        problems.append(f"{where}: a {table} holds bits; type must be bool, not {vtype}")
    if table not in BIT_TABLES and vtype == "bool":
        problems.append(f"{where}: bool is for coil/discrete; a {table} register needs a number")
    return table, address, vtype


def _scaling(
    where: str, keys: dict[Any, Any], vtype: ValueType, problems: list[str]
) -> tuple[float, float]:
    scale, offset = keys.get("scale", 1.0), keys.get("offset", 0.0)
    if vtype == "bool" and ("scale" in keys or "offset" in keys):
        problems.append(f"{where}: scale and offset do not apply to bool")
    if not _is_number(scale) or not math.isfinite(scale) or scale == 0:
        problems.append(f"{where}: scale must be a finite, nonzero number, not {scale!r}")
        scale = 1.0
    if not _is_number(offset) or not math.isfinite(offset):
        problems.append(f"{where}: offset must be a finite number, not {offset!r}")
        offset = 0.0
    return float(scale), float(offset)


def _repetition(
    where: str, name: str, keys: dict[Any, Any], vtype: ValueType, problems: list[str]
) -> tuple[bool, int]:
    width = WIDTH[vtype]
    per_outlet = keys.get("per_outlet", False)
    if not isinstance(per_outlet, bool):
        problems.append(f"{where}: per_outlet must be true or false")
        per_outlet = False
    if name in PER_OUTLET and not per_outlet:
        problems.append(f"{where}: must be per_outlet: true (one value per outlet)")
    if name not in PER_OUTLET and per_outlet:
        problems.append(f"{where}: is one value for the device, not per_outlet")
    stride = keys.get("stride", width)
    if "stride" in keys and not per_outlet:
        problems.append(f"{where}: stride applies to per_outlet points only")
    if not _is_int(stride) or stride < width:
        problems.append(f"{where}: stride {stride!r} is smaller than the type's width {width}")
        stride = width
    return per_outlet, int(stride)


def _switching(
    where: str,
    name: str,
    keys: dict[Any, Any],
    *,
    table: Table,
    vtype: ValueType,
    problems: list[str],
) -> bool:
    writable: object = keys.get("writable", False)
    if not isinstance(writable, bool):
        problems.append(f"{where}: writable must be true or false")
        return False
    if writable and table not in WRITABLE_TABLES:
        problems.append(f"{where}: writable, but a {table} table is read-only")
    if writable and name not in ON_OFF:
        problems.append(f"{where}: only outlet_state and outlet_switch can be writable")
    if name == "outlet_switch" and not writable:
        problems.append(f"{where}: a switch must be writable: true")
    if name in ON_OFF and vtype != "bool":
        _check_codes(where, vtype, keys.get("on"), keys.get("off"), problems)
    elif "on" in keys or "off" in keys:
        problems.append(f"{where}: on/off values are for register-based on/off points only")
    return writable


def _check_codes(
    where: str, vtype: ValueType, on: object, off: object, problems: list[str]
) -> None:
    if vtype not in INTEGER_TYPES:
        problems.append(f"{where}: an on/off register needs an integer type, not {vtype}")
        return
    if on is None or off is None:
        problems.append(f"{where}: a register-based on/off point needs both on: and off: values")
        return
    probe = Point("probe", "holding", 0, vtype)
    for key, code in (("on", on), ("off", off)):
        if not isinstance(code, int) or isinstance(code, bool):
            problems.append(f"{where}: {key} must be an integer, not {code!r}")
            return
        try:
            encode_raw(probe, code)
        except CodecError:
            problems.append(f"{where}: {key} value {code} does not fit {vtype}")
    if on == off:
        problems.append(f"{where}: on and off must differ (both {on})")


def _check_layout(points: dict[str, Point], outlets: int, problems: list[str]) -> None:
    """Every register or bit within 0..65535, and no two points sharing one."""
    owner: dict[tuple[Table, int], str] = {}
    reported: set[tuple[str, str]] = set()
    for point in points.values():
        numbers: list[int | None] = list(range(1, outlets + 1)) if point.per_outlet else [None]
        if point.per_outlet and not numbers:
            continue
        last = point.address_of(numbers[-1]) + point.width - 1
        if last > MAX_ADDRESS:
            which = f"outlet {numbers[-1]} " if point.per_outlet else ""
            problems.append(
                f"points.{point.name}: {which}ends at {point.table} {last}, beyond {MAX_ADDRESS}"
            )
            continue
        for outlet in numbers:
            for address in _span(point, outlet):
                other = owner.setdefault((point.table, address), point.name)
                if other != point.name and (other, point.name) not in reported:
                    reported.add((other, point.name))
                    problems.append(
                        f"points.{point.name}: {point.table} {address} overlaps points.{other}"
                    )


def _span(point: Point, outlet: int | None) -> Iterator[int]:
    start = point.address_of(outlet)
    return iter(range(start, start + point.width))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _named(value: object, names: Mapping[str, _N]) -> _N | None:
    return names.get(value) if isinstance(value, str) else None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


__all__ = [
    "BIT_TABLES",
    "MAPS_DIR",
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "CodecError",
    "Image",
    "Kind",
    "MapError",
    "Order",
    "Point",
    "ReadRequest",
    "RegisterMap",
    "Table",
    "ValueType",
    "decode_number",
    "decode_state",
    "encode_number",
    "encode_raw",
    "encode_state",
    "load_map",
    "map_path",
    "parse_map",
    "plan_reads",
    "shipped_maps",
]
