"""The control loop, and the only code that sends commands to hardware.

Each cycle: freeze the latest readings, arbitrate the limit, plan, journal the decision,
dispatch only the commands that change something (concurrently, each under a deadline),
then track every deadline against the measured draw and report. A new signal wakes the
loop at once; otherwise it ticks, faster while commands or deadlines are pending.
"""

from __future__ import annotations

import asyncio
import gc
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from controller.clock import Clock
from controller.core import planner
from controller.core.model import (
    Action,
    ActionKind,
    Limit,
    MinerSpec,
    MinerView,
    Plan,
    PlanRules,
    Snapshot,
    measured_w,
)
from controller.core.signals import (
    GridPolicy,
    Obligation,
    ObligationStatus,
    arbitrate,
    grant_end_obligations,
    obligation_for,
    track,
    withdraw,
)
from controller.inbox import Inbox
from controller.journal import CommandRecord, Journal
from controller.publish import Ack, Publisher
from controller.telemetry import Activity, Poller, Readings
from drivers.deadline import within
from drivers.errors import DeviceTimeoutError, DriverError, VerificationError, driver_bug
from drivers.transport.admission import Gate
from drivers.types import MinerDriver, MinerReading, Mode

log = structlog.get_logger("curtaild.supervisor")

# Commands go out in batches growing eightfold from 8, yielding to the loop between them:
# each connection started in a loop pass does its set-up before any of them completes,
# so one batch of 10,000 puts the first command ~0.8 s late; doubling from 8 starts the
# last command ~0.2 s late at 1,000 miners (both measured). Eightfold does both well.
DISPATCH_FIRST_BATCH = 8
DISPATCH_MAX_BATCH = 4096
MEASURED_BY = "firmware"  # fleet draw is the sum of firmware readings, unknown at rated
KEEP_FINISHED = 200  # finished deadlines kept in memory for status and the demo
# Command results are journaled in batches (the decision before them is write-ahead).
FLUSH_INTERVAL = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class LoopSettings:
    tick_s: float
    fast_tick_s: float
    command_timeout_s: float  # for a miner without its own entry below
    command_concurrency: int
    retry_backoff_s: float
    retry_backoff_max_s: float
    first_read_timeout_s: float
    status_interval_s: float = 1.0
    # Pause the cyclic collector while a fan-out is on the wire (process-wide; only for
    # the process hosting the daemon): it took ~12 % of a 10,000-miner fan-out's CPU,
    # and reference counting frees nearly everything a fan-out allocates.
    pause_gc_in_fanout: bool = False
    # Per miner: a family whose mode change restarts its mining process needs longer.
    command_timeouts: Mapping[str, float] = field(default_factory=dict)


class Supervisor:
    """Reads, decides, writes, reports; one cycle at a time."""

    def __init__(
        self,
        *,
        site_id: str,
        specs: Mapping[str, MinerSpec],
        drivers: Mapping[str, MinerDriver],
        readings: Readings,
        poller: Poller,
        inbox: Inbox,
        journal: Journal,
        clock: Clock,
        policy: GridPolicy,
        rules: PlanRules,
        settings: LoopSettings,
        publisher: Publisher,
        activity: Activity,
        obligations: list[Obligation],
        known_keys: set[str] | None = None,
    ) -> None:
        """`known_keys`: every deadline ever journaled, so a restart never re-creates one
        that was already settled."""
        self.site_id = site_id
        self._specs = specs
        self._drivers = drivers
        self._readings = readings
        self._poller = poller
        self._inbox = inbox
        self._journal = journal
        self._clock = clock
        self._policy = policy
        self._rules = rules
        self._settings = settings
        self._publisher = publisher
        self._activity = activity
        self._slots = Gate(settings.command_concurrency)  # FIFO, and O(1) with 10,000s waiting
        self._tg: asyncio.TaskGroup | None = None
        self._records: list[CommandRecord] = []
        self._recent_wakes: deque[tuple[datetime, int]] = deque()
        self._last_shed_at: datetime | None = None
        self._last_status: datetime | None = None
        self._planned_at: datetime | None = None
        self._failed_since_plan = False
        self._flushed_at = clock.now()
        self._known_keys = {o.key for o in obligations} | (known_keys or set())
        self.obligations: list[Obligation] = list(obligations)
        self.finished: deque[Obligation] = deque(maxlen=KEEP_FINISHED)
        self.limit: Limit | None = None
        self.plan: Plan | None = None
        self.measured_w = 0
        self.in_flight = 0
        self.cycles = 0
        self.commands_sent = 0
        self.commands_failed = 0
        self.ready = asyncio.Event()
        # The fleet never changes, so its shed order is computed once, not per plan.
        self._order = planner.shed_order(readings.views())

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:  # every command task lives here
                self._tg = tg
                await self._clock.wait(
                    self._readings.first_sweep, self._settings.first_read_timeout_s
                )
                # A restart may come mid-curtailment: hold wakes as if we had just shed.
                self._last_shed_at = self._clock.now()
                await self.cycle("startup")
                self.ready.set()
                while True:
                    busy = self.in_flight > 0 or self.pending_deadlines()
                    tick = self._settings.fast_tick_s if busy else self._settings.tick_s
                    await self._clock.wait(self._inbox.wake, tick)
                    self._inbox.wake.clear()
                    await self.cycle("signal" if self._inbox.admitted else "tick")
        finally:
            if self._settings.pause_gc_in_fanout:
                gc.enable()  # never leave the collector off behind us

    def _nearest_due(self, now: datetime) -> datetime | None:
        """When the draw must next be within a limit: the nearest running deadline."""
        return min(
            (
                o.due_at
                for o in self.obligations
                if o.status is ObligationStatus.PENDING and o.starts_at <= now < o.due_at
            ),
            default=None,
        )

    def pending_deadlines(self) -> bool:
        """A deadline is running now (one that starts tomorrow does not need fast ticks)."""
        now = self._clock.now()
        return any(
            o.status is ObligationStatus.PENDING and o.starts_at <= now for o in self.obligations
        )

    async def cycle(self, cause: str) -> None:
        """One pass: freeze, decide, journal, write, track, report."""
        self._activity.begin()
        try:
            now = self._clock.now()
            self._absorb_signals()
            self._inbox.prune(now)
            limit = arbitrate(
                self._inbox.book,
                self._policy,
                now,
                last_heard=self._inbox.last_heard,
                overrides=self._inbox.overrides,
            )
            due = self._nearest_due(now)
            if due is not None:
                limit = replace(limit, due_at=due)
            views = self._readings.views()
            if self._must_plan(cause, limit):
                await self._decide(cause, now, limit, views)
            self.measured_w = measured_w(views, now, self._rules.stale_after)
            self._track(now)
            self._poller.set_fast(self.pending_deadlines())
            if self._records and (self.in_flight == 0 or now - self._flushed_at >= FLUSH_INTERVAL):
                self._flush(now)
            self._report(now, views)
            self.cycles += 1
        finally:
            self._activity.end()

    def _must_plan(self, cause: str, limit: Limit) -> bool:
        """Re-planning a large fleet is not free. While a fan-out is on the wire, plan again
        only when something the plan depends on changed: a signal, the limit, a failed
        command; commands that succeed land exactly where the plan counted them, and
        telemetry is paused until the wire is quiet."""
        return (
            cause != "tick"
            or limit != self.limit
            or self.in_flight == 0
            or self._failed_since_plan
            or self._planned_at is None
        )

    async def _decide(
        self, cause: str, now: datetime, limit: Limit, views: tuple[MinerView, ...]
    ) -> None:
        self._trim_wakes(now)
        snapshot = Snapshot(now, views, tuple(self._recent_wakes), self._last_shed_at, self._order)
        plan = planner.plan(snapshot, limit, self._rules)
        self._planned_at = now
        self._failed_since_plan = False
        seq = None
        if plan.actions or limit != self.limit:
            # Write ahead: the decision is durable before any command leaves.
            seq = self._journal.record_decision(at=now, cause=cause, limit=limit, plan=plan)
            before = self.limit
            # A new nearest deadline alone changes the plan's order, not the limit to log.
            if before is None or (limit.limit_w, limit.reasons) != (before.limit_w, before.reasons):
                log.info("limit", limit_kw=limit.limit_w / 1000, reasons=list(limit.reasons))
            if plan.actions:
                log.info(
                    "plan",
                    sleep=sum(a.kind is ActionKind.SLEEP for a in plan.actions),
                    wake=sum(a.kind is ActionKind.WAKE for a in plan.actions),
                    expected_kw=plan.expected_w / 1000,
                    budget_kw=plan.budget_w / 1000,
                    notes=list(plan.notes),
                )
        self.limit, self.plan = limit, plan
        if plan.actions:
            await self._dispatch(plan.actions, seq, now)

    # -- signals and deadlines -------------------------------------------------------------

    def _absorb_signals(self) -> None:
        admitted, self._inbox.admitted = self._inbox.admitted, []
        changed: list[Obligation] = []
        for item in admitted:
            admission = item.admission
            if admission.replaced is not None or admission.withdrawn is not None:
                # The revision this one replaces (or cancels) no longer binds the farm.
                self.obligations, gone = withdraw(self.obligations, item.signal.id)
                changed.extend(gone)
            ob = obligation_for(
                item.admission,
                item.signal,
                self._policy,
                item.received_at,
                last_heard=self._inbox.last_heard,
                overrides=self._inbox.overrides,
            )
            if ob is not None and ob.key not in self._known_keys:
                self._known_keys.add(ob.key)
                self.obligations.append(ob)
                changed.append(ob)
        self._journal.record_obligations(changed, MEASURED_BY)

    def _track(self, now: datetime) -> None:
        ends = grant_end_obligations(
            self._inbox.book,
            self._policy,
            now,
            self._known_keys,
            last_heard=self._inbox.last_heard,
            overrides=self._inbox.overrides,
        )
        for ob in ends:
            self._known_keys.add(ob.key)
        self.obligations.extend(ends)
        self.obligations, changed = track(self.obligations, self.measured_w, now)
        for ob in changed:
            kind = ob.status.value
            measured_kw = (ob.measured_w or 0) / 1000
            detail = (
                f"measured {measured_kw:g} kW <= {ob.limit_w / 1000:g} kW after "
                f"{ob.time_to_target_s or 0:.1f} s ({MEASURED_BY})"
                if ob.status is ObligationStatus.REACHED
                else f"measured {measured_kw:g} kW > {ob.limit_w / 1000:g} kW "
                f"at the deadline {ob.due_at:%H:%M:%S} ({MEASURED_BY})"
            )
            (log.info if ob.status is ObligationStatus.REACHED else log.warning)(
                "deadline " + kind,
                signal=ob.signal_id,
                revision=ob.revision,
                kind=ob.kind,
                detail=detail,
            )
            self._publisher.ack(Ack(ob.signal_id, ob.revision, kind, now, detail))
        self._journal.record_obligations([*ends, *changed], MEASURED_BY)
        for ob in self.obligations:
            if ob.status is not ObligationStatus.PENDING:
                self.finished.append(ob)
        self.obligations = [o for o in self.obligations if o.status is ObligationStatus.PENDING]

    # -- commands --------------------------------------------------------------------------

    async def _dispatch(self, actions: tuple[Action, ...], seq: int | None, now: datetime) -> None:
        assert self._tg is not None
        if self._settings.pause_gc_in_fanout and self.in_flight == 0:
            gc.disable()
        batch, left = DISPATCH_FIRST_BATCH, DISPATCH_FIRST_BATCH
        for action in actions:
            spec = self._specs[action.miner_id]
            self._readings.set_pending(action.miner_id, action.kind)
            if action.kind is ActionKind.WAKE:
                self._recent_wakes.append((now, spec.rated_power_w))
            else:
                self._last_shed_at = now
            self.in_flight += 1
            self._activity.begin()
            self._tg.create_task(
                self._command(action, seq), name=f"curtaild.command.{action.miner_id}"
            )
            left -= 1
            if not left:
                await asyncio.sleep(0)
                if batch == DISPATCH_FIRST_BATCH:
                    await asyncio.sleep(0)  # the first connections complete and write first
                batch = min(batch * 8, DISPATCH_MAX_BATCH)
                left = batch

    async def _command(self, action: Action, seq: int | None) -> None:
        miner_id = action.miner_id
        started = self._clock.now()
        outcome, detail, finished = "cancelled", None, None  # stays so only on shutdown
        try:
            async with self._slots:
                reading = await self._run(action)
        except DriverError as err:
            finished = self._clock.now()
            outcome, detail = err.kind, err.detail
            self.commands_failed += 1
            self._failed_since_plan = True  # the plan counted this miner as done: re-plan
            seen = err.reading if isinstance(err, VerificationError) else None
            aimed = Mode.SLEEPING if action.kind is ActionKind.SLEEP else Mode.MINING
            failures = self._readings.fail(
                miner_id, err, command=True, known=seen is not None, aimed=aimed
            )
            if seen is not None:  # a lying miner told us what it is really doing
                self._readings.record(miner_id, seen, finished)
            backoff = min(
                self._settings.retry_backoff_s * 2 ** (failures - 1),
                self._settings.retry_backoff_max_s,
            )
            self._readings.set_retry_after(miner_id, finished + timedelta(seconds=backoff))
            self._readings.set_pending(miner_id, None)
        else:
            finished = self._clock.now()
            outcome = "ok"
            # Records the read-back, clears pending and back-off: one update on the hot path.
            self._readings.record(miner_id, reading, finished, command=True, since=started)
        finally:
            ended = finished or self._clock.now()
            kind = action.kind.value
            self._records.append(
                CommandRecord(seq, miner_id, kind, started, ended, outcome, detail)
            )
            self.commands_sent += 1
            self.in_flight -= 1
            if self.in_flight == 0:
                if self._settings.pause_gc_in_fanout:
                    gc.enable()
                    gc.collect(0)  # what the fan-out left behind, young objects only
                self._inbox.wake.set()  # verify at once rather than at the next tick
            self._activity.end()

    async def _run(self, action: Action) -> MinerReading:
        driver = self._drivers[action.miner_id]
        timeout = self._settings.command_timeouts.get(
            action.miner_id, self._settings.command_timeout_s
        )
        try:
            with within(timeout):
                if action.kind is ActionKind.SLEEP:
                    return await driver.sleep()
                return await driver.wake()
        except TimeoutError:
            raise DeviceTimeoutError(
                action.miner_id, action.kind.value, f"no verified result within {timeout:g} s"
            ) from None
        except DriverError:
            raise
        except Exception as err:
            raise driver_bug(action.miner_id, action.kind.value, err) from err

    # -- bookkeeping -----------------------------------------------------------------------

    def _trim_wakes(self, now: datetime) -> None:
        while self._recent_wakes and now - self._recent_wakes[0][0] >= self._rules.wake_window:
            self._recent_wakes.popleft()

    def _flush(self, now: datetime) -> None:
        records, self._records = self._records, []
        self._journal.record_commands(records)
        self._flushed_at = now

    def _report(self, now: datetime, views: tuple[MinerView, ...]) -> None:
        due = (
            self._last_status is None
            or (now - self._last_status).total_seconds() >= self._settings.status_interval_s
        )
        if due:
            self._last_status = now
            self._publisher.status(self.status(now, views))

    def status(self, now: datetime, views: tuple[MinerView, ...] | None = None) -> dict[str, Any]:
        """The daemon's state as published (retained) and served."""
        views = views if views is not None else self._readings.views()
        counts = {"mining": 0, "sleeping": 0, "unknown": 0, "unhealthy": 0, "pending": 0}
        for view in views:
            if view.pending is not None:
                counts["pending"] += 1
            if not view.healthy:
                counts["unhealthy"] += 1
            if view.reading is None or not view.fresh(now, self._rules.stale_after):
                counts["unknown"] += 1
            elif view.reading.mode is Mode.SLEEPING:
                counts["sleeping"] += 1
            else:
                counts["mining"] += 1
        limit = self.limit
        return {
            "state": "online",
            "site": self.site_id,
            "at": now.isoformat().replace("+00:00", "Z"),
            "limit_kw": limit.limit_w / 1000 if limit else None,
            "reasons": list(limit.reasons) if limit else [],
            "measured_kw": round(self.measured_w / 1000, 3),
            "measured_by": MEASURED_BY,
            "expected_kw": round(self.plan.expected_w / 1000, 3) if self.plan else None,
            "miners": {"total": len(views), **counts},
            "signals": [
                {"id": h.signal.id, "revision": h.signal.revision, "type": h.signal.kind}
                for h in self._inbox.book.held.values()
            ],
            "deadlines": [
                {
                    "id": o.signal_id,
                    "revision": o.revision,
                    "kind": o.kind,
                    "limit_kw": o.limit_w / 1000,
                    "due": o.due_at.isoformat().replace("+00:00", "Z"),
                }
                for o in self.obligations
            ],
        }
