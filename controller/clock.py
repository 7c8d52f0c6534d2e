"""Time, passed in. The daemon runs on SystemClock; tests drive a FakeClock by hand.

I/O deadlines (asyncio.timeout around a socket call) stay on real time: they protect
against real stalls. Everything the control logic schedules goes through a Clock.

The daemon's time is steady: the wall clock as it was at start, advanced by the boot-time
clock (which NTP slews but never steps, and which counts a suspend). A wall clock stepped
later (an admin's `date`, a bad time server) moves no deadline, hold, staleness or grant
window; the daemon says so, and adopts the wall clock only by a restart once the system
says it is synchronized (the supervisor). Signatures are judged against the wall clock:
the grid signs with its own, synchronized one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...

    def time(self) -> float:
        """Current time as unix seconds (for simulators and wire timestamps)."""
        ...

    def wall_offset_s(self) -> float:
        """How far the system's wall clock has moved from this clock's time (a step)."""
        ...

    def wall_time(self) -> float:
        """The system's wall clock, unix seconds: what a signer's timestamp is judged by."""
        ...

    def wall_synchronized(self) -> bool | None:
        """Whether the system says its wall clock is synchronized (None: it does not say)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """Wait for `event` or `timeout_s` seconds; True if the event was set."""
        ...


TIMESYNCD_SYNCHRONIZED = Path("/run/systemd/timesync/synchronized")


def _boot_time() -> float:
    """CLOCK_BOOTTIME: monotonic, and it counts time suspended (CLOCK_MONOTONIC does not)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class SystemClock:
    """The real clock, steady: see the module's docstring."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = _boot_time,
        synchronized: Path = TIMESYNCD_SYNCHRONIZED,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._synchronized = synchronized
        self._anchor = wall() - monotonic()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def time(self) -> float:
        return self._anchor + self._monotonic()

    def wall_offset_s(self) -> float:
        return self._wall() - self.time()

    def wall_time(self) -> float:
        return self._wall()

    def wall_synchronized(self) -> bool | None:
        # systemd-timesyncd (Debian's default) keeps this file while it is synchronized;
        # other time daemons say nothing we can read under the unit's sandbox.
        return True if self._synchronized.exists() else None

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        if event.is_set():
            return True
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                await event.wait()
        except TimeoutError:
            return False
        return True


class FakeClock:
    """A clock that moves only when told to; sleepers wake as it passes their deadlines."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.wall_step_s = 0.0  # a test steps the "wall clock" by setting this
        self.wall_synced: bool | None = None  # and says whether the system calls it right

    def now(self) -> datetime:
        return self._now

    def time(self) -> float:
        return self._now.timestamp()

    def wall_offset_s(self) -> float:
        return self.wall_step_s

    def wall_time(self) -> float:
        return self.time() + self.wall_step_s

    def wall_synchronized(self) -> bool | None:
        return self.wall_synced

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(
            self._sleepers, (self._now + timedelta(seconds=seconds), next(self._seq), fut)
        )
        await fut

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self.sleep(timeout_s))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
        return event.is_set()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        self._now += timedelta(seconds=seconds)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())
