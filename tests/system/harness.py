"""A simulated farm and the daemon on one fake clock, advanced by the test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import aiohttp

from controller.adapters.systemd import Notifier
from controller.app import Daemon
from controller.clock import FakeClock
from controller.config import Loaded
from controller.core.signals import Obligation, ObligationStatus
from controller.intake import wire
from controller.record.site import published
from demo.farm import farm_from_config
from drivers.types import Mode
from sim.farm import SimFarm
from tests.conftest import KEY, settle


class Rig:
    """Time moves only when the test says so; I/O is real loopback."""

    def __init__(self, loaded: Loaded, clock: FakeClock, farm: SimFarm, daemon: Daemon) -> None:
        self.loaded = loaded
        self.clock = clock
        self.farm = farm
        self.daemon = daemon

    @property
    def sup(self) -> Any:
        return self.daemon.supervisor

    def status(self) -> dict[str, Any]:
        """The status as published, from the site's one read model."""
        view = self.daemon.feed.latest
        assert view is not None, "no cycle has run yet"
        return published(view)

    async def settle(self) -> None:
        await settle(self.daemon.activity.idle)

    async def step(self, seconds: float, dt: float = 0.25, *, wait_idle: bool = True) -> None:
        """Advance logical time in small steps, letting the daemon act after each.

        `wait_idle=False` lets logical time pass while slow commands are still on the wire
        (a miner that is slow in real time), giving each step a little real time instead.
        """
        steps = max(1, round(seconds / dt))
        for _ in range(steps):
            self.clock.advance(dt)
            if wait_idle:
                await self.settle()
            else:
                await asyncio.sleep(0.03)

    async def run_until(
        self,
        condition: Callable[[], bool],
        within_s: float,
        dt: float = 0.25,
        *,
        wait_idle: bool = True,
    ) -> float:
        """Step until `condition` holds; return the logical seconds it took."""
        start = self.clock.now()
        while not condition():
            if (self.clock.now() - start).total_seconds() > within_s:
                raise AssertionError(f"not within {within_s} logical seconds")
            await self.step(dt, dt, wait_idle=wait_idle)
        return (self.clock.now() - start).total_seconds()

    async def settled(
        self, key: str, within_s: float, dt: float = 0.25, *, wait_idle: bool = True
    ) -> Obligation:
        """Step until the deadline `key` is no longer pending; return it."""

        def done() -> bool:
            ob = self.obligation(key)
            return ob is not None and ob.status is not ObligationStatus.PENDING

        await self.run_until(done, within_s, dt, wait_idle=wait_idle)
        ob = self.obligation(key)
        assert ob is not None
        return ob

    def obligation(self, key: str) -> Obligation | None:
        for ob in [*self.sup.deadlines.finished, *self.sup.deadlines.pending]:
            if ob.key == key:
                return ob  # type: ignore[no-any-return]
        return None

    def asleep(self) -> set[str]:
        return {m for m, sim in self.farm.miners.items() if sim.physics.mode is Mode.SLEEPING}

    def signed(self, signal: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(signal).encode()
        ts = int(self.clock.time())
        return body, {
            wire.TIMESTAMP_HEADER: str(ts),
            wire.SIGNATURE_HEADER: wire.sign(KEY, ts, body),
        }

    def sealed(self, signal: dict[str, Any], *, key: bytes = KEY, skew_s: int = 0) -> bytes:
        return wire.seal(key, int(self.clock.time()) + skew_s, json.dumps(signal).encode())

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        http = self.daemon.http
        assert http is not None
        url = f"http://127.0.0.1:{http.port}/grid/v1/signals"
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=body, headers=headers) as reply,
        ):
            data: dict[str, Any] = json.loads(await reply.text())
            return reply.status, data

    def curtailment(
        self,
        limit_kw: float,
        *,
        revision: int = 1,
        deadline_s: float = 10,
        signal_id: str = "evt-0017",
        **extra: Any,
    ) -> dict[str, Any]:
        return {
            "type": "curtailment",
            "id": signal_id,
            "revision": revision,
            "issued_at": iso(self.clock),
            "limit_kw": limit_kw,
            "deadline_s": deadline_s,
            **extra,
        }

    def grant(
        self, granted_kw: float, *, end_in_s: float, revision: int = 1, signal_id: str = "korem-h10"
    ) -> dict[str, Any]:
        end = self.clock.now() + timedelta(seconds=end_in_s)
        return {
            "type": "grant",
            "id": signal_id,
            "revision": revision,
            "issued_at": iso(self.clock),
            "start": iso(self.clock),
            "end": end.isoformat().replace("+00:00", "Z"),
            "granted_kw": granted_kw,
        }


def iso(clock: FakeClock) -> str:
    return clock.now().isoformat().replace("+00:00", "Z")


@asynccontextmanager
async def rig(
    loaded: Loaded, clock: FakeClock | None = None, *, notifier: Notifier | None = None
) -> AsyncIterator[Rig]:
    clock = clock or FakeClock()
    farm = farm_from_config(loaded, clock.time)
    async with farm, Daemon(loaded, clock, notifier=notifier) as daemon:
        r = Rig(loaded, clock, farm, daemon)
        await r.settle()
        yield r


@asynccontextmanager
async def daemon_on(
    loaded: Loaded, clock: FakeClock, farm: SimFarm, *, settle: bool = True
) -> AsyncIterator[Rig]:
    """A daemon over an already running farm (restart tests). `settle=False`: do not wait
    for it to be idle (commands that wait on the farm's logical time would never finish)."""
    async with Daemon(loaded, clock) as daemon:
        r = Rig(loaded, clock, farm, daemon)
        if settle:
            await r.settle()
        yield r
