"""Register maps: validation with located errors, the codec's known vectors, read planning."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from drivers.modbus_map import (
    CodecError,
    Image,
    MapError,
    Point,
    ReadRequest,
    RegisterMap,
    decode_number,
    decode_state,
    encode_number,
    encode_state,
    load_map,
    map_path,
    parse_map,
    plan_reads,
    shipped_maps,
)

GOOD_PDU = """\
name: test pdu
kind: pdu
outlets: 24
points:
  outlet_state:   {table: coil, address: 0, per_outlet: true, type: bool, writable: true}
  outlet_power_w: {table: input, address: 100, per_outlet: true, type: uint16}
  total_power_w:  {table: input, address: 200, type: uint32, scale: 0.1}
"""
GOOD_METER = """\
name: test meter
kind: meter
points:
  import_kw:    {table: input, address: 0, type: float32}
  export_kw:    {table: input, address: 2, type: float32}
  frequency_hz: {table: input, address: 4, type: float32}
"""


COIL_SWITCH = (
    "  outlet_switch: {table: coil, address: 0, per_outlet: true, type: bool, writable: true}\n"
)


def pdu_with(**points: str) -> str:
    """GOOD_PDU with points replaced (a value of '' removes the point)."""
    lines = GOOD_PDU.splitlines()
    out = [ln for ln in lines if not any(ln.strip().startswith(f"{n}:") for n in points)]
    out += [f"  {n}: {spec}" for n, spec in points.items() if spec]
    return "\n".join(out) + "\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site-pdu.yaml"
    path.write_text(text)
    return path


# ---- shipped maps ----


def test_map_every_shipped_map_loads() -> None:
    names = shipped_maps()
    assert {"pdu-coil-24", "pdu-register-16", "meter-float32", "sensor-temp"} <= set(names)
    for name in names:
        regmap = load_map(name)
        assert regmap.name
        assert regmap.source.endswith(f"{name}.yaml")


def test_map_shipped_pdus_have_different_layouts() -> None:
    coil, register = load_map("pdu-coil-24"), load_map("pdu-register-16")
    assert (coil.outlets, register.outlets) == (24, 16)
    assert coil.switch_point.name == "outlet_state"
    assert coil.switch_point.table == "coil"
    assert register.switch_point.name == "outlet_switch"
    assert register.switch_point.table == "holding"
    assert (register.switch_point.on, register.switch_point.off) == (1, 2)
    power = register.point("outlet_power_w")
    assert (power.type, power.word_order, power.stride) == ("float32", "little", 4)


def test_map_unknown_shipped_name_lists_the_shipped_ones() -> None:
    with pytest.raises(MapError) as caught:
        map_path("pdu-nonesuch")
    assert "pdu-nonesuch" in str(caught.value)
    assert "pdu-coil-24" in str(caught.value)


def test_map_a_path_is_taken_as_a_path(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_PDU)
    assert map_path(str(path)) == path
    assert load_map(path).outlets == 24


def test_map_unreadable_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(MapError, match=r"(?s)missing\.yaml.*cannot read"):
        load_map(tmp_path / "missing.yaml")


# ---- validation: each bad input names the file and the point ----

BAD = [
    pytest.param(
        pdu_with(total_power_w="{table: input, address: 110, type: uint32}"),
        ["points.total_power_w", "input 110 overlaps points.outlet_power_w"],
        id="overlap",
    ),
    pytest.param(
        pdu_with(total_power_w="{table: input, address: 123, type: uint32}"),
        ["points.total_power_w", "input 123 overlaps points.outlet_power_w"],
        id="overlap-last-outlet",
    ),
    pytest.param(
        pdu_with(outlet_power_w="{table: input, address: 65530, per_outlet: true, type: uint16}"),
        ["points.outlet_power_w", "outlet 24 ends at input 65553, beyond 65535"],
        id="per-outlet-beyond-65535",
    ),
    pytest.param(
        pdu_with(total_power_w="{table: input, address: 65535, type: uint32}"),
        ["points.total_power_w", "ends at input 65536"],
        id="wide-value-beyond-65535",
    ),
    pytest.param(
        pdu_with(total_power_w="{table: input, address: 70000, type: uint32}"),
        ["points.total_power_w", "address must be an integer 0..65535"],
        id="address-out-of-range",
    ),
    pytest.param(
        pdu_with(total_power_w="{table: register, address: 200, type: uint32}"),
        ["points.total_power_w", "table must be one of", "'register'"],
        id="unknown-table",
    ),
    pytest.param(
        pdu_with(total_power_w="{table: input, address: 200, type: uint8}"),
        ["points.total_power_w", "type must be one of", "'uint8'"],
        id="unknown-type",
    ),
    pytest.param(
        pdu_with(total_power_w="{table: input, address: 200, type: uint32, scal: 2}"),
        ["points.total_power_w", "unknown key 'scal'"],
        id="unknown-point-key",
    ),
    pytest.param(GOOD_PDU + "vendor: acme\n", ["unknown key 'vendor'"], id="unknown-map-key"),
    pytest.param(
        pdu_with(voltage_v="{table: input, address: 300, type: uint16}"),
        ["points.voltage_v", "unknown point for a pdu map", "outlet_power_w"],
        id="unknown-point",
    ),
    pytest.param(
        pdu_with(total_power_w="{table: input, address: 200, type: bool}"),
        ["points.total_power_w", "bool is for coil/discrete"],
        id="bool-in-registers",
    ),
    pytest.param(
        pdu_with(
            outlet_state="{table: coil, address: 0, per_outlet: true, type: uint16, writable: true}"
        ),
        ["points.outlet_state", "a coil holds bits; type must be bool"],
        id="number-in-bits",
    ),
    pytest.param(
        pdu_with(total_power_w=""),
        ["points.total_power_w", "required in a pdu map, missing"],
        id="missing-required",
    ),
    pytest.param(
        pdu_with(total_power_w="{table: input, address: 200, type: uint32, scale: 0}"),
        ["points.total_power_w", "scale must be a finite, nonzero number"],
        id="scale-zero",
    ),
    pytest.param(
        pdu_with(total_power_w="{table: input, address: 200, type: uint32, scale: .nan}"),
        ["points.total_power_w", "scale must be a finite, nonzero number"],
        id="scale-nan",
    ),
    pytest.param(
        pdu_with(total_power_w="{table: input, address: 200, type: uint32, scale: lots}"),
        ["points.total_power_w", "scale must be a finite, nonzero number"],
        id="scale-text",
    ),
    pytest.param(
        pdu_with(
            outlet_power_w=(
                "{table: input, address: 100, per_outlet: true, type: uint16, word_order: little}"
            )
        ),
        ["points.outlet_power_w", "word_order applies to multi-register types, not uint16"],
        id="word-order-on-one-register",
    ),
    pytest.param(
        pdu_with(total_power_w="{table: input, address: 200, type: uint32, word_order: middle}"),
        ["points.total_power_w", "word_order must be big or little"],
        id="word-order-unknown",
    ),
    pytest.param(
        pdu_with(
            outlet_power_w=(
                "{table: input, address: 100, per_outlet: true, type: float32, stride: 1}"
            )
        ),
        ["points.outlet_power_w", "stride 1 is smaller than the type's width 2"],
        id="stride-below-width",
    ),
    pytest.param(
        pdu_with(
            outlet_state=(
                "{table: discrete, address: 0, per_outlet: true, type: bool, writable: true}"
            )
        ),
        ["points.outlet_state", "writable, but a discrete table is read-only"],
        id="writable-read-only-table",
    ),
    pytest.param(
        pdu_with(outlet_state="{table: coil, address: 0, per_outlet: true, type: bool}"),
        ["points.outlet_state", "no outlet_switch"],
        id="no-way-to-switch",
    ),
    pytest.param(
        pdu_with(outlet_state="{table: input, address: 0, per_outlet: true, type: uint16}")
        + COIL_SWITCH,
        ["points.outlet_state", "needs both on: and off: values"],
        id="register-state-without-codes",
    ),
    pytest.param(
        pdu_with(
            outlet_state="{table: input, address: 0, per_outlet: true, type: uint16, on: 1, off: 1}"
        )
        + COIL_SWITCH,
        ["points.outlet_state", "on and off must differ"],
        id="same-on-off",
    ),
    pytest.param(
        pdu_with(outlet_switch="{table: holding, address: 500, per_outlet: true, type: uint16}"),
        ["points.outlet_switch", "a switch must be writable: true"],
        id="switch-not-writable",
    ),
    pytest.param(
        pdu_with(total_power_w="{table: holding, address: 200, type: uint32, writable: true}"),
        ["points.total_power_w", "only outlet_state and outlet_switch can be writable"],
        id="writable-measurement",
    ),
    pytest.param(
        pdu_with(total_power_w="{table: input, address: 200, type: uint32, per_outlet: true}"),
        ["points.total_power_w", "one value for the device, not per_outlet"],
        id="total-per-outlet",
    ),
    pytest.param(
        GOOD_PDU.replace("outlets: 24\n", ""),
        ["outlets: a PDU map needs an outlet count"],
        id="pdu-without-outlets",
    ),
    pytest.param(
        GOOD_METER.replace("  frequency_hz: {table: input, address: 4, type: float32}\n", ""),
        ["points.frequency_hz", "required in a meter map, missing"],
        id="meter-missing-frequency",
    ),
    pytest.param(
        GOOD_METER + "outlets: 4\n",
        ["outlets: only PDU maps have outlets"],
        id="meter-with-outlets",
    ),
    pytest.param(
        GOOD_METER.replace("kind: meter", "kind: inverter"),
        ["kind: must be one of pdu, meter, sensor"],
        id="unknown-kind",
    ),
    pytest.param("name: [unclosed\n", ["not valid YAML"], id="not-yaml"),
    pytest.param("- a list\n", ["must be a mapping"], id="not-a-mapping"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_map_rejects_bad_input_naming_file_and_point(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(MapError) as caught:
        load_map(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    for part in expected:
        assert part in message, message


def test_map_lists_every_problem_at_once() -> None:
    text = pdu_with(
        total_power_w="{table: input, address: 200, type: uint32, scale: 0}",
        outlet_power_w="{table: input, address: 100, per_outlet: true, type: uint8}",
    )
    with pytest.raises(MapError) as caught:
        parse_map(text, source="two.yaml")
    assert len(caught.value.problems) == 2
    assert caught.value.source == "two.yaml"


def test_map_on_off_keys_survive_yaml_booleans() -> None:
    """YAML 1.1 reads `on:` and `off:` keys as true and false; the map takes them back."""
    text = pdu_with(
        outlet_state="{table: input, address: 0, per_outlet: true, type: uint16, on: 1, off: 0}"
    )
    text += (
        "  outlet_switch: {table: holding, address: 0, per_outlet: true, type: uint16,"
        " writable: true, on: 0x5A01, off: 0x5A00}\n"
    )
    regmap = parse_map(text)
    assert (regmap.point("outlet_switch").on, regmap.point("outlet_switch").off) == (0x5A01, 0x5A00)


# ---- codec: known vectors ----


def point(vtype: str, **kw: object) -> Point:
    table = "coil" if vtype == "bool" else "holding"
    return Point("x", table, 0, vtype, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("vtype", "order", "value", "registers"),
    [
        ("float32", "big", 230.5, [0x4366, 0x8000]),
        ("float32", "little", 230.5, [0x8000, 0x4366]),
        ("int32", "big", -2, [0xFFFF, 0xFFFE]),
        ("int32", "little", -2, [0xFFFE, 0xFFFF]),
        ("uint32", "big", 0x12345678, [0x1234, 0x5678]),
        ("uint32", "little", 0x12345678, [0x5678, 0x1234]),
        ("int16", "big", -1, [0xFFFF]),
        ("uint16", "big", 65535, [0xFFFF]),
        ("uint64", "big", 0x0102030405060000, [0x0102, 0x0304, 0x0506, 0]),
        ("uint64", "little", 0x0102030405060000, [0, 0x0506, 0x0304, 0x0102]),
        ("int64", "big", -3, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD]),
        ("float64", "big", 1.0, [0x3FF0, 0, 0, 0]),
        ("float64", "little", -2.5, [0, 0, 0, 0xC004]),
    ],
)
def test_codec_known_vectors(vtype: str, order: str, value: float, registers: list[int]) -> None:
    p = point(vtype, word_order=order)
    assert encode_number(p, value) == registers
    assert decode_number(p, registers) == value


def test_codec_byte_order_swaps_within_each_register() -> None:
    p = point("uint32", byte_order="little")
    assert encode_number(p, 0x12345678) == [0x3412, 0x7856]
    assert decode_number(p, [0x3412, 0x7856]) == 0x12345678


def test_codec_scale_and_offset() -> None:
    temp = point("int16", scale=0.1)
    assert decode_number(temp, [0xFE9D]) == pytest.approx(-35.5)  # -355
    assert encode_number(temp, -35.5) == [0xFE9D]
    offset = point("uint16", scale=0.01, offset=-100.0)
    assert decode_number(offset, [15000]) == pytest.approx(50.0)
    assert encode_number(offset, 50.0) == [15000]
    assert encode_number(point("uint16", scale=0.1), 12.34) == [123]  # rounded to the step


def test_codec_float_non_finite_decodes_as_such() -> None:
    p = point("float32")
    nan = list(struct.unpack(">HH", struct.pack(">f", math.nan)))
    assert math.isnan(decode_number(p, nan))
    assert decode_number(p, [0x7F80, 0]) == math.inf


@pytest.mark.parametrize(
    ("vtype", "value"),
    [("uint16", -1), ("uint16", 65536), ("int16", 40000), ("uint32", math.nan), ("float32", 1e39)],
)
def test_codec_encode_out_of_range_raises(vtype: str, value: float) -> None:
    with pytest.raises(CodecError, match="x"):
        encode_number(point(vtype), value)


def test_codec_decode_wrong_register_count_raises() -> None:
    with pytest.raises(CodecError, match="1 register"):
        decode_number(point("float32"), [1])


def test_codec_on_off_states() -> None:
    coil = point("bool")
    assert encode_state(coil, on=True) == [True]
    assert decode_state(coil, [False]) is False
    switch = point("uint16", on=0x5A01, off=0x5A00)
    assert encode_state(switch, on=True) == [0x5A01]
    assert decode_state(switch, [0x5A00]) is False
    with pytest.raises(CodecError, match="neither on"):
        decode_state(switch, [7])


def test_codec_image_decodes_points_by_outlet() -> None:
    regmap = load_map("pdu-register-16")
    image = Image()
    power = regmap.point("outlet_power_w")
    image.put("input", power.address_of(3), encode_number(power, 3250.0))
    assert image.number(power, 3) == pytest.approx(3250.0)
    with pytest.raises(CodecError, match=r"outlet_power_w\[4\]: not read"):
        image.number(power, 4)


# ---- read planning ----


def test_plan_pdu_reads_are_one_request_per_block() -> None:
    plan = plan_reads(load_map("pdu-coil-24"), ["outlet_state", "outlet_power_w", "total_power_w"])
    assert plan == [
        ReadRequest("coil", 0, 24, "outlet_state[1-24]"),
        ReadRequest("input", 100, 24, "outlet_power_w[1-24]"),
        ReadRequest("input", 200, 2, "total_power_w"),
    ]
    assert plan[1].where == "input 100+24"


def test_plan_spans_gaps_the_map_allows() -> None:
    plan = plan_reads(load_map("pdu-register-16"), ["outlet_state", "outlet_power_w"])
    assert plan == [ReadRequest("input", 1000, 64, "outlet_state[1-16], outlet_power_w[1-16]")]


def test_plan_some_outlets() -> None:
    regmap = load_map("pdu-coil-24")
    plan = plan_reads(regmap, ["outlet_state"], [3, 4, 5, 9])
    assert plan == [
        ReadRequest("coil", 2, 3, "outlet_state[3-5]"),
        ReadRequest("coil", 8, 1, "outlet_state[9]"),
    ]


def big_pdu(outlets: int, vtype: str) -> RegisterMap:
    return parse_map(
        f"""
name: big
kind: pdu
outlets: {outlets}
points:
  outlet_state:   {{table: coil, address: 0, per_outlet: true, type: bool, writable: true}}
  outlet_power_w: {{table: holding, address: 0, per_outlet: true, type: {vtype}}}
  total_power_w:  {{table: input, address: 0, type: uint32}}
"""
    )


def test_plan_splits_at_125_registers() -> None:
    plan = plan_reads(big_pdu(200, "uint16"), ["outlet_power_w"])
    assert [(r.address, r.count) for r in plan] == [(0, 125), (125, 75)]
    assert plan[0].what == "outlet_power_w[1-125]"


def test_plan_never_splits_a_value() -> None:
    plan = plan_reads(big_pdu(100, "float32"), ["outlet_power_w"])
    assert [(r.address, r.count) for r in plan] == [(0, 124), (124, 76)]


def test_plan_bits_up_to_2000_and_a_smaller_limit() -> None:
    regmap = big_pdu(256, "uint16")
    assert [(r.address, r.count) for r in plan_reads(regmap, ["outlet_state"])] == [(0, 256)]
    small = plan_reads(regmap, ["outlet_state"], max_bits=100)
    assert [(r.address, r.count) for r in small] == [(0, 100), (100, 100), (200, 56)]
