"""A miner's pools as the families report them, in one shape (drivers.types.PoolConfig).

The cgminer `pools` reply (LuxOS, Whatsminer API v2, stock Antminer on 4028) lists every
slot with its URL, worker, `Status` (Alive, Dead, Disabled, Rejecting; a stock S21 spells
an empty slot "Deed"), `Priority` and `Stratum Active`. Empty slots (no URL) are left out:
they cannot take the hashrate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from drivers.errors import ProtocolError
from drivers.transport import cgminer_tcp
from drivers.types import PoolConfig

NO_POOLS = "the pools are not checked (nothing else changes)"


def text(value: object) -> str:
    """A miner's string as we keep it: a lone surrogate (a JSON escape can carry one) is
    written escaped, so the journal, the API and the reports can always encode it."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def cleaned(pools: Iterable[PoolConfig]) -> tuple[PoolConfig, ...]:
    """`pools` with their texts as `text` keeps them (for a driver that built its own)."""
    return tuple(replace(p, url=text(p.url), user=text(p.user)) for p in pools)


def _no_url_field(rows: list[Any], key: str, *, device: str, op: str) -> None:
    """Rows, none of which has the URL field at all: another layout than the one we read,
    not a miner without pools."""
    if rows and not any(isinstance(r, Mapping) and key in r for r in rows):
        raise ProtocolError(device, op, f"no pool row has a {key!r} field: unexpected layout")


def cgminer_pools(reply: cgminer_tcp.Reply, *, device: str) -> tuple[PoolConfig, ...]:
    """The configured pools of a cgminer-style `pools` reply, in failover order."""
    rows = cgminer_tcp.section(reply, "POOLS", device=device, op="pools")
    _no_url_field(list(rows), "URL", device=device, op="pools")
    pools = []
    try:
        for index, row in enumerate(rows):
            url = text(row.get("URL") or "").strip()
            if not url:
                continue
            status = str(row.get("Status", "")).strip().lower()
            priority = row.get("Priority", row.get("POOL", index))
            pools.append(
                PoolConfig(
                    url=url,
                    user=text(row.get("User") or ""),
                    priority=int(priority),
                    enabled=status != "disabled",
                    active=_truthy(row.get("Stratum Active")),
                    alive=_alive(status),
                )
            )
    except (TypeError, ValueError, OverflowError) as err:
        raise ProtocolError(device, "pools", f"unexpected POOLS layout: {err!r}") from None
    return ordered(pools)


def rows_pools(
    rows: Iterable[Mapping[str, Any]],
    *,
    device: str,
    op: str,
    url: str = "url",
    user: str = "user",
    enabled: str | None = "enabled",
    active: str | None = "active",
    alive: str | None = "alive",
    status: str | None = None,
) -> tuple[PoolConfig, ...]:
    """Pools from JSON objects whose keys a family names (Braiins OS+ REST, Whatsminer
    API v3); their position is their priority."""
    rows = list(rows)
    _no_url_field(rows, url, device=device, op=op)
    pools = []
    try:
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ProtocolError(device, op, f"a pool is {type(row).__name__}, not an object")
            address = text(row.get(url) or "").strip()
            if not address:
                continue
            said = str(row.get(status, "")).strip().lower() if status else ""
            pools.append(
                PoolConfig(
                    url=address,
                    user=text(row.get(user) or ""),
                    priority=index,
                    enabled=row.get(enabled) is not False if enabled else said != "disabled",
                    active=active is not None and _truthy(row.get(active)),
                    alive=_alive(said) if status else _maybe(row.get(alive) if alive else None),
                )
            )
    except (TypeError, ValueError) as err:
        raise ProtocolError(device, op, f"unexpected pools layout: {err!r}") from None
    return ordered(pools)


def ordered(pools: Iterable[PoolConfig]) -> tuple[PoolConfig, ...]:
    """Failover order: by priority, then as listed."""
    return tuple(sorted(pools, key=lambda p: p.priority))


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "y", "yes", "1")
    return value is True or (isinstance(value, int) and value == 1)


def _alive(status: str) -> bool | None:
    if status in ("alive", "rejecting"):
        return True
    if status in ("dead", "deed"):  # "Deed": sic, a stock S21's empty or dead slot
        return False
    return None


def _maybe(value: object) -> bool | None:
    return value if isinstance(value, bool) else None
