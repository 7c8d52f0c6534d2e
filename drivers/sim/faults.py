"""Fault modes a simulated device can be told to show, per device, at start or at run time."""

from __future__ import annotations

import enum
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
    # Acknowledge commands, report them carried out in every read, and not carry them out:
    # only measured power (a PDU outlet, the site meter) shows it.
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

    @property
    def lying(self) -> bool:
        return self.mode is Fault.LIE

    @property
    def deceiving(self) -> bool:
        return self.mode is Fault.DECEIVE

    @property
    def expiring(self) -> bool:
        return self.mode is Fault.EXPIRE_SESSIONS
