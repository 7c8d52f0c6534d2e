"""Coarse deadlines for the hot path: one sweep timer per event loop, not one per call.

`with within(3.0): await ...` behaves like `async with asyncio.timeout(3.0)` (TimeoutError
when the deadline passes, cancellation from anyone else propagates untouched) but fires
up to TICK_S late. The point is cost: a fleet-wide curtailment arms a deadline around
every request, and tens of thousands of live timers in the loop's heap cost more than the
requests' own handling (measured at 10,000 miners). Here arming is an append to a queue:
deadlines of the same duration expire in the order they were armed, so each sweep only
looks at the ones that are due.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from types import TracebackType
from typing import Self

TICK_S = 0.05  # how late a deadline may fire; I/O deadlines here are seconds long


class _Entry:
    __slots__ = ("cancelling", "done", "fired", "task", "when")

    def __init__(self, when: float, task: asyncio.Task[object]) -> None:
        self.when = when
        self.task = task
        self.cancelling = task.cancelling()
        self.done = False
        self.fired = False


class _Sweeper:
    """The deadlines of one event loop."""

    __slots__ = ("__weakref__", "_handle", "_live", "_loop", "_queues")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, deque[_Entry]] = {}  # per duration: FIFO is deadline order
        self._live = 0
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, seconds: float, task: asyncio.Task[object]) -> _Entry:
        entry = _Entry(self._loop.time() + seconds, task)
        queue = self._queues.get(seconds)
        if queue is None:
            queue = self._queues[seconds] = deque()
        queue.append(entry)
        self._live += 1
        if self._handle is None:
            self._handle = self._loop.call_later(TICK_S, self._sweep)
        return entry

    def disarm(self, entry: _Entry) -> None:
        if not entry.done:
            entry.done = True  # left in its queue; dropped when it reaches the front
            self._live -= 1

    def _sweep(self) -> None:
        self._handle = None
        now = self._loop.time()
        for seconds, queue in list(self._queues.items()):
            while queue and (queue[0].done or queue[0].when <= now):
                entry = queue.popleft()
                if not entry.done:
                    entry.done = entry.fired = True
                    self._live -= 1
                    entry.task.cancel()
            if not queue:
                del self._queues[seconds]
        if self._live or self._queues:
            self._handle = self._loop.call_later(TICK_S, self._sweep)


_sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper] = (
    weakref.WeakKeyDictionary()
)


class within:  # noqa: N801 - used like asyncio.timeout, so named like a function
    """Raise TimeoutError if the block is still running `seconds` (+ up to TICK_S) later."""

    __slots__ = ("_entry", "_seconds", "_sweeper")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def __enter__(self) -> Self:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("within() must be used inside a task")
        sweeper = _sweepers.get(loop)
        if sweeper is None:
            sweeper = _sweepers[loop] = _Sweeper(loop)
        self._sweeper = sweeper
        self._entry = sweeper.arm(self._seconds, task)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = self._entry
        self._sweeper.disarm(entry)
        if not entry.fired:
            return
        # Our cancellation is spent however the block ended (even if it swallowed it).
        if entry.task.uncancel() <= entry.cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    @property
    def expired(self) -> bool:
        return self._entry.fired
