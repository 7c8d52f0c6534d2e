"""Driver registry: type name -> factory. Unknown or duplicate names fail loudly."""

from __future__ import annotations

from collections.abc import Iterator

from drivers.types import MinerDriverEntry


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
