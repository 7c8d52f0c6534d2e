"""The daemon side of the API bench (bench/api.py): curtaild on uvloop with its operator API
on a free loopback port, against the simulated fleet, driven over stdin/stdout.

Prints {"port": N} once the first telemetry is in and the start-up tuning is done, then
reads one JSON command a line:
  {"cmd": "signal"}  a signed 0 kW curtailment to the inbox; answers {"t0": monotonic},
                     then {"done": monotonic} once every miner's sleep was sent and none is
                     in flight any more
  {"cmd": "quit"}      answers {"sweeps": [[start, end], ...]} (monotonic) and exits

Runs against any tree of curtaild (`bench/api.py --root`), so it imports only what every
version of the daemon has had.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
import yaml

from bench.fleet import BenchMiner, read
from controller import logs
from controller.app import Daemon
from controller.clock import SystemClock
from controller.config import parse

try:
    from controller.intake import wire
except ImportError:  # before the rooms restructure (issue 14)
    from controller import wire  # type: ignore[no-redef,attr-defined]

KEY = b"bench-key"


def site(fleet: list[BenchMiner], journal: Path, token_sha256: str) -> str:
    os.environ["CURTAILD_BENCH_KEY"] = KEY.decode()
    miners = [
        {
            "id": m.id,
            "host": m.host,
            "port": m.port,
            "driver": m.driver,
            "rated_power_w": m.rated_power_w,
            "efficiency_j_th": m.efficiency_j_th,
            "container": m.container,
            "timeout_s": 5.0,
        }
        | ({"web_port": m.web_port} if m.web_port is not None else {})
        for m in fleet
    ]
    return yaml.safe_dump(
        {
            "site": {"id": "bench"},
            "grid": {"mode": "always-on", "cap_kw": len(fleet) * 4, "margin_kw": 1},
            "signals": {
                "sources": [{"id": "grid", "key": {"env": "CURTAILD_BENCH_KEY"}}],
                "http": {"listen": "127.0.0.1:0"},
            },
            "api": {
                "listen": "127.0.0.1:0",
                "tokens": [{"name": "bench", "role": "viewer", "sha256": token_sha256}],
                "metrics_public": True,
            },
            "miners": miners,
            "journal": {"path": str(journal)},
            "logging": {"level": "WARNING", "format": "json"},
        }
    )


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def sent(daemon: Daemon) -> tuple[int, int]:
    """Commands sent and in flight, wherever this version of the daemon keeps them."""
    sup: Any = daemon.supervisor
    ledger = getattr(sup, "ledger", None)
    if ledger is not None:
        return int(ledger.sent), int(ledger.in_flight)
    return int(sup.commands_sent), int(sup.in_flight)


async def watch(daemon: Daemon, size: int) -> None:
    while True:
        done, flying = sent(daemon)
        if done >= size and flying == 0:
            say({"done": time.monotonic()})
            return
        await asyncio.sleep(0.02)


def watch_sweeps() -> list[list[float]]:
    """[start, end] of every telemetry sweep, on CLOCK_MONOTONIC (the harness's clock too),
    so that each request can be told apart: between sweeps or during one."""
    # By name: the bench also runs trees from before the rooms restructure (issue 14),
    # where the poller lived in controller/telemetry.py.
    try:
        telemetry = importlib.import_module("controller.loop.telemetry")
    except ImportError:
        telemetry = importlib.import_module("controller.telemetry")
    poller: Any = telemetry.Poller
    sweeps: list[list[float]] = []
    sweep = poller.sweep

    async def timed_sweep(self: object) -> None:
        span = [time.monotonic()]
        sweeps.append(span)
        try:
            await sweep(self)
        finally:
            span.append(time.monotonic())

    poller.sweep = timed_sweep
    return sweeps


async def run(fleet: list[BenchMiner], token_sha256: str) -> None:
    sweeps = watch_sweeps()
    with tempfile.TemporaryDirectory() as tmp:
        loaded = parse(site(fleet, Path(tmp) / "journal.db", token_sha256))
        logs.configure(loaded.config.logging.level, loaded.config.logging.format, sys.stderr)
        async with Daemon(loaded, SystemClock(), tune_gc=True) as daemon:
            await asyncio.sleep(0.5)  # as in service: start-up tuning (gc) is done
            assert daemon.api is not None
            say({"port": daemon.api.port, "pid": os.getpid()})
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            watcher = None
            while line := await reader.readline():
                command = json.loads(line)["cmd"]
                if command == "quit":
                    break
                if command == "signal":
                    body = json.dumps(
                        {
                            "type": "curtailment",
                            "id": "bench-1",
                            "revision": 1,
                            "issued_at": datetime.now(UTC).isoformat(),
                            "limit_kw": 0,
                            "deadline_s": 60,
                        }
                    ).encode()
                    ts = int(time.time())
                    t0 = time.monotonic()
                    outcome = daemon.inbox.submit_http(body, str(ts), wire.sign(KEY, ts, body))
                    assert outcome.status == "received", outcome
                    say({"t0": t0})
                    watcher = asyncio.create_task(watch(daemon, len(fleet)))
            if watcher is not None:
                watcher.cancel()
            say({"sweeps": sweeps})


if __name__ == "__main__":
    uvloop.run(run(read(Path(sys.argv[1])), sys.argv[2]))
