"""Site config for PDUs, the meter and sensors: maps resolved and checked, outlet wiring
checked against the miners, every problem named with its place in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.config import ConfigError
from tests.conftest import load_site, site_dict


def with_pdu(tmp_path: Path, outlets: Any, *, map_name: str = "pdu-coil-24") -> dict[str, Any]:
    data = site_dict(tmp_path, miners=4)
    data["pdus"] = [{"id": "pdu-1", "host": "127.0.0.9", "map": map_name, "outlets": outlets}]
    return data


def problems(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        load_site(data)
    return str(err.value)


def test_outlet_ranges_and_explicit_outlets_wire_miners(tmp_path: Path) -> None:
    loaded = load_site(
        with_pdu(tmp_path, [{"pattern": "m{n:03d}", "first": 0, "first_outlet": 3, "count": 3}])
    )
    assert loaded.outlets == {"m000": ("pdu-1", 3), "m001": ("pdu-1", 4), "m002": ("pdu-1", 5)}
    loaded = load_site(with_pdu(tmp_path, {1: "m003", 16: "m000"}, map_name="pdu-register-16"))
    assert loaded.outlets == {"m003": ("pdu-1", 1), "m000": ("pdu-1", 16)}
    assert loaded.maps["pdu-1"].outlets == 16


def test_wiring_errors_name_the_outlet(tmp_path: Path) -> None:
    text = problems(with_pdu(tmp_path, {25: "m000", 2: "nope", 3: "m001", 4: "m001"}))
    assert "pdus[0].outlets.25: pdu-1 has outlets 1-24" in text
    assert "pdus[0].outlets.2: no miner 'nope'" in text
    assert "pdus[0].outlets.4: m001 is already on pdu-1 outlet 3" in text


def test_a_map_that_does_not_exist_or_does_not_fit_is_named(tmp_path: Path) -> None:
    assert "pdus[0].map" in problems(with_pdu(tmp_path, {1: "m000"}, map_name="no-such-map"))
    assert "maps a meter, not a pdu" in problems(
        with_pdu(tmp_path, {1: "m000"}, map_name="meter-float32")
    )


def test_a_bad_map_file_next_to_the_config_is_reported_with_its_point(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "name: overlapping\nkind: meter\npoints:\n"
        "  import_kw: {table: input, address: 0, type: float32}\n"
        "  export_kw: {table: input, address: 1, type: float32}\n"
        "  frequency_hz: {table: input, address: 70000, type: uint16}\n"
    )
    data = site_dict(tmp_path, miners=2)
    data["meter"] = {"id": "meter", "host": "127.0.0.9", "map": "bad.yaml"}
    path = tmp_path / "site.yaml"
    import yaml  # noqa: PLC0415 - only this test writes a config file

    path.write_text(yaml.safe_dump(data))
    from controller.config import load  # noqa: PLC0415

    with pytest.raises(ConfigError) as err:
        load(path)
    text = str(err.value)
    assert "meter.map" in text
    assert "export_kw" in text  # overlaps import_kw
    assert "frequency_hz" in text  # out of range


def test_two_devices_on_one_address_and_unit_are_refused(tmp_path: Path) -> None:
    data = with_pdu(tmp_path, {1: "m000"})
    data["meter"] = {"id": "meter", "host": "127.0.0.9", "map": "meter-float32"}
    assert "127.0.0.9:502 unit 1 is already pdu-1" in problems(data)


def test_an_outlet_pattern_without_its_index_is_named(tmp_path: Path) -> None:
    assert "pdus[0].outlets" in problems(with_pdu(tmp_path, [{"pattern": "m{x}"}]))
    assert "must contain {n}" in problems(with_pdu(tmp_path, [{"pattern": "m000"}]))
