"""The pools one simulated miner is configured with: state its API faces all answer from,
set by the farm's config (`simulation.pools`) or live by the control API
(`PUT /v1/miners/{id}/pools`), so a miner can be moved to another pool while it runs.

A family whose firmware keeps its pools in a config of its own (the stock Antminer's
three CGI slots, which set_miner_conf.cgi writes) attaches it as the store, so the CGI,
4028 and the control API see one list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

DEFAULT_URL = "stratum+tcp://pool.example:3333"


@dataclass(frozen=True, slots=True)
class SimPool:
    url: str
    user: str
    password: str = "x"  # noqa: S105 - what pools commonly take: any
    enabled: bool = True
    alive: bool = True  # False: the pool does not answer (failover moves past it)

    @property
    def status(self) -> str:
        """Its cgminer `Status`."""
        if not self.enabled:
            return "Disabled"
        return "Alive" if self.alive else "Dead"


def default_pools(serial: str) -> tuple[SimPool, ...]:
    """What a simulated miner ships with: one pool, its worker named after its serial."""
    return (SimPool(DEFAULT_URL, f"farm.{serial[-4:]}"),)


class SimPools:
    """One miner's configured pools, in failover order."""

    __slots__ = ("_entries", "_load", "_store")

    def __init__(self, entries: Iterable[SimPool] | None = None) -> None:
        self._entries: tuple[SimPool, ...] | None = None if entries is None else tuple(entries)
        self._load: Callable[[], tuple[SimPool, ...]] | None = None
        self._store: Callable[[tuple[SimPool, ...]], None] | None = None

    @property
    def given(self) -> bool:
        """Set by config or the control API (else the family's factory default holds)."""
        return self._entries is not None

    def preset(self, entries: Iterable[SimPool]) -> None:
        """The family's factory default, where nothing was given."""
        if self._entries is None:
            self._entries = tuple(entries)

    def attach(
        self,
        load: Callable[[], tuple[SimPool, ...]],
        store: Callable[[tuple[SimPool, ...]], None],
    ) -> None:
        """A firmware that keeps its pools in its own config: it is the store from now on
        (anything given so far is written into it first)."""
        if self._entries is not None:
            store(self._entries)
        self._load, self._store = load, store

    def get(self) -> tuple[SimPool, ...]:
        if self._load is not None:
            return self._load()
        return self._entries or ()

    def set(self, entries: Iterable[SimPool]) -> None:
        pools = tuple(entries)
        if self._store is not None:
            self._store(pools)
        self._entries = pools

    def active(self) -> int | None:
        """The index of the pool a mining miner hashes for: the first enabled, alive one."""
        for i, pool in enumerate(self.get()):
            if pool.enabled and pool.alive and pool.url:
                return i
        return None


__all__ = ["DEFAULT_URL", "SimPool", "SimPools", "default_pools"]
