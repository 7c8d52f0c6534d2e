"""What the daemon tells the outside: acknowledgements of signals and its status."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledgement, as published on `<prefix>/<site>/grid/acks`."""

    signal_id: str | None
    revision: int | None
    status: str  # received | duplicate | rejected | reached | missed
    at: datetime
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.signal_id,
            "revision": self.revision,
            "status": self.status,
            "at": self.at.isoformat().replace("+00:00", "Z"),
            "detail": self.detail,
        }


class Publisher(Protocol):
    """A sink for acks and status. Must not block: the control loop calls it."""

    def ack(self, ack: Ack) -> None: ...

    def status(self, status: dict[str, Any]) -> None: ...


class Recorder:
    """Keeps recent acks and the latest status in memory (the demo, tests, the API)."""

    def __init__(self, keep: int = 1000) -> None:
        self.acks: deque[Ack] = deque(maxlen=keep)
        self.latest_status: dict[str, Any] | None = None

    def ack(self, ack: Ack) -> None:
        self.acks.append(ack)

    def status(self, status: dict[str, Any]) -> None:
        self.latest_status = status


class Fanout:
    """Sends everything to several publishers."""

    def __init__(self, *sinks: Publisher) -> None:
        self.sinks = list(sinks)

    def add(self, sink: Publisher) -> None:
        self.sinks.append(sink)

    def ack(self, ack: Ack) -> None:
        for sink in self.sinks:
            sink.ack(ack)

    def status(self, status: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.status(status)
