"""What a simulated firmware does not serve, the way an older or newer build lacks it.

Names are what the wire carries: a cgminer-style or btminer command (`stats`,
`get.miner.setting`), an HTTP path (`/api/v1/miner/hw/hashboards`,
`/cgi-bin/stats.cgi`), or a reply key as `command:key` (`summary:Power Limit`). A lacking
command or path is answered as that firmware answers any it does not know; a lacking key
is left out of that command's reply wherever it occurs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware


@dataclass(slots=True)
class Missing:
    """One miner's lacks, shared by its servers; the control API changes them live."""

    names: frozenset[str] = frozenset()
    asked: Counter[str] = field(default_factory=Counter)  # requests for what it lacks

    def set(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)

    def lacks(self, name: str) -> bool:
        """Whether `name` is missing; a request for it is counted."""
        if name in self.names:
            self.asked[name] += 1
            return True
        return False

    def strip(self, command: str, reply: Any) -> Any:  # noqa: ANN401 - JSON of any shape
        """`reply` without the keys `command:key` names lack (the reply is not changed)."""
        prefix = f"{command}:"
        keys = {n.removeprefix(prefix) for n in self.names if n.startswith(prefix)}
        if not keys:
            return reply
        self.asked.update(f"{prefix}{key}" for key in keys)
        return _without(reply, keys)


def http_missing(missing: Missing) -> Middleware:
    """A middleware answering a lacking path as the router answers an unknown one: 404."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if missing.lacks(request.path):
            raise web.HTTPNotFound
        return await handler(request)

    return middleware


def _without(value: Any, keys: set[str]) -> Any:  # noqa: ANN401 - JSON of any shape
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


__all__ = ["Missing", "http_missing"]
