"""Approved pools: which stratum URLs match, and a miner's verdict. Pure.

A farm licensed under Kazakhstan's 2023 law must mine through pools the state approves.
The config lists them (`pools.approved`); a miner is on an unapproved pool when any pool
it is configured with and has enabled matches no entry: a failover pool takes the
hashrate as soon as the first one drops, so a backup counts as much as the active one.

What matches (both sides normalized the same way):
- the scheme, case-insensitive; `stratum+tls` is `stratum+ssl`; a URL a miner reports
  without one is `stratum+tcp` (what cgminer-family firmware assumes);
- the host, case-insensitive, without a trailing dot; a user in the URL (`user@host`) is
  not part of it;
- the port as a number; a URL without one has its scheme's default (DEFAULT_PORTS);
- the path (a Stratum V2 URL's pool key) only where the approved entry gives one, then
  exactly (case matters: it is base58), a trailing slash aside;
- the worker name, where the entry lists `users`: it must start with one of them (case
  matters: pools treat it so). End a prefix with its separator ("acct.") to mean one
  account and not every name that begins alike.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from drivers.types import PoolConfig

SCHEMES = ("stratum+tcp", "stratum+ssl", "stratum2+tcp")
ALIASES = {"stratum+tls": "stratum+ssl"}
# Where a URL gives no port. No standard fixes one: these are the ports the pools we know
# publish for each scheme (3333 for plain stratum; TLS on 443; the Stratum V2 reference
# implementation's 34254).
DEFAULT_PORTS = {"stratum+tcp": 3333, "stratum+ssl": 443, "stratum2+tcp": 34254}
MAX_PORT = 65_535


class Enforce(enum.StrEnum):
    ALARM = "alarm"  # flag it: an alarm, the API, the metric, the journal
    SLEEP = "sleep"  # and keep it asleep until its pools are fixed (a grid limit still wins)


class UrlError(ValueError):
    """Not a stratum URL we can compare."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A stratum URL, normalized for comparison."""

    scheme: str
    host: str
    port: int | None  # None: a scheme we know no default port for, and none given
    path: str = ""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port is None else f":{self.port}"
        path = f"/{self.path}" if self.path else ""
        return f"{self.scheme}://{host}{port}{path}"


def parse_url(text: str, *, approved: bool = False) -> Endpoint:
    """`text` normalized; UrlError saying why it cannot be. `approved`: an entry of the
    config, which must name one of SCHEMES (a miner's report may omit the scheme)."""
    text = text.strip()
    if not text:
        raise UrlError("empty URL")
    scheme, sep, rest = text.partition("://")
    if not sep:
        if approved:
            raise UrlError(f"no scheme: give one of {', '.join(SCHEMES)}")
        scheme, rest = "stratum+tcp", text
    scheme = scheme.lower()
    scheme = ALIASES.get(scheme, scheme)
    if approved and scheme not in SCHEMES:
        raise UrlError(f"scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    authority, _, path = rest.partition("/")
    authority = authority.rpartition("@")[2]  # credentials are not the pool
    host, port_text = _split_host(authority)
    host = host.lower().rstrip(".")
    if not host or any(c.isspace() for c in host):
        raise UrlError("no host")
    if port_text:
        # ASCII digits only: "³".isdigit() is true but int() refuses it; five at most
        # (leading zeros aside), so int() never meets a string too long to convert.
        if (
            not (port_text.isascii() and port_text.isdigit())
            or len(port_text.lstrip("0")) > len(str(MAX_PORT))
            or not 1 <= int(port_text) <= MAX_PORT
        ):
            raise UrlError(f"port {port_text!r} is not a number from 1 to {MAX_PORT}")
        port: int | None = int(port_text)
    else:
        port = DEFAULT_PORTS.get(scheme)
    return Endpoint(scheme, host, port, path.strip().rstrip("/"))


def _split_host(authority: str) -> tuple[str, str]:
    if authority.startswith("["):  # an IPv6 literal
        host, bracket, tail = authority[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise UrlError("unclosed IPv6 address")
        return host, tail[1:]
    if authority.count(":") > 1:
        raise UrlError("an IPv6 address needs brackets")
    host, _, port = authority.partition(":")
    return host, port


@dataclass(frozen=True, slots=True)
class ApprovedPool:
    """One entry of `pools.approved`."""

    endpoint: Endpoint
    users: tuple[str, ...] = ()  # worker-name prefixes; empty: any worker

    def admits(self, endpoint: Endpoint, user: str) -> bool:
        mine = self.endpoint
        return (
            endpoint.scheme == mine.scheme
            and endpoint.host == mine.host
            and endpoint.port == mine.port
            and (not mine.path or endpoint.path == mine.path)
            and (not self.users or any(user.startswith(u) for u in self.users))
        )


def approved_pool(url: str, users: Iterable[str] = ()) -> ApprovedPool:
    return ApprovedPool(parse_url(url, approved=True), tuple(users))


def admitted(pool: PoolConfig, approved: Sequence[ApprovedPool]) -> bool:
    """Whether an entry approves this pool (a URL that cannot be read proves nothing)."""
    try:
        endpoint = parse_url(pool.url)
    except UrlError:
        return False
    return any(a.admits(endpoint, pool.user) for a in approved)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A miner's pools, judged."""

    pools: tuple[PoolConfig, ...]
    unapproved: tuple[str, ...]  # URLs of enabled pools no entry approves, as reported
    admitted: tuple[bool, ...] = ()  # per pool: an entry approves it (disabled ones too)

    @property
    def approved(self) -> bool:
        return not self.unapproved


def judge(pools: Sequence[PoolConfig], approved: Sequence[ApprovedPool]) -> Verdict:
    """Every enabled pool must be approved: a failover pool takes the hashrate too."""
    unapproved: list[str] = []
    flags = tuple(admitted(pool, approved) for pool in pools)
    for pool, ok in zip(pools, flags, strict=True):
        if pool.enabled and not ok and pool.url not in unapproved:
            unapproved.append(pool.url)
    return Verdict(tuple(pools), tuple(unapproved), flags)


def unknown(pools: Sequence[PoolConfig]) -> str | None:
    """Why a read that answered still proves nothing (None: it can be judged). A miner
    that lists no pool is not on an approved one: its reply is a layout we do not read,
    or a slot table with nothing in it; either way its pools are unknown."""
    if not pools:
        return "the miner reported no pool (an empty list proves nothing)"
    return None


def kept_asleep(verdicts: Mapping[str, Verdict], enforce: Enforce) -> dict[str, str]:
    """Under `enforce: sleep`, each miner on an unapproved pool and why it stays asleep;
    the operator's hold mechanism (core/operator.py) keeps it so."""
    if enforce is not Enforce.SLEEP:
        return {}
    return {
        miner: f"mines for an unapproved pool ({', '.join(v.unapproved)})"
        for miner, v in verdicts.items()
        if not v.approved
    }
