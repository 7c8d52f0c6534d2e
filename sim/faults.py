"""Fault modes a simulated device can be told to show, per device, at start or at run time."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class Fault(enum.StrEnum):
    """How a simulated device misbehaves. Wire faults act on the connection; semantic
    faults (lie, expire-sessions) act inside the device."""

    NONE = "none"
    REFUSE = "refuse"  # nothing listens: connection refused
    STALL = "stall"  # accept, read the request, never answer
    SLOW = "slow"  # answer after `slow_s`
    GARBAGE = "garbage"  # answer random bytes
    QUIRKS = "quirks"  # answer the JSON malformations real firmware sends
    TRUNCATE = "truncate"  # answer half a reply, then close
    NO_CLOSE = "no-close"  # answer, then keep the socket open
    EXPIRE_SESSIONS = "expire-sessions"  # sessions and tokens expire at once
    LIE = "lie"  # acknowledge commands and not carry them out
    # Acknowledge commands that lower the draw (sleep, a lower power target), report them
    # carried out in every read, and keep drawing: only measured power (a PDU outlet, the
    # site meter) shows it. Commands that raise the draw still act.
    DECEIVE = "deceive"
    # Modbus devices: answer every request with a Modbus exception (device failure).
    EXCEPTION = "exception"
    # Modbus devices: serve a few requests on each connection, then drop it mid-batch.
    DROP = "drop"


@dataclass(slots=True)
class FaultState:
    """The current fault of one device; mutable so a control API can change it live."""

    mode: Fault = Fault.NONE
    slow_s: float = 2.0
    # Whether the device's control board is up (the farm wires it to the physics): with
    # its outlet cut, or while it boots, nothing answers on any of its ports.
    control_up: Callable[[], bool] | None = None

    def dark(self) -> bool:
        return self.control_up is not None and not self.control_up()

    @property
    def lying(self) -> bool:
        return self.mode is Fault.LIE

    @property
    def deceiving(self) -> bool:
        return self.mode is Fault.DECEIVE

    @property
    def expiring(self) -> bool:
        return self.mode is Fault.EXPIRE_SESSIONS
