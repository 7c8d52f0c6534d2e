"""systemd's notify protocol against a fake notify socket: READY once the first telemetry
is in, WATCHDOG once per healthy loop cycle (and none once the loop hangs), STOPPING on a
graceful stop that lets the commands in flight finish and flushes the journal."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from controller.adapters.systemd import Notifier
from sim.faults import Fault
from tests.conftest import load_site, site_dict
from tests.system.harness import rig

pytestmark = pytest.mark.system


class NotifySocket:
    """What systemd's end of $NOTIFY_SOCKET received."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self) -> list[str]:
        messages = []
        while True:
            try:
                messages.append(self._sock.recv(4096).decode())
            except BlockingIOError:
                return messages


@contextmanager
def notify_socket(tmp_path: Path) -> Iterator[tuple[NotifySocket, str]]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)  # noqa: FBT003 - the stdlib signature
    try:
        yield NotifySocket(sock), str(path)
    finally:
        sock.close()


def test_the_notifier_reads_systemds_environment() -> None:
    watched = Notifier.from_env({"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "30000000"})
    assert watched.enabled
    assert watched.watchdog_interval_s == 15.0
    other = Notifier.from_env({"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "3", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None  # the watchdog is another process's
    outside = Notifier.from_env({})
    assert not outside.enabled
    outside.ready("nothing to tell")  # a no-op, not an error
    for n in (watched, other, outside):
        n.close()


async def test_ready_after_the_first_telemetry_then_a_watchdog_per_healthy_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with notify_socket(tmp_path) as (systemd, address):
        notifier = Notifier(address, watchdog_s=2.0)
        async with rig(load_site(site_dict(tmp_path, miners=4)), notifier=notifier) as r:
            first = systemd.read()
            assert first[0] == "READY=1\nSTATUS=controlling 4 miners"
            assert r.daemon.poller.sweeps >= 1  # the first telemetry came before READY
            await r.step(5)
            fed = [m for m in systemd.read() if m == "WATCHDOG=1"]
            assert 4 <= len(fed) <= 6  # every 1 s (half the 2 s timeout) of 5 logical s

            async def hung(cause: str) -> None:
                del cause
                await asyncio.Event().wait()

            monkeypatch.setattr(r.sup, "cycle", hung)  # the loop's next cycle never ends
            await r.step(6, wait_idle=False)
            assert "WATCHDOG=1" not in systemd.read()  # systemd would restart it now


async def test_a_graceful_stop_finishes_commands_flushes_the_journal_and_says_stopping(
    tmp_path: Path,
) -> None:
    with notify_socket(tmp_path) as (systemd, address):
        loaded = load_site(site_dict(tmp_path, miners=6))
        async with rig(loaded, notifier=Notifier(address)) as r:
            for miner in ("m000", "m001", "m002", "m003", "m004", "m005"):
                await r.farm.set_fault(miner, Fault.SLOW, slow_s=0.3)  # real seconds
            await r.post(*r.signed(r.curtailment(3.0, deadline_s=10)))
            await r.step(0.25, wait_idle=False)
            assert r.sup.ledger.in_flight > 0  # sleeps on the wire when SIGTERM comes
            sent = r.sup.ledger.in_flight
            await r.daemon.shutdown(grace_s=10)
            assert r.sup.ledger.in_flight == 0
            with sqlite3.connect(tmp_path / "journal.db") as db:  # the daemon closed its own
                rows = db.execute("SELECT outcome FROM commands").fetchall()
            assert len(rows) >= sent
            assert {outcome for (outcome,) in rows} == {"ok"}  # none cancelled mid-way
            assert "STOPPING=1\nSTATUS=stopping: finishing commands in flight" in systemd.read()
