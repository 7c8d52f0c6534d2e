"""The approved-pools check: every miner's pool configuration, read at start and every
`pools.check_interval_s`, judged against the approved list (controller/core/pools.py).

A verdict that changes (a miner's first, a miner moved to another pool, one fixed) is
journaled as a `pools` event, raises or clears an `unapproved-pool` alarm, and, under
`enforce: sleep`, has the loop plan again: the miner is kept asleep through the
operator's hold mechanism (core/operator.py) until its pools are fixed. A read that
fails leaves the verdict before it standing (a stock Antminer restarting its mining
process cannot answer for tens of seconds); a firmware without a pools read is said
once and the miner stays unchecked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

import structlog

from controller.clock import Clock
from controller.core.pools import ApprovedPool, Enforce, Verdict, judge, kept_asleep
from controller.loop.alarms import Alarms
from controller.loop.telemetry import Activity
from controller.record.journal import Journal, JournalError
from controller.record.site import NOT_CHECKED, MinerPools, PoolsView
from drivers.errors import DeviceTimeoutError, DriverError, UnsupportedError, driver_bug
from drivers.types import MinerDriver

log = structlog.get_logger("curtaild.pools")

ALARM = "unapproved-pool"


class PoolCheck:
    """Reads every miner's pools, with bounded concurrency, each read under a deadline."""

    def __init__(
        self,
        *,
        drivers: Mapping[str, MinerDriver],
        approved: tuple[ApprovedPool, ...],
        enforce: Enforce,
        interval_s: float,
        concurrency: int,
        timeouts: Mapping[str, float],
        journal: Journal,
        alarms: Alarms,
        clock: Clock,
        activity: Activity,
    ) -> None:
        self._drivers = drivers
        self._approved = approved
        self.enforce = enforce
        self._interval_s = interval_s
        self._concurrency = concurrency
        self._timeouts = timeouts
        self._journal = journal
        self._alarms = alarms
        self._clock = clock
        self._activity = activity
        self.state: dict[str, MinerPools] = dict.fromkeys(drivers, NOT_CHECKED)
        self._kept: dict[str, str] = {}
        self._view: PoolsView | None = None  # built once per change, for readers
        self.on_change: Callable[[], None] | None = None  # the loop plans again
        self.kick = asyncio.Event()  # check every miner now
        self.sweeps = 0

    async def run(self) -> None:
        while True:
            self._activity.begin()
            try:
                await self.sweep()
            finally:
                self._activity.end()
            self.sweeps += 1
            self.kick.clear()
            await self._clock.wait(self.kick, self._interval_s)

    async def sweep(self) -> None:
        """One read of every miner's pools by a bounded pool of workers."""
        queue = iter(list(self._drivers))
        kept = dict(self._kept)
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self._concurrency, len(self._drivers))):
                tg.create_task(self._worker(queue))
        if self._kept != kept and self.on_change is not None:
            self.on_change()

    def kept_asleep(self) -> Mapping[str, str]:
        """Miners to keep asleep, and why (empty unless `enforce: sleep`)."""
        return self._kept

    def view(self) -> PoolsView:
        """The read model's part: built when a verdict or a read's outcome changed."""
        if self._view is None:
            miners = dict(self.state)
            verdicts = [p.verdict for p in miners.values() if p.verdict is not None]
            self._view = PoolsView(
                enforce=self.enforce.value,
                miners=miners,
                checked=len(verdicts),
                unapproved=sum(not v.approved for v in verdicts),
            )
        return self._view

    async def _worker(self, queue: Iterator[str]) -> None:
        for miner_id in queue:
            await self.check(miner_id)

    async def check(self, miner_id: str) -> None:
        """Read one miner's pools and judge them."""
        timeout_s = self._timeouts[miner_id]
        try:
            async with asyncio.timeout(timeout_s):
                pools = await self._drivers[miner_id].pools()
        except DriverError as err:
            self._failed(miner_id, err)
        except TimeoutError:
            self._failed(
                miner_id, DeviceTimeoutError(miner_id, "pools", f"no answer within {timeout_s} s")
            )
        except Exception as err:  # noqa: BLE001 - one broken driver must not stop the check
            self._failed(miner_id, driver_bug(miner_id, "pools", err))
        else:
            self._judged(miner_id, judge(pools, self._approved), self._clock.now())

    def _judged(self, miner_id: str, verdict: Verdict, now: datetime) -> None:
        before = self.state[miner_id]
        old = before.verdict
        changed = old is None or old.unapproved != verdict.unapproved
        since = now if changed else before.since
        self.state[miner_id] = MinerPools(verdict, now, since, None)
        if before.error is not None:
            log.info("pools read again", miner=miner_id)
        if changed or old is None or old.pools != verdict.pools or before.error is not None:
            self._view = None
        if not changed:
            return
        action = "none" if verdict.approved else self.enforce.value
        if verdict.approved:
            self._kept.pop(miner_id, None)
            if old is not None:
                log.info("pools approved again", miner=miner_id)
            self._alarms.clear_alarm(now, ALARM, miner_id)
        else:
            self._kept = {**self._kept, **kept_asleep({miner_id: verdict}, self.enforce)}
            self._alarms.raise_alarm(
                now,
                ALARM,
                miner_id,
                f"mines for an unapproved pool: {', '.join(verdict.unapproved)} (action: {action})",
            )
        self._event(now, miner_id, verdict, action)

    def _failed(self, miner_id: str, err: DriverError) -> None:
        before = self.state[miner_id]
        reason = f"{err.kind}: {err.detail}"
        if before.error is None:
            if isinstance(err, UnsupportedError):
                log.info("pools not checked", miner=miner_id, reason=reason)
            else:
                log.warning("pools could not be read", miner=miner_id, reason=reason)
        if before.error != reason:
            self._view = None
        self.state[miner_id] = MinerPools(before.verdict, before.checked_at, before.since, reason)

    def _event(self, now: datetime, miner_id: str, verdict: Verdict, action: str) -> None:
        detail: dict[str, Any] = {
            "approved": verdict.approved,
            "pools": [{"url": p.url, "user": p.user, "active": p.active} for p in verdict.pools],
            "unapproved": list(verdict.unapproved),
            "action": action,
        }
        with contextlib.suppress(JournalError):  # reported anyway; Journal.error says why
            self._journal.record_event(now, "pools", miner_id, detail)
