"""Shared fixtures: a real MQTT broker, site configs on private loopback ranges, fake time."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest
import yaml

from controller.config import Loaded, parse

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
KEY = b"test-key-kegoc-0123456789abcdef"
KEY_ENV = "CURTAILD_TEST_KEY_KEGOC"
# One operator API token per role (the config holds only their SHA-256).
API_TOKENS = {
    "viewer": "viewer-token-6f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5",
    "operator": "operator-token-0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "admin": "admin-token-9f8e7d6c5b4a39281706f5e4d3c2b1a0",
}


def api_section() -> dict[str, Any]:
    """An `api:` config section on a free port with one token per role."""
    return {
        "listen": "127.0.0.1:0",
        "tokens": [
            {"name": f"{role}-1", "role": role, "sha256": hashlib.sha256(t.encode()).hexdigest()}
            for role, t in API_TOKENS.items()
        ],
    }


# Two pytest runs at once (a helper's, CI's) start apart, not both at 127.64.
_subnets = itertools.count(os.getpid() % 150)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"broker port {port} never opened")


class Broker:
    """A real MQTT broker subprocess: mosquitto from Debian, else amqtt."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None
        use_amqtt = os.environ.get("MQTT_BROKER") == "amqtt" or not Path(MOSQUITTO).exists()
        self.kind = "amqtt" if use_amqtt else "mosquitto"

    def command(self) -> list[str]:
        if self.kind == "mosquitto":
            conf = self.tmp / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                "persistence false\nset_tcp_nodelay true\n"
                "log_dest stderr\nlog_type error\nlog_type warning\n"
            )
            return [MOSQUITTO, "-c", str(conf)]
        conf = self.tmp / "amqtt.yaml"
        conf.write_text(
            f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        amqtt = Path(sys.executable).with_name("amqtt")
        return [str(amqtt), "-c", str(conf)]

    def start(self) -> None:
        self._log = (self.tmp / "broker.log").open("a")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=self._log)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        if self._log is not None:
            self._log.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A sync, session-wide broker: a subprocess is independent of event-loop scopes."""
    b = Broker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


# amqtt 0.12, the fallback, keeps no messages for a persistent session that is away; the
# tests of that need mosquitto. CI installs it and sets this, so such a skip fails there.
REQUIRE_MOSQUITTO = os.environ.get("CURTAILD_REQUIRE_MOSQUITTO") == "1"


@pytest.fixture
def persistent_broker(broker: Broker) -> Broker:
    """The session broker, if it queues QoS 1 messages for a persistent session."""
    if broker.kind != "mosquitto":
        reason = (
            "amqtt (the fallback broker) does not deliver QoS 1 messages queued for a "
            "persistent session: apt-get install mosquitto"
        )
        if REQUIRE_MOSQUITTO:
            pytest.fail(reason)
        pytest.skip(reason)
    return broker


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of the test's own, for stop/restart tests."""
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture(autouse=True)
def _signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY.decode())


def subnet() -> str:
    """A loopback /16 no other test in this run uses: 127.64.0.0 and up. One whose first
    miner port is taken (another pytest run, a bench, a demo) is passed over."""
    for _ in range(150):
        net = f"127.{64 + next(_subnets) % 150}"
        with socket.socket() as s:
            try:
                s.bind((f"{net}.0.1", 4028))
            except OSError:
                continue
        return net
    raise RuntimeError("every loopback subnet 127.64-213 is in use")


def site_dict(
    tmp_path: Path,
    *,
    miners: int = 20,
    mode: str = "always-on",
    cap_kw: float | None = None,
    base_allowance_kw: float = 0.0,
    margin_kw: float = 2.0,
    mqtt_port: int | None = None,
    http: bool = True,
    start_mode: str = "mining",
    faults: dict[str, str] | None = None,
    efficiencies: tuple[float, ...] = (17.5, 21.5, 29.5, 34.0),
    **sections: Any,
) -> dict[str, Any]:
    """A site config as a dict: `miners` LuxOS miners spread over efficiency classes."""
    net = subnet()
    entries: list[dict[str, Any]] = []
    for i in range(miners):
        eff = efficiencies[i % len(efficiencies)]
        entries.append(
            {
                "id": f"m{i:03d}",
                "host": f"{net}.{i // 200}.{1 + i % 200}",
                "driver": "luxos",
                "rated_power_w": 3000 + 100 * (i % 5),
                "efficiency_j_th": eff,
                "container": f"c{1 + i % 2}",
                "timeout_s": 1.0,
            }
        )
    rated_kw = sum(int(e["rated_power_w"]) for e in entries) / 1000
    signals: dict[str, Any] = {"sources": [{"id": "kegoc", "key": {"env": KEY_ENV}}]}
    if mqtt_port is not None:
        signals["mqtt"] = {
            "url": f"mqtt://127.0.0.1:{mqtt_port}",
            "client_id": f"curtaild-test-{net.replace('.', '-')}",
        }
    if http:
        signals["http"] = {"listen": "127.0.0.1:0"}
    data: dict[str, Any] = {
        "site": {"id": "test-site"},
        "grid": {
            "mode": mode,
            "cap_kw": cap_kw or rated_kw * 2,
            "base_allowance_kw": base_allowance_kw,
            "margin_kw": margin_kw,
        },
        "signals": signals,
        "miners": entries,
        "journal": {"path": str(tmp_path / "journal.db")},
        "telemetry": {"interval_s": 2, "fast_interval_s": 0.5, "stale_after_s": 6},
        "control": {
            "tick_s": 1,
            "fast_tick_s": 0.25,
            "wake_hold_after_shed_s": 5,
            "wake_max_per_s": 50,
            "wake_max_kw_per_s": 500,
        },
        "logging": {"level": "WARNING", "format": "console"},
        "simulation": {"start_mode": start_mode, "faults": faults or {}},
        # Tests written for sleep and wake keep to them; the ladder's power-target step
        # has its own tests (test_ladder, test_meter_loop).
        "escalation": {"lower_first": False},
    }
    for name, value in sections.items():
        data[name] = {**data.get(name, {}), **value}
    return data


def load_site(data: dict[str, Any]) -> Loaded:
    return parse(yaml.safe_dump(data), origin="<test>")


async def settle(idle: Any, rounds: int = 3) -> None:
    """Let woken tasks run and real loopback I/O finish, until the daemon is idle."""
    for _ in range(rounds):
        await asyncio.sleep(0.005)
        await asyncio.wait_for(idle(), 10)
