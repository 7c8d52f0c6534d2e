"""One tree of typed driver errors. Drivers raise these; they never return False or None."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from drivers.types import MinerReading

log = structlog.get_logger("curtaild.drivers")


class DriverError(Exception):
    """A device call failed. `device` names the device, `op` what was attempted."""

    retryable: bool = True

    def __init__(self, device: str, op: str, detail: str) -> None:
        super().__init__(f"{device}: {op}: {detail}")
        self.device = device
        self.op = op
        self.detail = detail

    @property
    def kind(self) -> str:
        """Short machine-readable cause, for health reasons and journals."""
        return _KINDS.get(type(self), "error")


class UnreachableError(DriverError):
    """Nothing answered: connection refused, no route, reset before a reply."""


class DeviceTimeoutError(DriverError):
    """The device accepted the call but did not finish it within the deadline."""


class RejectedError(DriverError):
    """The device answered and said no."""

    def __init__(self, device: str, op: str, detail: str, code: int | None = None) -> None:
        super().__init__(device, op, detail)
        self.code = code


class SessionBusyError(RejectedError):
    """Another client holds the device's single write session."""


class AuthError(DriverError):
    """Credentials were refused; a human has to fix them."""

    retryable = False


class ProtocolError(DriverError):
    """The device answered something we cannot understand."""


class UnsupportedError(DriverError):
    """The device cannot do this at all."""

    retryable = False


class VerificationError(DriverError):
    """The device acknowledged a command but its read-back shows it did not act."""

    def __init__(
        self, device: str, op: str, detail: str, reading: MinerReading | None = None
    ) -> None:
        super().__init__(device, op, detail)
        self.reading = reading  # what the device really reports, for the planner


class DriverBugError(ProtocolError):
    """A driver raised something that is not a DriverError: a bug, contained to one device."""


def driver_bug(device: str, op: str, err: Exception) -> DriverBugError:
    """Contain an unexpected exception from a driver as a fault of that device (logged with
    its traceback once): one broken driver or reply must not stop the daemon."""
    log.error("driver raised an unexpected error", device=device, op=op, exc_info=err)
    return DriverBugError(device, op, f"unexpected {type(err).__name__}: {err}")


_KINDS: dict[type[DriverError], str] = {
    UnreachableError: "unreachable",
    DeviceTimeoutError: "timeout",
    RejectedError: "rejected",
    SessionBusyError: "session-busy",
    AuthError: "auth",
    ProtocolError: "protocol",
    UnsupportedError: "unsupported",
    VerificationError: "lying",
    DriverBugError: "driver-bug",
}
