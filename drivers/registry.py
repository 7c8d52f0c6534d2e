"""Driver registry: type name -> factory. Unknown or duplicate names fail loudly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from drivers.types import DriverTraits, MinerDriver


@dataclass(frozen=True, slots=True)
class MinerEndpoint:
    """Where a miner is and how to talk to it."""

    miner_id: str
    host: str
    port: int
    timeout_s: float
    username: str | None = None
    password: str | None = None
    web_port: int | None = None  # the HTTP/gRPC API where a family has one besides `port`


@dataclass(frozen=True, slots=True)
class MinerDriverEntry:
    """A registered miner driver family."""

    name: str
    factory: Callable[[MinerEndpoint], MinerDriver]
    traits: DriverTraits
    default_port: int
    summary: str
    default_web_port: int | None = None


class UnknownDriverError(LookupError):
    """A config named a driver that is not registered."""


class MinerRegistry:
    """Driver families by lowercase kebab-case name."""

    def __init__(self) -> None:
        self._entries: dict[str, MinerDriverEntry] = {}

    def register(self, entry: MinerDriverEntry) -> None:
        key = entry.name.lower()
        if key in self._entries:
            raise ValueError(f"miner driver {entry.name!r} is registered twice")
        self._entries[key] = entry

    def get(self, name: str) -> MinerDriverEntry:
        try:
            return self._entries[name.lower()]
        except KeyError:
            raise UnknownDriverError(
                f"unknown driver {name!r}; valid drivers: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self) -> Iterator[MinerDriverEntry]:
        return iter(self._entries[k] for k in self.names())


def default_registry() -> MinerRegistry:
    """The registry of every built-in driver family."""
    from drivers.miners import (  # noqa: PLC0415 - keep import-time free of side effects
        antminer_stock,
        braiins_os,
        luxos,
        whatsminer,
    )

    registry = MinerRegistry()
    for entry in (luxos.ENTRY, braiins_os.ENTRY, *whatsminer.ENTRIES, antminer_stock.ENTRY):
        registry.register(entry)
    return registry
