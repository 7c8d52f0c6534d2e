"""Read-back after a write: every family reads until the write shows, or gives up.

Firmware raises or clears a status flag a moment after acknowledging a write, so one
read is not enough and an endless poll is no answer either: a few reads, half a second
apart. What "shows" means, and the error when it never does, stay with each driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

ATTEMPTS = 3
INTERVAL_S = 0.5

_T = TypeVar("_T")


async def until(
    read: Callable[[], Awaitable[_T]],
    done: Callable[[_T], bool],
    *,
    attempts: int = ATTEMPTS,
    interval_s: float = INTERVAL_S,
) -> tuple[_T, bool]:
    """Read until `done` or the attempts are spent: the last read, and whether it was."""
    seen = await read()
    for _ in range(attempts - 1):
        if done(seen):
            return seen, True
        await asyncio.sleep(interval_s)
        seen = await read()
    return seen, done(seen)
