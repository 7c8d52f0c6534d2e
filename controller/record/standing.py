"""A held signal as the journal stores it (JSON), and back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controller.core.signals import Curtailment, Grant, Standing


class StandingError(ValueError):
    """A stored held signal of a type this curtaild does not know."""


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def standing_json(signal: Standing) -> dict[str, Any]:
    def opt(value: datetime | None) -> str | None:
        return _ts(value) if value is not None else None

    base: dict[str, Any] = {
        "type": signal.kind,
        "id": signal.id,
        "revision": signal.revision,
        "issued_at": _ts(signal.issued_at),
        "start": opt(signal.start),
        "end": opt(signal.end),
    }
    if isinstance(signal, Curtailment):
        base.update(
            limit_w=signal.limit_w, deadline_s=signal.deadline_s, emergency=signal.emergency
        )
    else:
        base.update(granted_w=signal.granted_w)
    return base


def standing_from(data: dict[str, Any]) -> Standing:
    def opt(value: str | None) -> datetime | None:
        return _parse(value) if value else None

    if data["type"] == "curtailment":
        return Curtailment(
            data["id"],
            int(data["revision"]),
            _parse(data["issued_at"]),
            int(data["limit_w"]),
            float(data["deadline_s"]),
            opt(data["start"]),
            opt(data["end"]),
            bool(data["emergency"]),
        )
    if data["type"] == "grant":
        return Grant(
            data["id"],
            int(data["revision"]),
            _parse(data["issued_at"]),
            int(data["granted_w"]),
            opt(data["start"]),
            opt(data["end"]),
        )
    raise StandingError(f"unknown held signal type {data['type']!r}")
