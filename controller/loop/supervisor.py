"""The control loop: the only code that decides what the hardware does.

Each cycle: freeze the latest readings, arbitrate the limit, plan, journal the decision,
send only the commands that change something, then measure, judge every deadline and
report. A new signal wakes the loop at once; otherwise it ticks, faster while commands
or deadlines are pending. The cycle's parts are collaborators, composed in app.py:
dispatch (commands), outlets, deadlines, draw (the closed loop on measured power),
alarms, recovery (what survives a restart) and the reporter (the read model).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import structlog

from controller.clock import Clock
from controller.core import closed_loop, operator, planner, tuning
from controller.core.model import SHEDS, ActionKind, Limit, MinerView, Plan, PlanRules, Snapshot
from controller.core.operator import HoldMode
from controller.core.signals import GridPolicy, arbitrate, emergency_in_force
from controller.intake.desk import Desk
from controller.intake.inbox import Inbox
from controller.loop.alarms import Alarms
from controller.loop.curves import CurveBook
from controller.loop.deadlines import Deadlines
from controller.loop.dispatch import Dispatch
from controller.loop.draw import Draw
from controller.loop.energy import EnergyAccount
from controller.loop.ledger import Ledger, LoopObserver, LoopSettings
from controller.loop.measure import Measurements
from controller.loop.outlets import Outlets
from controller.loop.pools import PoolCheck
from controller.loop.recovery import Recovery
from controller.loop.report import Decision, Reporter
from controller.loop.telemetry import Activity, Poller, Readings
from controller.record.journal import Journal, JournalError

log = structlog.get_logger("curtaild.supervisor")

# Command results are journaled in batches (the decision before them is write-ahead).
FLUSH_INTERVAL = timedelta(seconds=1)
# A plan without actions expects what the last one did: worked out again this often.
EXPECT_EVERY = timedelta(seconds=10)
# The wall clock more than this from the daemon's steady time is a step worth saying.
CLOCK_STEP_S = 2.0
# A step that the system calls synchronized and that lasts this long is adopted: curtaild
# restarts (the journal resumes the ladder) on the wall clock.
CLOCK_ADOPT_AFTER = timedelta(seconds=60)


@dataclass(slots=True)
class _LastPlan:
    """What the wire gating needs of the plans made: when the last was made, the last that
    sent commands, and whether the loop is in an excursion (Supervisor._watch_excursion)."""

    at: datetime | None = None
    sent: Plan | None = None
    excursion: closed_loop.Excursion = field(default_factory=closed_loop.Excursion)


@dataclass(frozen=True, slots=True)
class Parts:
    """The cycle's collaborators."""

    ledger: Ledger
    dispatch: Dispatch
    outlets: Outlets
    deadlines: Deadlines
    draw: Draw
    alarms: Alarms
    recovery: Recovery
    reporter: Reporter
    energy: EnergyAccount | None = None


class Supervisor:
    """Reads, decides, writes, reports; one cycle at a time."""

    def __init__(
        self,
        *,
        readings: Readings,
        poller: Poller,
        inbox: Inbox,
        journal: Journal,
        clock: Clock,
        policy: GridPolicy,
        rules: PlanRules,
        settings: LoopSettings,
        activity: Activity,
        parts: Parts,
        measurements: Measurements | None = None,
        desk: Desk | None = None,
        pools: PoolCheck | None = None,
        curves: CurveBook | None = None,
    ) -> None:
        self._readings = readings
        self._poller = poller
        self._inbox = inbox
        self._journal = journal
        self._clock = clock
        self._policy = policy
        self._rules = rules
        self._settings = settings
        self._activity = activity
        self._measurements = measurements
        self._desk = desk
        self._pools = pools
        self.curves = curves
        self._expected_at: datetime | None = None
        self._expected: float | None = None
        self.ledger = parts.ledger
        self.commands = parts.dispatch
        self.outlets = parts.outlets
        self.deadlines = parts.deadlines
        self.draw = parts.draw
        self.alarms = parts.alarms
        self._recovery = parts.recovery
        self._reporter = parts.reporter
        self.energy = parts.energy
        self.limit: Limit | None = None
        self.plan: Plan | None = None
        self.cycles = 0
        self.last_cycle_at: datetime | None = None
        self.ready = asyncio.Event()
        self.on_cycle: Callable[[], None] | None = None  # a healthy cycle ended (watchdog)
        self.draining = False  # stopping: no new commands
        self._last = _LastPlan()
        self._flushed_at = clock.now()
        self._nudged: str | None = None
        # The fleet never changes, so its shed order is computed once, not per plan; an
        # operator's run holds move miners to its end (shed last, woken first).
        self._base_order = planner.shed_order(readings.views())
        self._order = self._base_order
        self._desk_version = -1
        self.clock_step_s: float | None = None  # the wall clock's step from our time, if any
        self._stepped_at: datetime | None = None
        self.restart_wanted = asyncio.Event()  # the daemon should restart (serve() does)
        self.restart_reason: str | None = None
        # Decisions enforced while the journal could not take them: journaled once it can.
        self._catch_up_later: deque[tuple[datetime, str, Limit, Plan]] = deque()
        self.draw.on_trip = self.deadlines.add
        self.draw.on_event = self._inbox.wake.set
        if measurements is not None:
            measurements.on_meter = self.draw.on_meter
        self._recovery.restore()
        now = clock.now()
        self._reporter.prime(now, readings.views(), self._decision(now))

    @property
    def observer(self) -> LoopObserver | None:
        return self.ledger.observer

    @observer.setter
    def observer(self, observer: LoopObserver | None) -> None:
        """Metrics watch commands, deadlines and cycles."""
        self.ledger.observer = self.deadlines.observer = observer

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:  # every command task lives here
                self.commands.start(tg)
                if self.outlets.wired:
                    tg.create_task(self.outlets.run(), name="curtaild.outlets")
                await self._clock.wait(
                    self._readings.first_sweep, self._settings.first_read_timeout_s
                )
                # A restart may come mid-curtailment: hold wakes as if we had just shed.
                self.commands.last_shed_at = self._clock.now()
                await self._recovery.resume(self.commands, self.ledger)
                await self.cycle("startup")
                self.ready.set()
                self._reporter.feed.beat(self._clock.now(), self.cycles, ready=True)
                if not self.draining:  # reads wait while a cycle is due
                    self._poller.defer_to = self._inbox.wake
                while True:
                    busy = self.ledger.in_flight > 0 or self.pending_deadlines()
                    tick = self._settings.fast_tick_s if busy else self._settings.tick_s
                    await self._clock.wait(self._inbox.wake, tick)
                    self._inbox.wake.clear()
                    cause, self._nudged = self._nudged, None
                    await self.cycle("signal" if self._inbox.admitted else cause or "tick")
        finally:
            self._poller.defer_to = None
            self._poller.resume()
            if self._settings.pause_gc_in_fanout:
                gc.enable()  # never leave the collector off behind us

    def pending_deadlines(self) -> bool:
        return self.deadlines.running(self._clock.now())

    def nudge(self, cause: str) -> None:
        """Something outside the inbox changed what the loop must do (an operator): plan
        again at once."""
        self.replan(f"operator {cause}")

    def replan(self, cause: str) -> None:
        """Plan again at once, for `cause` (a collaborator's finding: pools to enforce)."""
        self._nudged = cause
        self._inbox.wake.set()

    async def cycle(self, cause: str) -> None:
        """One pass: freeze, decide, journal, write, track, report.

        A cycle something woke (not a tick) holds telemetry's reads and the cyclic
        collector off until it ends: the decision and its first commands are the path from
        a signal to the wire (a collection walking the fleet there cost ~100 ms)."""
        self._activity.begin()
        started = time.perf_counter()  # cost of the pass, for metrics; never for control
        woken = cause != "tick"
        if woken:
            self._poller.pause()
            if self._settings.pause_gc_in_fanout:
                gc.disable()
        try:
            now = self._clock.now()
            views = self._readings.views()
            try:
                views = await self._control(cause, now)
            except JournalError:
                # Journal.error says why, once; each cycle tries again. What is held
                # stays in force, and nothing was sent for what could not be written.
                log.debug("cycle stopped at an unwritable journal")
            if self.energy is not None:
                self.energy.cycle(now, views)  # journals a closed minute; never raises for it
            self._reporter.report(now, views, lambda: self._decision(now), changed=woken)
            self.cycles += 1
            self.last_cycle_at = now
            self._reporter.feed.beat(now, self.cycles, ready=self.ready.is_set())
            if self.observer is not None:
                self.observer.cycle(time.perf_counter() - started)
            if self.on_cycle is not None:
                self.on_cycle()
        finally:
            # Every cycle, tick or not, hands the reads back: a wake that met a read worker
            # (a fan-out settling, a relay trip) pauses them until the cycle it causes ends.
            self._poller.resume()
            if woken and self._settings.pause_gc_in_fanout and self.ledger.in_flight == 0:
                gc.enable()  # else the fan-out's last result does (Ledger.settled)
            self._activity.end()

    def _decision(self, now: datetime) -> Decision:
        return Decision(
            limit=self.limit,
            grid_limit=self.grid_limit(now),
            plan=self.plan,
            ready=self.ready.is_set(),
            wall_clock_offset_s=self.clock_step_s,
        )

    async def _control(self, cause: str, now: datetime) -> tuple[MinerView, ...]:
        """The cycle's work up to its report. Every change is journaled before it takes
        effect, so a JournalError leaves what is held as it was, to be tried again; each
        step meets it on its own, so the draw is still measured and deadlines judged while
        the journal is down."""
        failed: list[JournalError] = []

        def attempt(step: Callable[[], None]) -> None:
            try:
                step()
            except JournalError as err:
                failed.append(err)

        if self._journal.error is not None:
            self._journal.probe(now)  # nothing else may write to find it writable again
        if self._catch_up_later and self._journal.error is None:
            attempt(lambda: self._catch_up(now))
        attempt(self._absorb_signals)
        attempt(lambda: self._inbox.prune(now))
        self._follow_desk(now)
        limit = self._limit(now)
        caught, lost = self.draw.detect_lies(now), self.draw.targets_lost(now)
        if caught or lost:
            self.ledger.replan = True
        attempt(lambda: self.draw.forgive(now))
        self._watch_clock(now)
        views = self._views()
        self._watch_excursion(limit)
        if not self.draining and self._must_plan(cause, limit):
            try:
                await self._decide(cause, now, limit, views)
            except JournalError as err:
                failed.append(err)
        # After the decision: a fleet-wide sum is not on the path to the first command.
        draw = self._measure(now, views)
        attempt(lambda: self.deadlines.judge(now, draw.measured_w, draw.measured_by))
        self._poller.set_fast(self.pending_deadlines())
        if self.ledger.in_flight == 0 or now - self._flushed_at >= FLUSH_INTERVAL:
            attempt(lambda: self._flush(now))
        if failed:
            raise failed[0]
        return views

    def _measure(self, now: datetime, views: tuple[MinerView, ...]) -> Draw:
        """The draw measured, and what the readings teach: the unexplained draw, and each
        model's curve."""
        draw = self.draw
        draw.measure(now, views)
        draw.learn(
            now, views, quiet=self.ledger.in_flight == 0, last_switch=self.outlets.last_switched()
        )
        if self.curves is not None:
            self.curves.observe(now, views)
        return draw

    async def drain(self, grace_s: float) -> bool:
        """Stop planning, let the commands in flight finish (restores still queued are
        dropped: no power-up while stopping), flush the journal. False if `grace_s`
        passed with commands still in flight."""
        self.draining = True
        self._poller.defer_to = None  # no cycle runs any more to hand the floor back
        self._poller.resume()
        self.outlets.drop_queued_restores()
        deadline = self._clock.time() + grace_s
        while self.ledger.in_flight > 0 and self._clock.time() < deadline:
            self._inbox.wake.clear()
            await self._clock.wait(self._inbox.wake, min(0.25, deadline - self._clock.time()))
        try:
            self._flush(self._clock.now())
        except JournalError:
            log.warning(
                "stopping with command results not journaled: the journal is unwritable",
                records=len(self.ledger.records),
            )
        return self.ledger.in_flight == 0

    def _absorb_signals(self) -> None:
        """The deadlines the admitted signals carry; offered again next cycle if they
        cannot be journaled."""
        admitted = self._inbox.admitted
        if admitted:
            self.deadlines.absorb(admitted, self.draw.measured_by)
            self._inbox.admitted = []

    def _follow_desk(self, now: datetime) -> None:
        """Drop the operator's expired changes; re-derive the shed order on a change."""
        desk = self._desk
        if desk is None:
            return
        try:
            desk.expire(now)
        except JournalError:
            # An expiry only loosens (arbitrate ignores a lapsed override anyway): keep
            # controlling, and try to journal it again next cycle.
            log.exception("operator expiry could not be journaled; retrying next cycle")
        if desk.version == self._desk_version:
            return
        self._desk_version = desk.version
        ids = [v.spec.id for v in self._readings.views()]
        self._order = operator.shed_order(self._base_order, ids, desk.held(HoldMode.RUN))

    def _views(self) -> tuple[MinerView, ...]:
        """The readings, with the operator's sleep holds and the miners the pools rule
        keeps asleep marked (the planner never walks a held-asleep miner back)."""
        views = self._readings.views()
        kept = self._pools.kept_asleep() if self._pools is not None else {}
        if self._desk is None and not kept:
            return views
        holds = self._desk.holds if self._desk is not None else {}
        return operator.mark_held_asleep(views, holds, kept)

    def grid_limit(self, now: datetime) -> Limit:
        """What the grid (and the frequency relay) allows now, without operator overrides:
        an override above it would never bind."""
        return arbitrate(
            self._inbox.book,
            self._policy,
            now,
            last_heard=self._inbox.last_heard,
            overrides=self.draw.relay(now),
        )

    def _limit(self, now: datetime) -> Limit:
        relay = self.draw.relay(now)
        limit = arbitrate(
            self._inbox.book,
            self._policy,
            now,
            last_heard=self._inbox.last_heard,
            overrides=(*self._inbox.overrides, *relay),
        )
        emergency = bool(relay) or emergency_in_force(self._inbox.book, now)
        return replace(limit, due_at=self.deadlines.nearest_due(now), emergency=emergency)

    def emergency(self) -> bool:
        """An emergency binds now (outlets then switch back to back)."""
        return self.limit is not None and self.limit.emergency

    def _watch_clock(self, now: datetime) -> None:
        """The daemon keeps its steady time (controller/clock.py). A wall clock that steps
        away from it is said once, journaled and shown, and said again when they agree; one
        the system calls synchronized that stays away CLOCK_ADOPT_AFTER is adopted by a
        restart (the journal resumes the ladder, its times carried across the step)."""
        offset = self._clock.wall_offset_s()
        if abs(offset) <= CLOCK_STEP_S:
            if self.clock_step_s is not None:
                self.clock_step_s = self._stepped_at = None
                log.info("wall clock agrees with curtaild's time again", offset_s=offset)
                self._event(now, "clock", "agrees", {"offset_s": round(offset, 3)})
            return
        if self.clock_step_s is None:
            self._stepped_at = now
            log.warning(
                "wall clock stepped: deadlines, holds and grant windows keep curtaild's time",
                offset_s=round(offset, 1),
            )
            self._event(now, "clock", "stepped", {"offset_s": round(offset, 3)})
        self.clock_step_s = offset
        stepped_at = self._stepped_at or now
        if (
            self.restart_reason is None
            and now - stepped_at >= CLOCK_ADOPT_AFTER
            and self._clock.wall_synchronized()
        ):
            self.restart_reason = f"adopting the synchronized wall clock ({offset:+.0f} s)"
            log.warning("restarting to adopt the wall clock", offset_s=round(offset, 1))
            self._event(now, "clock", "adopting", {"offset_s": round(offset, 3)})
            with contextlib.suppress(JournalError):  # without it, times restore unshifted
                self._journal.record_commands([], site={"clock": {"adopted_s": offset}})
            self.restart_wanted.set()

    def _event(self, now: datetime, kind: str, subject: str, detail: dict[str, float]) -> None:
        with contextlib.suppress(JournalError):  # reported anyway; Journal.error says why
            self._journal.record_event(now, kind, subject, detail)

    def _must_plan(self, cause: str, limit: Limit) -> bool:
        """Re-planning a large fleet is not free. While a fan-out is on the wire, plan again
        only when something the plan depends on changed: a signal, the limit, a failed
        command, a draw that rose since the plan (`_watch_excursion`); commands that succeed land
        exactly where the plan counted them, and telemetry is paused until the wire is
        quiet."""
        last = self._last
        sent = last.sent
        return (
            cause != "tick"
            or limit != self.limit
            or self.ledger.in_flight == 0
            or self.ledger.replan
            or last.at is None
            # Staggered wakes go out a window at a time while the slow ones (a pre-heat, a
            # bmminer restart) are still on the wire; only a shed's fan-out waits for quiet.
            or sent is None
            or not any(a.kind in SHEDS for a in sent.actions)
            or last.excursion.on
        )

    def _watch_excursion(self, limit: Limit) -> None:
        """Whether the loop is in an excursion: the site meter measuring the draw over the
        limit, risen above the lowest it measured since the plan on the wire was sent,
        while commands are out. That is something the shed on the wire does not answer (a
        site power blip brought every unit back mining while an allocation's swap of stock
        Antminers, which verify for up to a minute, was on the wire, and the loop sat ~55 s
        over the limit: chaos 'blip').
        From the rise until the draw is back under the limit or the wire is quiet, every
        tick plans: readings arrive over seconds, and the in-flight sleeps the blip undid
        count at rated power only once their readings age. A shed's own ramps only bring
        the draw down, so an ordinary fan-out does not start one. Only the meter is judged:
        without one the draw is the firmware's figures, in which in-flight units rise to
        rated as their readings age, and an unknown draw (a stale meter) has no rise."""
        last = self._last
        was = last.excursion
        if self.draining:
            last.excursion = closed_loop.Excursion()  # nothing plans while stopping
            return
        state = last.excursion = closed_loop.watch(
            was,
            self._metered_w(),
            limit.limit_w,
            margin_w=self._rules.margin_w,
            in_flight=self.ledger.in_flight > 0,
        )
        if state.on and not was.on:
            log.warning(
                "draw rose over the limit while commands are on the wire: planning each tick",
                measured_kw=(state.last_w or 0) / 1000,
                lowest_kw=(state.lowest_w or 0) / 1000,
                limit_kw=limit.limit_w / 1000,
            )

    def _sent(self, plan: Plan) -> None:
        """`plan` goes on the wire: the draw it is judged from is the meter's now."""
        last = self._last
        last.sent = plan
        last.excursion = closed_loop.sent(last.excursion, self._metered_w())

    def _metered_w(self) -> int | None:
        """The draw the site meter measures (None: no meter, a stale one, or not read
        yet: `measured_w` starts at 0 and is the firmware's figures without one)."""
        draw = self.draw
        return draw.measured_w if draw.measured_by == "meter" and draw.meter is not None else None

    async def _decide(
        self, cause: str, now: datetime, limit: Limit, views: tuple[MinerView, ...]
    ) -> None:
        commands = self.commands
        commands.trim_wakes(now)
        ambient = self._measurements.ambient if self._measurements is not None else {}
        snapshot = Snapshot(
            now,
            views,
            tuple(commands.recent_wakes),
            commands.last_shed_at,
            self._order,
            ambient,
            self.curves.curves if self.curves is not None else None,
            self._desk.held(HoldMode.RUN) if self._desk is not None else frozenset(),
        )
        offset_w = self.draw.offset_w
        budget = replace(limit, limit_w=limit.limit_w - offset_w) if offset_w else limit
        metered = self._metered_w()
        over = (metered, limit.limit_w) if metered is not None and metered > limit.limit_w else None
        plan = planner.plan(snapshot, budget, self._rules, metered_over=over)
        hold_sleeps: frozenset[str] = frozenset()
        kept = self._pools.kept_asleep() if self._pools is not None else {}
        if self._desk is not None or kept:
            desk = self._desk
            plan, hold_sleeps = operator.operator_steps(
                plan,
                views,
                desk.holds if desk is not None else {},
                desk.automation if desk is not None else operator.Automation(),
                now,
                kept_asleep=kept,
            )
        self._last.at = now
        seq = None
        if plan.actions or limit != self.limit:
            # Write ahead: the decision is durable before any command leaves.
            try:
                seq = self._journal.record_decision(at=now, cause=cause, limit=limit, plan=plan)
            except JournalError:
                await self._enforce_unjournaled(cause, now, limit, plan, hold_sleeps)
                raise
            self._log(limit, plan)
        self.ledger.replan = False
        commands.hold_sleeps |= hold_sleeps
        commands.retune_sleeps |= _retune_sleeps(plan)
        self.limit, self.plan = limit, plan
        if plan.actions:
            self._sent(plan)
            await commands.send(plan.actions, seq, now)
        self._expect(now, snapshot, plan)
        self.alarms.judge(now, plan)  # after the commands: an alarm's journal row never holds them

    def _expect(self, now: datetime, snapshot: Snapshot, plan: Plan) -> None:
        """The hashrate the plan expects, on the curves: after its commands are sent (a walk
        over the fleet is not on the path to the first command); for a plan without
        actions, again only every EXPECT_EVERY (nothing it expects changed)."""
        if snapshot.curves is None:
            return
        before = self._expected_at
        if plan.actions or before is None or now - before >= EXPECT_EVERY:
            self._expected = tuning.expected_ths(snapshot, plan.actions)
            self._expected_at = now
        self.plan = replace(plan, expected_ths=self._expected)

    def _log(self, limit: Limit, plan: Plan) -> None:
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

    async def _enforce_unjournaled(
        self, cause: str, now: datetime, limit: Limit, plan: Plan, hold_sleeps: frozenset[str]
    ) -> None:
        """The decision cannot be journaled. Sheds toward a limit the journal already holds
        still go out (the limit is kept; each is journaled once the journal takes writes);
        nothing that loosens does."""
        # Grid sheds only: a sleep the allocation chose waits for the journal like a wake.
        sheds = tuple(a for a in plan.actions if a.kind in SHEDS and a.miner_id not in plan.tuned)
        if not sheds:
            return
        log.warning(
            "journal unwritable: enforcing the held limit without a journal record",
            sheds=len(sheds),
            limit_kw=limit.limit_w / 1000,
        )
        kept = replace(plan, actions=sheds, notes=(*plan.notes, "journal unwritable: sheds only"))
        self._catch_up_later.append((now, cause, limit, kept))
        self.ledger.replan = False
        self.commands.hold_sleeps |= hold_sleeps & {a.miner_id for a in sheds}
        self.plan = kept
        self._sent(kept)
        await self.commands.send(sheds, None, now)

    def _catch_up(self, now: datetime) -> None:
        """Journal the decisions made while the journal could not be written."""
        while self._catch_up_later:
            at, cause, limit, plan = self._catch_up_later[0]
            self._journal.record_decision(
                at=at, cause=f"{cause} (journaled late, at {now:%H:%M:%S})", limit=limit, plan=plan
            )
            self._catch_up_later.popleft()

    def _flush(self, now: datetime) -> None:
        """Command results and where they left the ladder, in one transaction; kept in
        memory until it commits."""
        site = self._recovery.site_changes(now)
        ladder = self._readings.take_ladder_changes()
        records = self.ledger.take()
        if not (records or ladder or site):
            return
        try:
            self._journal.record_commands(records, ladder=ladder, site=site)
        except JournalError:
            self._readings.redo_ladder_changes(ladder)
            self.ledger.keep(records)
            raise
        self._recovery.saved(site)
        self._flushed_at = now


def _retune_sleeps(plan: Plan) -> frozenset[str]:
    """The sleeps the allocation chose: no grid sheds (not counted on the ladder, and they
    withdraw no queued restore), though wakes wait for their draw to settle."""
    if not plan.tuned:
        return frozenset()
    return frozenset(
        a.miner_id for a in plan.actions if a.kind is ActionKind.SLEEP and a.miner_id in plan.tuned
    )
