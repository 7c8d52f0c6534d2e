"""Admission: how many requests may be on the wire at once, per event loop.

A request's deadline is a judgement on the device, so it starts when the request is
admitted, not while the request queues behind our own work. Without a gate, a fan-out
larger than the loop can serve (measured: 10,000 mixed miners on 2 cores) let requests
time out that had never left the box, and every such timeout became a retry that added
load. Waiting here still counts against the caller's own, outer deadline (a command's
budget), so nothing can wait forever.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from types import TracebackType

DEFAULT_LIMIT = 2048


class Gate:
    """A FIFO counting gate: `async with gate:` holds one of `size` places.

    Not asyncio.Semaphore: on Python 3.11 its release scans every waiter, woken or not,
    and each waiter removes itself from the middle of the queue, so with thousands
    waiting it turned quadratic (measured: 7 s of a 10,000-miner fan-out's CPU in
    `_wake_up_next`). Here a release hands its place straight to the oldest live waiter.
    """

    __slots__ = ("_free", "_size", "_waiters")

    def __init__(self, size: int) -> None:
        self._size = size
        self._free = size  # below zero after a shrink, until enough places come back
        self._waiters: deque[asyncio.Future[None]] = deque()

    def resize(self, size: int) -> None:
        """Change the number of places; places in use are kept until released."""
        self._free += size - self._size
        self._size = size
        while self._free > 0 and self._hand_on():
            self._free -= 1

    @property
    def free(self) -> int:
        return self._free

    @property
    def waiting(self) -> int:
        return sum(not w.done() for w in self._waiters)

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a place as we were cancelled: pass it on
            raise  # a cancelled waiter stays queued; a release skips it

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        if self._free < 0 or not self._hand_on():
            self._free += 1

    def _hand_on(self) -> bool:
        """Give a place to the oldest live waiter, if there is one."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False


_limit = DEFAULT_LIMIT
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Gate] = weakref.WeakKeyDictionary()


def set_limit(requests: int) -> None:
    """Set how many requests each loop may have on the wire (the daemon does, at start)."""
    global _limit  # noqa: PLW0603 - one process-wide setting, read by every transport
    if requests < 1:
        raise ValueError(f"admission limit must be at least 1, got {requests}")
    _limit = requests
    for current in _gates.values():  # a loop already running keeps its one gate
        current.resize(requests)


def limit() -> int:
    return _limit


def gate() -> Gate:
    """The running loop's gate: `async with gate():` around one request's I/O."""
    loop = asyncio.get_running_loop()
    current = _gates.get(loop)
    if current is None:
        current = _gates[loop] = Gate(_limit)
    return current
