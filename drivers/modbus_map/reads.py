"""Block reads planned from a map: the fewest Modbus requests that cover the points asked for,
within the protocol's per-request limits."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers.modbus_map.points import (
    BIT_TABLES,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    TABLES,
    RegisterMap,
    Table,
)


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
