"""systemd's notify protocol (sd_notify) without libsystemd: one datagram per state.

Under `Type=notify` systemd passes a socket in $NOTIFY_SOCKET. curtaild says READY=1 once
its config is validated and its first telemetry is in, WATCHDOG=1 once per healthy loop
cycle (at most every half of $WATCHDOG_USEC, as sd_watchdog_enabled advises), so a hung
loop gets the daemon restarted, and STOPPING=1 when it begins a graceful stop. Outside
systemd (no $NOTIFY_SOCKET) every call is a no-op. Sending never blocks and never raises:
the controller must not stall or die because its supervisor's socket is gone.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("curtaild.systemd")


class Notifier:
    """Sends sd_notify messages; a no-op without a socket."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        """`address`: $NOTIFY_SOCKET (a path, or "@name" in the abstract namespace).
        `watchdog_s`: systemd's watchdog timeout, or None when it is off."""
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self.watchdog_interval_s = watchdog_s / 2 if watchdog_s else None
        self._fed_at: float | None = None
        self._failed = False
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)  # noqa: FBT003 - the stdlib signature

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        watchdog_s = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        # The watchdog is ours unless systemd names another process (a wrapper's child).
        if usec and usec.isdigit() and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1_000_000
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping: finishing commands in flight")

    def cycle(self, now: float) -> None:
        """A healthy loop cycle ended at `now` (seconds): feed the watchdog if it is due."""
        interval = self.watchdog_interval_s
        if interval is None:
            return
        if self._fed_at is None or now - self._fed_at >= interval:
            self._fed_at = now
            self._send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as err:  # a full or vanished socket: say so once, keep running
            if not self._failed:
                log.warning("systemd notify failed", error=str(err))
            self._failed = True
        else:
            self._failed = False
