"""The real processes: `curtaild sim` and `curtaild run` against a real broker.

These run on real time (they are separate processes); they assert what happened and in
which order, never how fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.mqtt_signals import GridSide
from controller.intake import wire
from tests.conftest import KEY, KEY_ENV, Broker, site_dict

pytestmark = pytest.mark.system


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """A failed test must not leave a daemon holding its ports for the tests after it."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def start(*args: str, log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, KEY_ENV: KEY.decode(), "PYTHONUNBUFFERED": "1", **extra_env}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _STARTED.append(proc)
    return proc


def wait_listening(host: str, port: int, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{host}:{port} never listened")


@pytest.fixture
def farm_file(tmp_path: Path, broker: Broker) -> Iterator[Path]:
    data = site_dict(tmp_path, miners=6, mqtt_port=broker.port, http=False)
    data["site"]["id"] = site_id(tmp_path)  # retained status topics are per site
    data["logging"] = {"level": "INFO", "format": "json"}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    sim = start("sim", "-c", str(path), log=tmp_path / "sim.log")
    first = data["miners"][0]["host"]
    wait_listening(first, 4028)
    yield path
    sim.terminate()
    sim.wait(10)


def site_id(tmp_path: Path) -> str:
    return tmp_path.name[-60:].strip("_-.") or "svc"


async def status(grid: GridSide, state: str, within_s: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(within_s):
        # Retained status arrives from another process; there is no event to wait on.
        while grid.status is None or grid.status.get("state") != state:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert grid.status is not None
    return grid.status


def sealed(signal_: dict[str, Any]) -> bytes:
    return wire.seal(KEY, int(time.time()), json.dumps(signal_).encode())


def curtailment(revision: int = 1, limit_kw: float = 6.0) -> dict[str, Any]:
    return {
        "type": "curtailment",
        "id": "evt-svc",
        "revision": revision,
        "issued_at": "2026-11-23T10:00:00Z",
        "limit_kw": limit_kw,
        "deadline_s": 30,
    }


async def test_service_runs_recovers_and_stops_cleanly(
    tmp_path: Path, broker: Broker, farm_file: Path
) -> None:
    async with GridSide(
        "127.0.0.1", broker.port, site_id=site_id(tmp_path), client_id="grid-service"
    ) as grid:
        run = start("run", "-c", str(farm_file), log=tmp_path / "run.log")
        online = await status(grid, "online")
        assert online["miners"]["total"] == 6
        await grid.publish(sealed(curtailment()))
        assert (await grid.wait_ack("evt-svc", 1))["status"] == "received"
        assert (await grid.wait_ack("evt-svc", 1, "reached", timeout_s=30))["status"] == "reached"

        run.kill()  # a crash: no clean disconnect, so the broker sends the last will
        run.wait(10)
        assert (await status(grid, "offline"))["site"] == site_id(tmp_path)

        again = start("run", "-c", str(farm_file), log=tmp_path / "run2.log")
        restored = await status(grid, "online")
        assert [s["id"] for s in restored["signals"]] == ["evt-svc"]
        assert restored["limit_kw"] == 6.0

        grid.status = None
        again.send_signal(signal.SIGTERM)
        assert again.wait(15) == 0
        assert (await status(grid, "offline"))["state"] == "offline"
    log = (tmp_path / "run2.log").read_text()
    assert "restored from journal" in log


async def test_service_receives_signals_sent_while_it_was_down(
    tmp_path: Path, persistent_broker: Broker, farm_file: Path
) -> None:
    broker = persistent_broker
    async with GridSide(
        "127.0.0.1", broker.port, site_id=site_id(tmp_path), client_id="grid-queue"
    ) as grid:
        run = start("run", "-c", str(farm_file), log=tmp_path / "run.log")
        await status(grid, "online")
        run.send_signal(signal.SIGTERM)
        assert run.wait(15) == 0
        await status(grid, "offline")
        # QoS 1 on a persistent session: the broker keeps this for the daemon.
        await grid.publish(
            wire.seal(KEY, int(time.time()) + 3, json.dumps(curtailment(limit_kw=7.0)).encode())
        )
        again = start("run", "-c", str(farm_file), log=tmp_path / "run2.log")
        try:
            ack = await grid.wait_ack("evt-svc", 1, timeout_s=30)
            assert ack["status"] == "received"
        finally:
            again.send_signal(signal.SIGTERM)
            again.wait(15)


def test_service_config_error_stops_before_touching_anything(tmp_path: Path) -> None:
    data = site_dict(tmp_path, miners=3)
    data["miners"][1]["driver"] = "brains-os"
    data["grid"]["cap_kw"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    run = start("run", "-c", str(path), log=tmp_path / "run.log")
    assert run.wait(30) == 2
    out = (tmp_path / "run.log").read_text()
    assert "miners[1].driver: unknown driver 'brains-os'; valid drivers: " in out
    assert "braiins-os" in out  # the message lists what would have been right
    assert "grid.cap_kw: Input should be greater than 0" in out
    assert not Path(data["journal"]["path"]).exists()  # nothing opened, nothing contacted


async def test_service_speaks_systemds_notify_protocol(
    tmp_path: Path, broker: Broker, farm_file: Path
) -> None:
    # systemd's end of $NOTIFY_SOCKET, as `Type=notify` with `WatchdogSec=2` sets it up.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(20)
    with sock:
        run = start(
            "run",
            "-c",
            str(farm_file),
            log=tmp_path / "run.log",
            NOTIFY_SOCKET=str(tmp_path / "notify"),
            WATCHDOG_USEC="2000000",
        )
        assert sock.recv(4096).decode() == "READY=1\nSTATUS=controlling 6 miners"
        assert sock.recv(4096).decode() == "WATCHDOG=1"  # then every second or so
        assert sock.recv(4096).decode() == "WATCHDOG=1"
        run.send_signal(signal.SIGTERM)
        message = sock.recv(4096).decode()
        while message == "WATCHDOG=1":  # one may have been on its way
            message = sock.recv(4096).decode()
        assert message.startswith("STOPPING=1"), message
        assert run.wait(15) == 0
