"""The approved-pools check: every miner's pool configuration, read at start and every
`pools.check_interval_s`, judged against the approved list (controller/core/pools.py).

A verdict that changes (a miner's first, a miner moved to another pool, one fixed) is
journaled as a `pools` event (a sweep's events in one transaction), raises or clears an
`unapproved-pool` alarm, and, under `enforce: sleep`, has the loop plan again: the miner
is kept asleep through the operator's hold mechanism (core/operator.py) until its pools
are fixed. A read that fails leaves the verdict before it standing for a while (a stock
Antminer restarting its mining process cannot answer for tens of seconds), but not for
ever: a verdict older than STALE_CHECKS intervals becomes unknown, with a
`pools-unchecked` alarm, and a miner kept asleep for it is released to the normal plan
(a firmware that cannot answer while asleep is read again once it runs). A reply that
lists no pool is unknown too, never approved. A firmware without a pools read is said
once and the miner stays unchecked. Nothing a miner replies can raise out of a sweep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

import structlog

from controller.clock import Clock
from controller.core.pools import ApprovedPool, Enforce, Verdict, judge, kept_asleep, unknown
from controller.loop.alarms import Alarms
from controller.loop.telemetry import Activity
from controller.record.journal import Journal, JournalError
from controller.record.site import NOT_CHECKED, MinerPools, PoolsView
from drivers.errors import DeviceTimeoutError, DriverError, UnsupportedError, driver_bug
from drivers.pools import cleaned
from drivers.types import MinerDriver

log = structlog.get_logger("curtaild.pools")

ALARM = "unapproved-pool"
UNCHECKED = "pools-unchecked"
# A verdict stands this many check intervals without a read. One failed read is routine (a
# restart, a busy controller); three intervals is two sweeps in a row missed and a verdict
# older than the operator's "periodically", and a firmware that cannot answer while asleep
# keeps a miner asleep for at most that long.
STALE_CHECKS = 3


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
        self._events: list[tuple[datetime, str, str | None, dict[str, Any] | str | None]] = []
        self.sweeps = 0

    async def run(self) -> None:
        while True:
            self._activity.begin()
            try:
                await self.sweep()
            finally:
                self._activity.end()
            self.sweeps += 1
            await self._clock.sleep(self._interval_s)

    async def sweep(self) -> None:
        """One read of every miner's pools by a bounded pool of workers; the verdicts'
        events journaled together at its end (one transaction, not one per miner)."""
        queue = iter(list(self._drivers))
        kept = dict(self._kept)
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(min(self._concurrency, len(self._drivers))):
                    tg.create_task(self._worker(queue))
        finally:
            self.flush()
        if self._kept != kept and self.on_change is not None:
            self.on_change()

    def flush(self) -> None:
        """Journal the events gathered since the last flush, in one transaction."""
        events, self._events = self._events, []
        try:
            self._journal.record_events(events)
        except JournalError:
            pass  # reported anyway; Journal.error says why
        except Exception:  # a miner's text must not stop the check
            log.exception("pools events not journaled", events=len(events))

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
            try:
                await self.check(miner_id)
            except Exception:  # the last guard: the next miner is still checked
                log.exception("pools check failed", miner=miner_id)

    async def check(self, miner_id: str) -> None:
        """Read one miner's pools and judge them. Whatever the reply holds, the outcome is
        a verdict, unknown, or a failed read: never an exception out of the sweep."""
        timeout_s = self._timeouts[miner_id]
        try:
            async with asyncio.timeout(timeout_s):
                pools = cleaned(await self._drivers[miner_id].pools())
        except DriverError as err:
            self._failed(miner_id, err)
        except TimeoutError:
            self._failed(
                miner_id, DeviceTimeoutError(miner_id, "pools", f"no answer within {timeout_s} s")
            )
        except Exception as err:  # noqa: BLE001 - one broken driver must not stop the check
            self._failed(miner_id, driver_bug(miner_id, "pools", err))
        else:
            try:
                now = self._clock.now()
                why = unknown(pools)
                if why is not None:
                    self._unknown(miner_id, why, now)
                else:
                    self._judged(miner_id, judge(pools, self._approved), now)
            except Exception as err:  # noqa: BLE001 - as the driver call: one reply, one miner
                self._failed(miner_id, driver_bug(miner_id, "pools", err))

    def _judged(self, miner_id: str, verdict: Verdict, now: datetime) -> None:
        before = self.state[miner_id]
        old = before.verdict
        changed = old is None or old.unapproved != verdict.unapproved
        since = now if changed else before.since
        self.state[miner_id] = MinerPools(verdict, now, since, None)
        if before.error is not None:
            log.info("pools read again", miner=miner_id)
        self._alarms.clear_alarm(now, UNCHECKED, miner_id)
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
        now = self._clock.now()
        at = before.checked_at
        if before.verdict is not None and at is not None:
            age = (now - at).total_seconds()
            if age >= STALE_CHECKS * self._interval_s:
                self._unknown(miner_id, f"no pools read for {age:.0f} s ({reason})", now)

    def _unknown(self, miner_id: str, why: str, now: datetime) -> None:
        """The pools are not known (a stale verdict, a reply listing none): not approved,
        not unapproved; counted as unchecked, alarmed, and no rule keeps the miner asleep
        for what is not known (it is read again once it runs)."""
        before = self.state[miner_id]
        old = before.verdict
        released = self._kept.pop(miner_id, None) is not None
        self.state[miner_id] = MinerPools(None, before.checked_at, now, why)
        self._view = None
        if old is None and before.error == why:
            return  # said already
        last = (
            ""
            if old is None
            else "; last seen approved"
            if old.approved
            else f"; last seen on an unapproved pool ({', '.join(old.unapproved)})"
        )
        action = "released to the normal plan" if released else "none"
        self._alarms.clear_alarm(now, ALARM, miner_id)
        self._alarms.raise_alarm(
            now, UNCHECKED, miner_id, f"pools unknown: {why}{last} (action: {action})"
        )
        self._events.append(
            (now, "pools", miner_id, {"approved": None, "reason": why, "pools": [],
                                      "unapproved": [], "action": action})
        )  # fmt: skip

    def _event(self, now: datetime, miner_id: str, verdict: Verdict, action: str) -> None:
        detail: dict[str, Any] = {
            "approved": verdict.approved,
            "pools": [{"url": p.url, "user": p.user, "active": p.active} for p in verdict.pools],
            "unapproved": list(verdict.unapproved),
            "action": action,
        }
        self._events.append((now, "pools", miner_id, detail))
