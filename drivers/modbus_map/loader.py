"""Maps from YAML: load a shipped map or a file, and validate it, listing every problem with
the point it is in."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

import yaml

from drivers.modbus_map.codec import encode_raw
from drivers.modbus_map.points import (
    BIT_TABLES,
    INTEGER_TYPES,
    KINDS,
    MAX_ADDRESS,
    MAX_OUTLETS,
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
    RegisterMap,
    Table,
    ValueType,
)
from drivers.shipped import shipped

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
