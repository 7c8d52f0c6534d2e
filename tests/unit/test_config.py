"""Config: valid sites load; every problem is reported with its location; check-config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import cli
from controller.config import ConfigError, expand_hosts, load, parse
from demo import winter as demo_winter
from demo.simulation import simulation
from tests.conftest import KEY_ENV, load_site, site_dict

REPO = Path(__file__).resolve().parents[2]


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse(yaml.safe_dump(data))
    return err.value.problems


def test_config_example_configs_are_valid() -> None:
    # Secrets of the real-site example live on the edge box, not here.
    paths = sorted((REPO / "config").glob("*.yaml"))
    assert {p.name for p in paths} >= {"site.example.yaml", "sim-farm.yaml"}
    for path in paths:
        loaded = load(path, resolve_secrets=False)
        assert loaded.miners, path


def test_config_demo_farm_mixes_every_family(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURTAILD_DEMO_KEY_KEGOC", "x")
    loaded = load(REPO / "config" / "sim-farm.yaml")
    assert len(loaded.miners) == 300
    assert {m.container for m in loaded.miners} == {"c1", "c2"}
    assert {m.driver for m in loaded.miners} == {
        "luxos",
        "braiins-os",
        "whatsminer",
        "whatsminer-v2",
        "antminer-stock",
    }
    assert all(m.host.startswith("127.") for m in loaded.miners)


def test_config_ranges_expand_with_ids_and_default_port(tmp_path: Path) -> None:
    data = site_dict(tmp_path, miners=1)
    data["miners"] = [
        {
            "id_pattern": "c7-{n:03d}",
            "hosts": "10.7.0.250-10.7.1.4",
            "first_index": 5,
            "driver": "LuxOS",
            "rated_power_w": 3250,
            "efficiency_j_th": 29.5,
            "container": "c7",
        }
    ]
    loaded = parse(yaml.safe_dump(data))
    assert [m.id for m in loaded.miners] == [f"c7-{n:03d}" for n in range(5, 16)]
    assert loaded.miners[-1].host == "10.7.1.4"
    assert {m.port for m in loaded.miners} == {4028}
    assert loaded.miners[0].driver == "luxos"


def test_config_reports_every_problem_with_its_location(tmp_path: Path) -> None:
    data = site_dict(tmp_path, miners=14)
    data["miners"][3]["host"] = "not a host!"
    data["miners"][12]["rated_power_w"] = -5
    data["miners"][7]["colour"] = "red"
    data["grid"]["margin_kw"] = "lots"
    data["signals"]["sources"][0]["on_stale"] = "panic"
    found = problems(data)
    assert any(p.startswith("miners[3].host: 'not a host!' is neither") for p in found)
    assert any(p.startswith("miners[12].rated_power_w: Input should be greater") for p in found)
    assert "miners[7].colour: unknown key (typo?)" in found
    assert any(p.startswith("grid.margin_kw:") for p in found)
    assert any(p.startswith("signals.sources[0].on_stale:") for p in found)


def test_config_unknown_driver_lists_the_valid_ones(tmp_path: Path) -> None:
    data = site_dict(tmp_path, miners=3)
    data["miners"][2]["driver"] = "antminer-magic"
    [problem] = problems(data)
    assert problem.startswith("miners[2].driver: unknown driver 'antminer-magic'; valid drivers: ")
    listed = problem.rsplit(": ", 1)[1].split(", ")
    assert listed == sorted(listed)
    assert {"luxos", "braiins-os"} <= set(listed)


def test_config_duplicates_are_errors(tmp_path: Path) -> None:
    data = site_dict(tmp_path, miners=3)
    data["miners"][2]["id"] = "m000"
    data["miners"].append({**data["miners"][1], "id": "m999"})
    found = problems(data)
    assert "miners[2]: miner id 'm000' is also used by miners[0]" in found
    assert any(
        p.startswith("miners[3]:") and "is also used by miners[1] (m001)" in p for p in found
    )


def test_config_missing_secret_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    assert problems(site_dict(tmp_path)) == [
        f"signals.sources[0].key: environment variable {KEY_ENV} is not set"
    ]


def test_config_secret_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "kegoc.key"
    secret.write_text("s3cret\n")
    data = site_dict(tmp_path)
    data["signals"]["sources"][0]["key"] = {"file": str(secret)}
    assert parse(yaml.safe_dump(data)).source_keys == {"kegoc": b"s3cret"}
    data["signals"]["sources"][0]["key"] = {"file": str(tmp_path / "missing.key")}
    assert problems(data)[0].startswith("signals.sources[0].key: cannot read")


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("grid", "base_allowance_kw"), 1e9, "grid: base_allowance_kw must not exceed cap_kw"),
        (("signals", "sources"), [], "signals.sources: List should have at least 1 item"),
        (("signals", "http", "listen"), "8480", "signals.http.listen: give host:port"),
    ],
)
def test_config_cross_field_rules(
    tmp_path: Path, path: tuple[str, ...], value: object, expected: str
) -> None:
    data = site_dict(tmp_path)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert any(p.startswith(expected) for p in problems(data))


def test_config_no_signal_transport_is_an_error(tmp_path: Path) -> None:
    data = site_dict(tmp_path, http=False)
    expected = "signals: configure mqtt, http or grid.openadr; otherwise no signal can arrive"
    assert problems(data) == [expected]


def test_config_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse("site:\n  id: [unclosed\n")
    assert err.value.problems[0].startswith("line 3, column 1: not valid YAML")


def test_config_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CURTAILD_GRID__MARGIN_KW", "7.5")
    assert parse(yaml.safe_dump(site_dict(tmp_path))).config.grid.margin_kw == 7.5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("10.0.0.5", "give a range"),
        ("10.0.0.9-10.0.0.1", "comes before"),
        ("10.0.0.1-10.2.0.0", "at most 65536"),
        ("10.0.0.1-banana", "not an IPv4 range"),
    ],
)
def test_config_host_ranges_validate(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand_hosts(spec)


def test_cli_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "site.yaml"
    good.write_text(yaml.safe_dump(site_dict(tmp_path, miners=6)))
    assert cli.main(["check-config", "-c", str(good)]) == 0
    assert "6 miners" in capsys.readouterr().out
    data = site_dict(tmp_path, miners=13)
    data["miners"][12]["host"] = "300.1.1.1.1"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert cli.main(["check-config", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "1 problem(s)" in err
    assert "miners[12].host:" in err


def test_config_staleness_must_outlast_two_polls(tmp_path: Path) -> None:
    data = site_dict(tmp_path)
    data["telemetry"] = {"interval_s": 5, "stale_after_s": 8}
    assert any(
        p.startswith("telemetry.stale_after_s: 8 s is less than two poll intervals")
        for p in problems(data)
    )


def test_config_wake_rate_must_fit_the_largest_miner(tmp_path: Path) -> None:
    data = site_dict(tmp_path, miners=3)
    data["control"]["wake_max_kw_per_s"] = 3.1  # miner m002 is rated 3200 W
    assert any(
        p.startswith("control.wake_max_kw_per_s: 3.1 kW is less than m002's rated")
        for p in problems(data)
    )


def test_config_grant_end_lead_must_cover_the_slowest_ramp(tmp_path: Path) -> None:
    data = site_dict(tmp_path, miners=2, mode="surplus-only")
    data["miners"][1]["driver"] = "antminer-stock"
    data["grid"]["grant_end_lead_s"] = 15
    [problem] = problems(data)
    assert problem.startswith("grid.grant_end_lead_s: 15 s is less than the 30 s antminer-stock")


def test_config_winter_scenario_merged_onto_the_demo_farm_is_valid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CURTAILD_DEMO_KEY_KEGOC", "x")
    base = yaml.safe_load((REPO / "config" / "sim-farm.yaml").read_text())
    overlay = yaml.safe_load(demo_winter.OVERLAY.read_text())
    loaded = parse(yaml.safe_dump(demo_winter.merge(base, overlay)), origin="winter")
    safety = loaded.plan_rules().safety
    assert safety is not None
    assert safety.rules("c1").hard_off_below_c == -20
    assert {s.container for s in loaded.config.sensors} == {"c1", "c2"}
    sim = simulation(loaded)
    assert sim.ambient_c == {"c1": -35, "c2": -35}
    assert sim.faults == {}  # an empty mapping in the overlay replaces the day's faults


def test_config_safety_overrides_per_container_and_names_what_is_wrong(tmp_path: Path) -> None:
    data = site_dict(tmp_path, miners=4)
    data["safety"] = {"floor_kw": 3, "containers": {"c2": {"hard_off_below_c": None}}}
    safety = load_site(data).plan_rules().safety
    assert safety is not None
    assert safety.rules("c1").hard_off_below_c == -10  # the site default
    assert safety.rules("c2").hard_off_below_c is None  # switched off there
    assert safety.rules("c2").floor_w == 3000  # the site's, not overridden
    data["safety"] = {"floor_kw": 7, "containers": {"c9": {"floor_kw": 1}}}
    data["sensors"] = [
        {"id": f"s{i}", "host": "127.0.0.1", "map": "sensor-temp", "container": "c1"}
        for i in range(2)
    ]
    with pytest.raises(ConfigError) as err:
        load_site(data)
    text = str(err.value)
    assert "safety.containers.c9: no miner is in container 'c9'" in text
    assert "safety.floor_kw: 7 kW is more than container c1's" in text
    assert "s1 and s0 both measure container c1" in text


def test_config_an_outlet_count_typo_is_a_located_error_not_a_loader_out_of_memory(
    tmp_path: Path,
) -> None:
    data = site_dict(tmp_path, miners=2)
    data["pdus"] = [
        {
            "id": "pdu-1",
            "host": "10.0.0.9",
            "map": "pdu-coil-24",
            "outlets": [{"pattern": "m{n:03d}", "first": 0, "count": 99_999_999}],
        }
    ]
    with pytest.raises(
        ConfigError, match=r"outlets.*count: Input should be less than or equal to 1024"
    ):
        load_site(data)


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_cli_refuses_a_bad_simulation_section_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    # `run` refuses at load what `check-config` refuses: a simulated farm's own section
    # is checked by both (it is validated apart since the simulator left the product).
    data = site_dict(tmp_path, miners=2)
    data["simulation"]["faults"] = {"no-such-miner": "stall"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert cli.main([command, "-c", str(bad)]) == 2
    assert "no-such-miner" in capsys.readouterr().err


def test_the_auction_source_id_is_reserved(tmp_path: Path) -> None:
    """Uploaded grants are held as auction:<reference>; an OpenADR source named `auction`
    would hold its events under the same ids."""
    data = site_dict(tmp_path)
    data["signals"]["sources"][0]["id"] = "auction"
    with pytest.raises(ConfigError) as caught:
        load_site(data)
    assert any("reserved for uploaded auction schedules" in p for p in caught.value.problems)
