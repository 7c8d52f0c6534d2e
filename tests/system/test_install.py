"""deploy/install.sh into a scratch root, twice: what it creates, that it leaves an
operator's config alone, and that the second run changes nothing and says so."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import KEY, KEY_ENV, site_dict

# Building the virtualenv is a real pip install (about 25 s here); the fixture's set-up
# counts against the first test's timeout.
pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.sh"
VERIFY = REPO / "deploy" / "verify-unit.sh"
FIND_FARM = "from drivers.shipped import shipped; print(shipped('sim-farm.yaml'))"
OPERATOR_EDIT = "\n# the operator's own edit: must survive a reinstall\n"


@dataclass(frozen=True)
class Installed:
    root: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    edited_config: str


def _install(root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CURTAILD_ROOT"}
    return subprocess.run(
        [str(INSTALL), "--root", str(root)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=280,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("root")
    first = _install(root)
    assert first.returncode == 0, first.stdout + first.stderr
    site = root / "etc/curtaild/site.yaml"
    edited = site.read_text() + OPERATOR_EDIT
    site.write_text(edited)
    second = _install(root)
    assert second.returncode == 0, second.stdout + second.stderr
    return Installed(root, first, second, edited)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _entry(path: Path, name: str) -> list[list[str]]:
    return [
        line.split(":") for line in path.read_text().splitlines() if line.startswith(f"{name}:")
    ]


def test_install_creates_config_unit_and_modes(installed: Installed) -> None:
    etc = installed.root / "etc/curtaild"
    assert _mode(etc) == 0o750
    assert _mode(etc / "keys") == 0o750
    assert _mode(etc / "site.yaml") == 0o640
    assert _mode(etc / "curtaild.env") == 0o600  # systemd reads it as root
    unit = installed.root / "etc/systemd/system/curtaild.service"
    assert _mode(unit) == 0o644
    assert unit.read_bytes() == (REPO / "deploy/curtaild.service").read_bytes()
    if os.geteuid() == 0:  # chown is skipped otherwise
        gid = int(_entry(installed.root / "etc/group", "curtaild")[0][2])
        for path in (etc, etc / "keys", etc / "site.yaml"):
            assert (path.stat().st_uid, path.stat().st_gid) == (0, gid), path


def test_install_records_user_and_group_once(installed: Installed) -> None:
    groups = _entry(installed.root / "etc/group", "curtaild")
    users = _entry(installed.root / "etc/passwd", "curtaild")
    assert len(groups) == 1
    assert len(users) == 1
    _, _, uid, gid, _, home, shell = users[0]
    assert int(uid) < 1000  # a system user
    assert gid == groups[0][2]
    assert home == "/var/lib/curtaild"
    assert shell == "/usr/sbin/nologin"


def test_install_never_overwrites_the_operators_config(installed: Installed) -> None:
    site = installed.root / "etc/curtaild/site.yaml"
    assert site.read_text() == installed.edited_config
    assert site.read_text().startswith((REPO / "config/site.example.yaml").read_text())


def test_install_venv_runs_curtaild(installed: Installed) -> None:
    curtaild = installed.root / "opt/curtaild/venv/bin/curtaild"
    result = subprocess.run(
        [str(curtaild), "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "check-config" in result.stdout


def test_install_demo_says_in_one_line_what_it_needs(installed: Installed) -> None:
    """A site's install carries no MQTT broker: `curtaild demo` says how to get one."""
    curtaild = installed.root / "opt/curtaild/venv/bin/curtaild"
    result = subprocess.run(
        [str(curtaild), "demo"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        (
            "curtaild demo embeds an MQTT broker: pip install 'curtaild[demo]' "
            "(or give --mqtt-url for a broker you run)"
        )
    ]


def test_install_sim_says_in_one_line_what_it_needs(installed: Installed) -> None:
    """A site's install carries no simulator libraries (gRPC for Braiins OS+): `curtaild
    sim` says which extra brings them, and checking a simulated farm's config still works."""
    venv = installed.root / "opt/curtaild/venv"
    grpclib = subprocess.run(
        [str(venv / "bin/python"), "-c", "import grpclib"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert grpclib.returncode != 0, "the daemon's install must not need grpclib"
    result = subprocess.run(
        [str(venv / "bin/curtaild"), "sim", "-c", str(REPO / "config/sim-farm.yaml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "curtaild sim runs the simulated farm: pip install 'curtaild[sim]'"
    ]
    env = {**os.environ, "CURTAILD_DEMO_KEY_KEGOC": KEY.decode()}
    check = subprocess.run(
        [str(venv / "bin/curtaild"), "check-config", "-c", str(REPO / "config/sim-farm.yaml")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_install_ships_the_register_maps_and_the_demo_farm(
    installed: Installed, tmp_path: Path
) -> None:
    # A site with a PDU: check-config resolves its shipped register map from the install,
    # not from this checkout (the installed copy is not a checkout).
    data = site_dict(tmp_path, miners=2)
    data["pdus"] = [
        {"id": "pdu-1", "host": "10.0.0.9", "map": "pdu-coil-24", "outlets": {1: "m000"}}
    ]
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    venv = installed.root / "opt/curtaild/venv"
    env = {**os.environ, KEY_ENV: KEY.decode()}
    check = subprocess.run(
        [str(venv / "bin/curtaild"), "check-config", "-c", str(site)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert check.returncode == 0, check.stderr
    found = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "from drivers.shipped import shipped; print(shipped('sim-farm.yaml'))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=tmp_path,
    )
    # The demo's farm, found as `curtaild demo` finds it (DEFAULT_FARM); the simulator's
    # own libraries are an extra (curtaild[sim]), so demo.run is not imported here.
    farm = Path(found.stdout.strip())
    assert farm.is_file()
    assert farm.is_relative_to(venv)


def test_install_second_run_changes_nothing(installed: Installed) -> None:
    assert "changed:" in installed.first.stdout
    assert "changed:" not in installed.second.stdout, installed.second.stdout
    assert "nothing changed" in installed.second.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_install_unit_passes_systemd_analyze_verify(installed: Installed) -> None:
    result = subprocess.run(
        [str(VERIFY), str(installed.root)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
