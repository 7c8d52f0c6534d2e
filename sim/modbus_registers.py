"""The register image a simulated Modbus device serves, from its RegisterMap: which
addresses answer, the contiguous blocks that hold them, and values encoded into registers,
saturated at the type's range as real devices do.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from drivers.modbus_map import (
    BIT_TABLES,
    INTEGER_TYPES,
    TABLES,
    CodecError,
    Point,
    Raw,
    RegisterMap,
    Table,
    encode_number,
    encode_raw,
)


def encode_saturated(point: Point, value: float) -> list[int]:
    """The registers for `value`; out of the type's range, saturated as devices do."""
    try:
        return encode_number(point, value)
    except CodecError:
        pass
    raw = (value - point.offset) / point.scale
    if point.type in INTEGER_TYPES:
        bits = 16 * point.width
        lo, hi = (
            (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if point.type[0] == "i" else (0, 2**bits - 1)
        )
        return encode_raw(point, lo if not raw > lo else min(hi, round(raw)))
    return encode_number(point, math.copysign(math.inf, raw) * point.scale + point.offset)


def put_registers(cells: dict[int, Raw], address: int, raw: Sequence[Raw]) -> None:
    """Lay a value's registers into `cells`, from `address` on."""
    for i, value in enumerate(raw):
        cells[address + i] = value


def valid_addresses(regmap: RegisterMap) -> dict[Table, set[int]]:
    """Addresses the device answers: its points', plus the gaps a map lets reads span."""
    valid: dict[Table, set[int]] = {t: set() for t in TABLES}
    for point in regmap.points.values():
        for outlet in range(1, regmap.outlets + 1) if point.per_outlet else [None]:
            first = point.address_of(outlet)
            valid[point.table].update(range(first, first + point.width))
    for table in TABLES:
        if table in BIT_TABLES or not valid[table]:
            continue
        ordered = sorted(valid[table])
        for a, b in itertools.pairwise(ordered):
            if 1 < b - a <= regmap.read_gap + 1:
                valid[table].update(range(a + 1, b))
    return valid


def contiguous_runs(addresses: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of sorted addresses as (start, count)."""
    runs: list[tuple[int, int]] = []
    for a in addresses:
        if runs and a == runs[-1][0] + runs[-1][1]:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((a, 1))
    return runs
