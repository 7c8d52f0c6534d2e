"""The control loop, and the only code that sends commands to hardware.

Each cycle: freeze the latest readings, arbitrate the limit, plan, journal the decision,
dispatch only the commands that change something (concurrently, each under a deadline),
then track every deadline against the measured draw and report. A new signal wakes the
loop at once; otherwise it ticks, faster while commands or deadlines are pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from controller.clock import Clock
from controller.core import closed_loop, frequency, operator, planner
from controller.core.escalation import lie
from controller.core.frequency import FrequencyRules, FrequencyState
from controller.core.model import (
    SHEDS,
    Action,
    ActionKind,
    Limit,
    MinerSpec,
    MinerView,
    OutletReading,
    Plan,
    PlanRules,
    Snapshot,
    coming_back_w,
    measured_w,
    tally,
)
from controller.core.operator import HoldMode
from controller.core.signals import (
    GridPolicy,
    Obligation,
    ObligationStatus,
    Override,
    arbitrate,
    emergency_in_force,
    grant_end_obligations,
    obligation_for,
    track,
    withdraw,
)
from controller.inbox import Inbox
from controller.journal import CommandRecord, Journal, JournalError
from controller.measure import Measurements, MeterSample
from controller.operator import Desk
from controller.publish import Ack, Publisher
from controller.telemetry import Activity, Poller, Readings, parse_time
from drivers.deadline import within
from drivers.errors import (
    DeviceTimeoutError,
    DriverError,
    RejectedError,
    SessionBusyError,
    UnreachableError,
    VerificationError,
    driver_bug,
)
from drivers.pdu.modbus_pdu import ModbusPdu
from drivers.transport.admission import Gate
from drivers.types import Capability, MinerDriver, MinerReading, Mode

log = structlog.get_logger("curtaild.supervisor")

# Commands go out in batches growing eightfold from 8, yielding to the loop between them:
# each connection started in a loop pass does its set-up before any of them completes,
# so one batch of 10,000 puts the first command ~0.8 s late; doubling from 8 starts the
# last command ~0.2 s late at 1,000 miners (both measured). Eightfold does both well.
DISPATCH_FIRST_BATCH = 8
DISPATCH_MAX_BATCH = 4096
KEEP_FINISHED = 200  # finished deadlines kept in memory for status and the demo
# In-memory histories (outlet switches, cold cuts, frequency events) keep a window: a
# daemon runs for months, and the journal holds the full record.
KEEP_HISTORY = 1000
# A resumed sleep (sent before a restart) reads the miner again this often while it
# cannot answer (a stock Antminer restarting its mining process).
RESUME_POLL_S = 1.0
# The unexplained draw learned before a restart is trusted this long after it was learned.
OFFSET_TRUSTED_FOR = timedelta(minutes=10)
# The wall clock more than this from the daemon's steady time is a step worth saying.
CLOCK_STEP_S = 2.0
# A step that the system calls synchronized and that lasts this long is adopted: curtaild
# restarts (the journal resumes the ladder) on the wall clock.
CLOCK_ADOPT_AFTER = timedelta(seconds=60)
# A power target that failed for a passing reason (a timeout) is skipped this long; one the
# firmware refuses, for good.
NO_LOWER_FOR = timedelta(hours=1)
# Command results are journaled in batches (the decision before them is write-ahead).
FLUSH_INTERVAL = timedelta(seconds=1)
# Site draw against the limit, for the dashboard's last hour (720 points at 5 s).
HISTORY_INTERVAL = timedelta(seconds=5)
HISTORY_POINTS = 720


class LoopObserver(Protocol):
    """What the loop reports as it goes (Prometheus metrics; see adapters/metrics.py)."""

    def command(self, action: str, family: str, seconds: float, outcome: str) -> None: ...
    def cycle(self, seconds: float) -> None: ...
    def deadline(self, kind: str, status: str) -> None: ...


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


@dataclass(frozen=True, slots=True)
class MeasureSettings:
    """How the loop uses measured power and the escalation ladder's hardware step."""

    meter_stale_after_s: float = 3.0
    meter_lag_s: float = 1.0  # the meter's own refresh: a reading reflects this much earlier
    generation_exempt: bool = False
    cut_batch_size: int = 8
    cut_batch_spacing_s: float = 0.5  # not under an emergency
    restore_batch_size: int = 4  # every restored miner boots at once: inrush
    restore_batch_spacing_s: float = 2.0
    switch_timeout_s: float = 3.0
    lie_grace_s: float = 0.0
    lie_memory_s: float | None = 86_400.0  # a lie is remembered this long (None: for good)


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
        measurements: Measurements | None = None,
        outlets: Mapping[str, tuple[ModbusPdu, int]] | None = None,
        measure: MeasureSettings | None = None,
        frequency_rules: FrequencyRules | None = None,
        desk: Desk | None = None,
    ) -> None:
        """`known_keys`: every deadline ever journaled, so a restart never re-creates one
        that was already settled. `desk`: the operator's holds and automation switch."""
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
        self.measured_w: int | None = 0  # None: unknown (a stale meter)
        self.in_flight = 0
        self.cycles = 0
        self.commands_sent = 0
        self.commands_failed = 0
        self.ready = asyncio.Event()
        # The fleet never changes, so its shed order is computed once, not per plan; an
        # operator's run holds move miners to its end (shed last, woken first).
        self._base_order = planner.shed_order(readings.views())
        self._order = self._base_order
        self._desk = desk
        self._desk_version = -1
        # Sleeps an operator's hold forces: not grid sheds, so they neither hold the
        # fleet's wakes nor withdraw queued restores.
        self._hold_sleeps: set[str] = set()
        self._nudged: str | None = None
        self.observer: LoopObserver | None = None
        self.history: deque[tuple[datetime, int | None, int | None]] = deque(
            maxlen=HISTORY_POINTS
        )  # (at, measured W, limit W)
        self.last_cycle_at: datetime | None = None
        self._init_measured(specs, measurements, outlets, measure, frequency_rules)

    def _init_measured(
        self,
        specs: Mapping[str, MinerSpec],
        measurements: Measurements | None,
        outlets: Mapping[str, tuple[ModbusPdu, int]] | None,
        measure: MeasureSettings | None,
        frequency_rules: FrequencyRules | None,
    ) -> None:
        self._measurements = measurements
        self._outlets = dict(outlets or {})
        self._measure = measure or MeasureSettings()
        metered = measurements is not None and measurements.meter is not None
        self.measured_by = "meter" if metered else "firmware"
        self.offset_w = 0  # measured draw the miners' own figures do not explain
        self._learned_at: datetime | None = None
        self.meter: MeterSample | None = None
        self._switch_queue: deque[tuple[Action, int | None]] = deque()
        self._switch_wake = asyncio.Event()
        # (done at, miner, on), the latest KEEP_HISTORY
        self.switches: deque[tuple[datetime, str, bool]] = deque(maxlen=KEEP_HISTORY)
        self.escalations: dict[str, set[str]] = {k.value: set() for k in SHEDS}
        self.lying_detected: set[str] = set()
        self._target_lost_at: dict[str, datetime] = {}
        self._watched = [m for m, spec in specs.items() if spec.outlet is not None]
        self._freq_rules = frequency_rules
        self._freq = FrequencyState()
        self.frequency_events: deque[tuple[datetime, str, float | None]] = deque(
            maxlen=KEEP_HISTORY
        )
        self.frequency_trips = 0
        self.alarms: dict[tuple[str, str], tuple[datetime, str]] = {}  # standing heater floors
        self.cold_cuts: deque[tuple[datetime, str, str]] = deque(maxlen=KEEP_HISTORY)
        self.cold_cut_count = 0  # every cold cut since start (the deque keeps the latest)
        self.alarm_counts: Counter[str] = Counter()  # alarms raised, by kind
        self.warm_wakes: set[str] = set()  # miners woken gently
        self.peak_wake_w = 0  # the steepest restart rate sent, W per second
        self._preheats: dict[str, asyncio.Task[None]] = {}  # gentle wakes still pre-heating
        self.on_cycle: Callable[[], None] | None = None  # a healthy cycle ended (watchdog)
        self.draining = False  # stopping: no new commands
        self._withdrawn: set[str] = set()
        self._resumed: dict[str, datetime] = {}  # commands resumed after a restart: sent at
        self._site_pending: dict[str, Any] = {}  # site state to write at the next flush
        self.clock_step_s: float | None = None  # the wall clock's step from our time, if any
        self._stepped_at: datetime | None = None
        self.restart_wanted = asyncio.Event()  # the daemon should restart (serve() does)
        self.restart_reason: str | None = None
        # Decisions enforced while the journal could not take them: journaled once it can.
        self._catch_up_later: deque[tuple[datetime, str, Limit, Plan]] = deque()
        self._site_saved: dict[str, Any] = {}
        if measurements is not None:
            measurements.on_meter = self.on_meter
        self._unsettled = self._restore()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:  # every command task lives here
                self._tg = tg
                if self._outlets:
                    tg.create_task(self._switch_outlets(), name="curtaild.outlets")
                await self._clock.wait(
                    self._readings.first_sweep, self._settings.first_read_timeout_s
                )
                # A restart may come mid-curtailment: hold wakes as if we had just shed.
                self._last_shed_at = self._clock.now()
                await self._resume()
                await self.cycle("startup")
                self.ready.set()
                while True:
                    busy = self.in_flight > 0 or self.pending_deadlines()
                    tick = self._settings.fast_tick_s if busy else self._settings.tick_s
                    await self._clock.wait(self._inbox.wake, tick)
                    self._inbox.wake.clear()
                    cause, self._nudged = self._nudged, None
                    await self.cycle("signal" if self._inbox.admitted else cause or "tick")
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

    def nudge(self, cause: str) -> None:
        """Something outside the inbox changed what the loop must do (an operator): plan
        again at once."""
        self._nudged = f"operator {cause}"
        self._inbox.wake.set()

    async def cycle(self, cause: str) -> None:
        """One pass: freeze, decide, journal, write, track, report."""
        self._activity.begin()
        started = time.perf_counter()  # cost of the pass, for metrics; never for control
        try:
            now = self._clock.now()
            views = self._readings.views()
            try:
                views = await self._control(cause, now)
            except JournalError:
                # Journal.error says why, once; each cycle tries again. What is held
                # stays in force, and nothing was sent for what could not be written.
                log.debug("cycle stopped at an unwritable journal")
            self._report(now, views)
            self.cycles += 1
            self.last_cycle_at = now
            if self.observer is not None:
                self.observer.cycle(time.perf_counter() - started)
            if self.on_cycle is not None:
                self.on_cycle()
        finally:
            self._activity.end()

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
        if self._watched:
            self._detect_lies(now)
        self._targets_lost(now)
        attempt(lambda: self._forgive(now))
        self._watch_clock(now)
        views = self._views()
        if not self.draining and self._must_plan(cause, limit):
            try:
                await self._decide(cause, now, limit, views)
            except JournalError as err:
                failed.append(err)
        # After the decision: a fleet-wide sum is not on the path to the first command.
        self.measured_w = self._measured(now, views)
        self._learn(now, views)
        attempt(lambda: self._track(now))
        self._poller.set_fast(self.pending_deadlines())
        if self.in_flight == 0 or now - self._flushed_at >= FLUSH_INTERVAL:
            attempt(lambda: self._flush(now))
        if failed:
            raise failed[0]
        return views

    async def drain(self, grace_s: float) -> bool:
        """Stop planning, let the commands in flight finish (restores still queued are
        dropped: no power-up while stopping), flush the journal. False if `grace_s`
        passed with commands still in flight."""
        self.draining = True
        self._drop_queued_restores()
        deadline = self._clock.time() + grace_s
        while self.in_flight > 0 and self._clock.time() < deadline:
            self._inbox.wake.clear()
            await self._clock.wait(self._inbox.wake, min(0.25, deadline - self._clock.time()))
        try:
            self._flush(self._clock.now())
        except JournalError:
            log.warning(
                "stopping with command results not journaled: the journal is unwritable",
                records=len(self._records),
            )
        return self.in_flight == 0

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
        """The readings, with the operator's sleep holds marked (the planner never walks
        a held-asleep miner back)."""
        views = self._readings.views()
        return views if self._desk is None else operator.mark_held_asleep(views, self._desk.holds)

    def grid_limit(self, now: datetime) -> Limit:
        """What the grid (and the frequency relay) allows now, without operator overrides:
        an override above it would never bind."""
        return arbitrate(
            self._inbox.book,
            self._policy,
            now,
            last_heard=self._inbox.last_heard,
            overrides=self._relay(now),
        )

    def _limit(self, now: datetime) -> Limit:
        relay = self._relay(now)
        limit = arbitrate(
            self._inbox.book,
            self._policy,
            now,
            last_heard=self._inbox.last_heard,
            overrides=(*self._inbox.overrides, *relay),
        )
        emergency = bool(relay) or emergency_in_force(self._inbox.book, now)
        return replace(limit, due_at=self._nearest_due(now), emergency=emergency)

    def _relay(self, now: datetime) -> tuple[Override, ...]:
        """The frequency relay's limit while it is tripped."""
        rules, state = self._freq_rules, self._freq
        if rules is None or not state.tripped:
            return ()
        limit = frequency.limit_at(state, rules, now)
        rising = " (frequency recovered; rising)" if state.recovered_at is not None else ""
        why = f"{state.trip_hz:g} Hz below {rules.trip_below_hz:g} Hz{rising}"
        return (Override("under-frequency", limit, why, "the frequency relay"),)

    def _measured(self, now: datetime, views: tuple[MinerView, ...]) -> int | None:
        """The draw the grid sees: the meter's import where there is a meter (None while it
        is stale: unknown, so over every limit), else the miners' own figures."""
        if self._measurements is None or self._measurements.meter is None:
            return measured_w(views, now, self._rules.stale_after)
        self.meter = self._measurements.meter_fresh(now, self._measure.meter_stale_after_s)
        if self.meter is None:
            return None
        reading = self.meter.reading
        # The meter's import is net of on-site generation. Where generation is exempt that
        # is what the limit applies to; where it is not, the limit is on the farm's gross
        # draw, so the generation it covered is added back.
        gross = 0.0 if self._measure.generation_exempt else (reading.generation_w or 0.0)
        return round(reading.import_w + gross)

    def _learn(self, now: datetime, views: tuple[MinerView, ...]) -> None:
        """Close the loop: once every command has landed and the meter has seen it, the
        draw the miners' figures do not explain is taken off the next plan's budget, so a
        draw that stays above the limit sheds more."""
        meter = self.meter
        if meter is None or self.in_flight:
            return
        last_switch = self.switches[-1][0] if self.switches else None  # a restore too
        moved = closed_loop.settled_at(views, last_switch)
        if not closed_loop.settled(meter.at, moved, timedelta(seconds=self._measure.meter_lag_s)):
            return
        unexplained = (self.measured_w or 0) - measured_w(views, now, self._rules.stale_after)
        if unexplained - self.offset_w > self._rules.margin_w:
            log.info(
                "meter reads more than the miners explain",
                unexplained_kw=unexplained / 1000,
                was_kw=self.offset_w / 1000,
            )
        learned = closed_loop.learn(
            closed_loop.Offset(self.offset_w, self._learned_at), unexplained, now
        )
        self.offset_w, self._learned_at = learned.w, learned.learned_at

    def _detect_lies(self, now: datetime) -> None:
        grace = timedelta(seconds=self._measure.lie_grace_s)
        for miner_id in self._watched:
            view = self._readings.view(miner_id)
            if view.lying is not None or view.pending is not None:
                continue
            why = lie(view, now, self._rules.stale_after, grace)
            if why is None:
                continue
            memory = self._measure.lie_memory_s
            until = None if memory is None else now + timedelta(seconds=memory)
            # The mark is a judgement of measured power, kept even if the journal cannot
            # take its event: the ladder row carries it at the next flush.
            self._journal_best_effort(now, "lying", miner_id, why)
            if self._readings.mark_lying(miner_id, why, until):
                self.lying_detected.add(miner_id)
                self._failed_since_plan = True  # the plan counted it as obeying: re-plan

    def _targets_lost(self, now: datetime) -> None:
        """Lowered miners back at their default target (a hand on the web UI, a firmware
        that forgets): each is journaled and the plan made again, which lowers them anew.
        One that loses its target twice within the lie memory (null: ever) is not lowered
        again for as long: the ladder sleeps it instead of chasing it."""
        if not self._readings.targets_lost:
            return
        lost, self._readings.targets_lost = self._readings.targets_lost, []
        memory = self._measure.lie_memory_s
        for miner_id, why in lost:
            log.info("lost its power target", miner=miner_id, detail=why)
            self._journal_best_effort(now, "target-lost", miner_id, why)
            before = self._target_lost_at.get(miner_id)
            self._target_lost_at[miner_id] = now
            if before is None:
                continue
            if memory is None:  # lies are remembered for good: so is this
                self._readings.skip_lowering(miner_id, None)
            elif now - before < timedelta(seconds=memory):
                self._readings.skip_lowering(miner_id, now + timedelta(seconds=memory))
        self._failed_since_plan = True  # the plan counted them as lowered: re-plan

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
                self._journal_best_effort(now, "clock", "agrees", {"offset_s": round(offset, 3)})
            return
        if self.clock_step_s is None:
            self._stepped_at = now
            log.warning(
                "wall clock stepped: deadlines, holds and grant windows keep curtaild's time",
                offset_s=round(offset, 1),
            )
            self._journal_best_effort(now, "clock", "stepped", {"offset_s": round(offset, 3)})
        self.clock_step_s = offset
        stepped_at = self._stepped_at or now
        if (
            self.restart_reason is None
            and now - stepped_at >= CLOCK_ADOPT_AFTER
            and self._clock.wall_synchronized()
        ):
            self.restart_reason = f"adopting the synchronized wall clock ({offset:+.0f} s)"
            log.warning("restarting to adopt the wall clock", offset_s=round(offset, 1))
            self._journal_best_effort(now, "clock", "adopting", {"offset_s": round(offset, 3)})
            with contextlib.suppress(JournalError):  # without it, times restore unshifted
                self._journal.record_commands([], site={"clock": {"adopted_s": offset}})
            self.restart_wanted.set()

    def _forgive(self, now: datetime) -> None:
        """A lie is remembered for `lie_memory_s`, a failed power target for NO_LOWER_FOR:
        then the unit is judged afresh. Each is journaled before it is forgotten."""
        for miner_id, mark in self._readings.expiring(now):
            what = "lie" if mark == "lying" else "skipped power target"
            self._journal.record_event(now, f"{mark}-expired", miner_id, f"{what} forgotten")
            self._readings.forget(miner_id, mark)
            if mark == "lying":
                self.lying_detected.discard(miner_id)
            log.info("judged afresh", miner=miner_id, forgotten=what)

    def on_meter(self, sample: MeterSample | None) -> None:
        """Every meter poll: the frequency relay judges it at once, not at the next tick."""
        rules = self._freq_rules
        if rules is None:
            return
        now = self._clock.now()
        hz = sample.reading.frequency_hz if sample is not None else None
        draw = round(sample.reading.import_w) if sample is not None else self.measured_w
        self._freq, event = frequency.step(
            self._freq,
            rules,
            hz=hz,
            now=now,
            draw_w=draw if draw is not None else self._policy.cap_w,
            cap_w=self._policy.cap_w,
        )
        if event is None:
            return
        self.frequency_events.append((now, event.value, hz))
        limit = self._freq.limit_w
        detail = {"hz": hz, "limit_kw": None if limit is None else limit / 1000}
        (log.warning if event is frequency.Event.TRIP else log.info)(event.value, **detail)
        ob = None
        if event is frequency.Event.TRIP and limit is not None:
            self.frequency_trips += 1
            key = f"under-frequency@{now.isoformat()}"
            ob = Obligation(
                key,
                "under-frequency",
                self.frequency_trips,
                "under-frequency",
                limit,
                now,
                now + rules.deadline,
            )
            self._known_keys.add(key)
            self.obligations.append(ob)
        self._inbox.wake.set()  # the relay's limit binds now, journaled or not
        try:
            self._journal.record_event(now, "frequency", event.value, detail)
            if ob is not None:
                self._journal.record_obligations([ob], self.measured_by)
        except JournalError:
            log.warning("frequency event not journaled; the relay's limit binds anyway")

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
            # Staggered wakes go out a window at a time while the slow ones (a pre-heat, a
            # bmminer restart) are still on the wire; only a shed's fan-out waits for quiet.
            or (self.plan is not None and not any(a.kind in SHEDS for a in self.plan.actions))
        )

    async def _decide(
        self, cause: str, now: datetime, limit: Limit, views: tuple[MinerView, ...]
    ) -> None:
        self._trim_wakes(now)
        ambient = self._measurements.ambient if self._measurements is not None else {}
        snapshot = Snapshot(
            now, views, tuple(self._recent_wakes), self._last_shed_at, self._order, ambient
        )
        budget = replace(limit, limit_w=limit.limit_w - self.offset_w) if self.offset_w else limit
        plan = planner.plan(snapshot, budget, self._rules)
        hold_sleeps: frozenset[str] = frozenset()
        if self._desk is not None:
            desk = self._desk
            plan, hold_sleeps = operator.operator_steps(
                plan, views, desk.holds, desk.automation, now
            )
        self._planned_at = now
        seq = None
        if plan.actions or limit != self.limit:
            # Write ahead: the decision is durable before any command leaves.
            try:
                seq = self._journal.record_decision(at=now, cause=cause, limit=limit, plan=plan)
            except JournalError:
                await self._enforce_unjournaled(cause, now, limit, plan, hold_sleeps)
                raise
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
        self._failed_since_plan = False
        self._hold_sleeps |= hold_sleeps
        self.limit, self.plan = limit, plan
        if plan.actions:
            await self._dispatch(plan.actions, seq, now)
        self._alarm(now, plan)  # after the commands: an alarm's journal row never holds them

    async def _enforce_unjournaled(
        self, cause: str, now: datetime, limit: Limit, plan: Plan, hold_sleeps: frozenset[str]
    ) -> None:
        """The decision cannot be journaled. Sheds toward a limit the journal already holds
        still go out (the limit is kept; each is journaled once the journal takes writes);
        nothing that loosens does."""
        sheds = tuple(a for a in plan.actions if a.kind in SHEDS)
        if not sheds:
            return
        log.warning(
            "journal unwritable: enforcing the held limit without a journal record",
            sheds=len(sheds),
            limit_kw=limit.limit_w / 1000,
        )
        kept = replace(plan, actions=sheds, notes=(*plan.notes, "journal unwritable: sheds only"))
        self._catch_up_later.append((now, cause, limit, kept))
        self._failed_since_plan = False
        self._hold_sleeps |= hold_sleeps & {a.miner_id for a in sheds}
        self.plan = kept
        await self._dispatch(sheds, None, now)

    def _catch_up(self, now: datetime) -> None:
        """Journal the decisions made while the journal could not be written."""
        while self._catch_up_later:
            at, cause, limit, plan = self._catch_up_later[0]
            self._journal.record_decision(
                at=at, cause=f"{cause} (journaled late, at {now:%H:%M:%S})", limit=limit, plan=plan
            )
            self._catch_up_later.popleft()

    def _alarm(self, now: datetime, plan: Plan) -> None:
        """Journal and log what the operator must hear about. A cold cut is an alarm each
        time; a heater floor not held is one while it stands (journaled when it starts and
        when it clears), not once per plan. An alarm the journal cannot take is still
        logged and shown; the rest of the cycle goes on."""
        standing: dict[tuple[str, str], tuple[datetime, str]] = {}
        for alarm in plan.alarms:
            key = (alarm.kind, alarm.subject)
            if alarm.kind != "cold-cut" and key in self.alarms:
                standing[key] = self.alarms[key]
                continue
            log.warning(alarm.kind, subject=alarm.subject, detail=alarm.detail)
            if alarm.kind == "cold-cut":
                self.cold_cuts.append((now, alarm.subject, alarm.detail))
                self.cold_cut_count += 1
            else:
                standing[key] = (now, alarm.detail)
            self.alarm_counts[alarm.kind] += 1
            self._journal_best_effort(now, "alarm", alarm.subject, alarm.detail)
        # A shed plan judges floors; a wake plan judges them only while it has floor wakes.
        for key in self.alarms.keys() - standing.keys():
            log.info("alarm cleared", kind=key[0], subject=key[1])
            self._journal_best_effort(now, "alarm-cleared", key[1], key[0])
        self.alarms = standing

    def _journal_best_effort(
        self, now: datetime, kind: str, subject: str, detail: dict[str, Any] | str
    ) -> None:
        """An event that reports rather than decides: logged whatever happens, journaled if
        the journal takes it (Journal.error says why not)."""
        with contextlib.suppress(JournalError):
            self._journal.record_event(now, kind, subject, detail)

    # -- signals and deadlines -------------------------------------------------------------

    def _absorb_signals(self) -> None:
        admitted = self._inbox.admitted
        if not admitted:
            return
        obligations = self.obligations
        known: set[str] = set()
        changed: list[Obligation] = []
        for item in admitted:
            admission = item.admission
            if admission.replaced is not None or admission.withdrawn is not None:
                # The revision this one replaces (or cancels) no longer binds the farm.
                obligations, gone = withdraw(obligations, item.signal.id)
                changed.extend(gone)
            ob = obligation_for(
                item.admission,
                item.signal,
                self._policy,
                item.received_at,
                last_heard=self._inbox.last_heard,
            )  # the grid's promise: judged against the grid's limits, not an operator's
            if ob is not None and ob.key not in self._known_keys and ob.key not in known:
                known.add(ob.key)
                obligations = [*obligations, ob]
                changed.append(ob)
        # Journaled first: if that fails, the signals are absorbed again next cycle.
        self._journal.record_obligations(changed, self.measured_by)
        self._inbox.admitted = []
        self._known_keys |= known
        self.obligations = obligations

    def _track(self, now: datetime) -> None:
        ends = grant_end_obligations(
            self._inbox.book,
            self._policy,
            now,
            self._known_keys,
            last_heard=self._inbox.last_heard,
        )
        obligations, changed = track([*self.obligations, *ends], self.measured_w, now)
        # Journaled before it is acknowledged or kept: a failed write changes nothing.
        self._journal.record_obligations([*ends, *changed], self.measured_by)
        self._known_keys.update(ob.key for ob in ends)
        for ob in changed:
            kind = ob.status.value
            measured_kw = (ob.measured_w or 0) / 1000
            detail = (
                f"measured {measured_kw:g} kW <= {ob.limit_w / 1000:g} kW after "
                f"{ob.time_to_target_s or 0:.1f} s ({self.measured_by})"
                if ob.status is ObligationStatus.REACHED
                else f"measured {measured_kw:g} kW > {ob.limit_w / 1000:g} kW "
                f"at the deadline {ob.due_at:%H:%M:%S} ({self.measured_by})"
                if ob.measured_w is not None
                else f"draw unknown at the deadline {ob.due_at:%H:%M:%S} (the meter is stale)"
            )
            (log.info if ob.status is ObligationStatus.REACHED else log.warning)(
                "deadline " + kind,
                signal=ob.signal_id,
                revision=ob.revision,
                kind=ob.kind,
                detail=detail,
            )
            self._publisher.ack(Ack(ob.signal_id, ob.revision, kind, now, detail))
            if self.observer is not None:
                self.observer.deadline(ob.kind, kind)
        for ob in obligations:
            if ob.status is not ObligationStatus.PENDING:
                self.finished.append(ob)
        self.obligations = [o for o in obligations if o.status is ObligationStatus.PENDING]

    # -- commands --------------------------------------------------------------------------

    async def _dispatch(self, actions: tuple[Action, ...], seq: int | None, now: datetime) -> None:
        assert self._tg is not None
        if self._settings.pause_gc_in_fanout and self.in_flight == 0:
            gc.disable()
        batch, left = DISPATCH_FIRST_BATCH, DISPATCH_FIRST_BATCH
        for action in actions:
            spec = self._specs[action.miner_id]
            kind = action.kind
            self._account(action, spec, now)
            self.in_flight += 1
            if kind is ActionKind.CUT or kind is ActionKind.RESTORE:
                # Busy only while on the wire, not while queued for the next batch: tests
                # on a fake clock wait for idle before moving time to that batch.
                self._switch_queue.append((action, seq))
                self._switch_wake.set()
                continue
            self._activity.begin()
            task = self._tg.create_task(
                self._command(action, seq), name=f"curtaild.command.{action.miner_id}"
            )
            if kind is ActionKind.WARM and spec.traits.gentle_fraction is None:
                self._preheats[action.miner_id] = task
            left -= 1
            if not left:
                await asyncio.sleep(0)
                if batch == DISPATCH_FIRST_BATCH:
                    await asyncio.sleep(0)  # the first connections complete and write first
                batch = min(batch * 8, DISPATCH_MAX_BATCH)
                left = batch

    def _account(self, action: Action, spec: MinerSpec, now: datetime) -> None:
        """A command is about to go: the miner is pending, and sheds and wakes are counted."""
        kind = action.kind
        if kind is ActionKind.SLEEP and action.miner_id in self._preheats:
            self._withdraw_preheat(action.miner_id)
        self._readings.set_pending(action.miner_id, kind, resumed=action.miner_id in self._resumed)
        if kind in SHEDS and action.miner_id in self._hold_sleeps:
            self._hold_sleeps.discard(action.miner_id)
        elif kind in SHEDS:
            if self._last_shed_at != now:
                self._drop_queued_restores()
            self._last_shed_at = now
            self.escalations[kind.value].add(action.miner_id)
        else:
            self._recent_wakes.append((now, coming_back_w(spec, kind)))
            self._note_wake_rate(now)
            if kind is ActionKind.WARM:
                self.warm_wakes.add(action.miner_id)

    async def _command(self, action: Action, seq: int | None) -> None:
        miner_id = action.miner_id
        started = self._clock.now()
        # A resumed command's change dates from when the first run sent it.
        sent_before = self._resumed.pop(miner_id, None)
        outcome, detail, finished = "cancelled", None, None  # stays so only on shutdown
        try:
            async with self._slots:
                reading, resent = await self._run(action, resumed=sent_before is not None)
        except asyncio.CancelledError:
            if miner_id not in self._withdrawn:
                raise  # shutting down
            self._withdrawn.discard(miner_id)
            outcome, detail = "withdrawn", "slept while pre-heating: the wake stops"
            return
        except DriverError as err:
            finished = self._clock.now()
            outcome, detail = err.kind, err.detail
            if action.kind is ActionKind.LOWER or action.kind is ActionKind.RAISE:
                self._target_failed(miner_id, err, finished)
            else:
                aimed = Mode.SLEEPING if action.kind is ActionKind.SLEEP else Mode.MINING
                self._failed(miner_id, err, finished, aimed)
        else:
            finished = self._clock.now()
            outcome = "ok"
            kind = action.kind
            # Records the read-back, clears pending and back-off: one update on the hot path.
            self._readings.record(
                miner_id,
                reading,
                finished,
                command=True,
                since=(changed := self._changed_at(started, finished, sent_before, resent=resent)),
                transition=kind is not ActionKind.LOWER,
            )
            if kind is ActionKind.LOWER:
                self._readings.set_ladder(miner_id, lowered_at=changed)
            elif kind is ActionKind.RAISE:
                self._readings.set_ladder(miner_id, lowered_at=None, warming_until=None)
            elif kind is ActionKind.WARM:
                self._warming(miner_id, started)
        finally:
            if self._preheats.get(miner_id) is asyncio.current_task():
                del self._preheats[miner_id]
            self._finish(seq, action, started, finished, outcome, detail)

    @staticmethod
    def _changed_at(
        started: datetime, finished: datetime, sent_before: datetime | None, *, resent: bool
    ) -> datetime:
        """When a command's change began, for its ramp: when it was sent; for a resumed
        one, when the first run sent it, unless it had to be sent again, which may have
        waited out a session the dead daemon left (then: when it was taken, at the end)."""
        if sent_before is None:
            return started
        return finished if resent else sent_before

    def _withdraw_preheat(self, miner_id: str) -> None:
        """The plan sleeps a miner whose gentle wake is still pre-heating its boards (a
        Whatsminer, for up to a minute): the wake stops before it starts the miner."""
        task = self._preheats.pop(miner_id, None)
        if task is not None:
            self._withdrawn.add(miner_id)
            task.cancel()

    def _finish(  # noqa: PLR0917 - one record's fields
        self,
        seq: int | None,
        action: Action,
        started: datetime,
        finished: datetime | None,
        outcome: str,
        detail: str | None,
    ) -> None:
        """A command or switch is over (or cancelled): record it and account for it."""
        ended = finished or self._clock.now()
        self._records.append(
            CommandRecord(seq, action.miner_id, action.kind.value, started, ended, outcome, detail)
        )
        if self.observer is not None:
            family = self._specs[action.miner_id].driver
            took = (ended - started).total_seconds()
            self.observer.command(action.kind.value, family, took, outcome)
        self.commands_sent += 1
        self.in_flight -= 1
        if self.in_flight == 0:
            if self._settings.pause_gc_in_fanout:
                gc.enable()
                gc.collect(0)  # what the fan-out left behind, young objects only
            self._inbox.wake.set()  # verify at once rather than at the next tick
        self._activity.end()

    def _warming(self, miner_id: str, started: datetime) -> None:
        """Woken gently: it runs at its family's low level (a power target or work mode,
        which the ladder walks back with RAISE) until its warm-up is over."""
        spec = self._specs[miner_id]
        safety = self._rules.safety
        warm_up = safety.rules(spec.container).warm_up if safety is not None else timedelta(0)
        if spec.traits.gentle_fraction is not None:
            self._readings.set_ladder(miner_id, lowered_at=started, warming_until=started + warm_up)

    def _target_failed(self, miner_id: str, err: DriverError, finished: datetime) -> None:
        """A power target that could not be set says nothing against sleeping the miner:
        the ladder skips that step for it from now on, rather than going to the outlet."""
        self.commands_failed += 1
        self._failed_since_plan = True
        log.warning("power target failed; sleep instead", miner=miner_id, error=str(err))
        # Refused or unsupported: for good. A timeout or an unreachable unit: a while.
        lasting = isinstance(err, RejectedError) or not err.retryable
        self._readings.skip_lowering(miner_id, None if lasting else finished + NO_LOWER_FOR)
        self._readings.set_pending(miner_id, None)

    def _failed(self, miner_id: str, err: DriverError, finished: datetime, aimed: Mode) -> None:
        """A command failed: the miner is unknown (unless its read-back showed a lie) and
        backs off before the next try; the plan counted it as done, so plan again."""
        self.commands_failed += 1
        self._failed_since_plan = True
        seen = err.reading if isinstance(err, VerificationError) else None
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

    # -- outlets ---------------------------------------------------------------------------

    def _drop_queued_restores(self) -> None:
        """A new shed cancels restores still waiting for their batch: the plan that sent
        them no longer holds, and a power cycle is worse than a late restore."""
        kept: deque[tuple[Action, int | None]] = deque()
        for action, seq in self._switch_queue:
            if action.kind is ActionKind.RESTORE:
                self._readings.set_pending(action.miner_id, None)
                self._records.append(
                    CommandRecord(
                        seq,
                        action.miner_id,
                        action.kind.value,
                        self._clock.now(),
                        self._clock.now(),
                        "withdrawn",
                        "a new shed came first",
                    )
                )
                self.in_flight -= 1
            else:
                kept.append((action, seq))
        self._switch_queue = kept

    async def _switch_outlets(self) -> None:
        """Outlets switch in batches with a pause between. Restores are paced for inrush
        (every restored miner boots at once); cuts draw no inrush and are paced only to
        spare the feeder a step change, except under an emergency (a frequency trip, an
        emergency signal), when they go as fast as the PDUs take them."""
        m = self._measure
        while True:
            if not self._switch_queue:
                self._switch_wake.clear()
                await self._switch_wake.wait()
            kind = self._switch_queue[0][0].kind
            restore = kind is ActionKind.RESTORE
            size = m.restore_batch_size if restore else m.cut_batch_size
            batch: list[tuple[Action, int | None]] = []
            while self._switch_queue and len(batch) < size:
                if self._switch_queue[0][0].kind is not kind:
                    break  # one kind per batch: a restore never rides with cuts
                batch.append(self._switch_queue.popleft())
            for _ in batch:
                self._activity.begin()
            await asyncio.gather(*(self._switch(action, seq) for action, seq in batch))
            emergency = self.limit is not None and self.limit.emergency
            spacing = m.restore_batch_spacing_s if restore else m.cut_batch_spacing_s
            if self._switch_queue and spacing > 0 and (restore or not emergency):
                await self._clock.sleep(spacing)

    async def _switch(self, action: Action, seq: int | None) -> None:
        miner_id = action.miner_id
        on = action.kind is ActionKind.RESTORE
        pdu, outlet = self._outlets[miner_id]
        started = self._clock.now()
        self._resumed.pop(miner_id, None)  # a resumed cut is sent again: it dates from now
        outcome, detail, finished = "cancelled", None, None
        try:
            try:
                with within(self._measure.switch_timeout_s):
                    reading = await pdu.switch(outlet, on)
            except TimeoutError:
                raise DeviceTimeoutError(
                    pdu.name, f"switch outlet {outlet}", "no verified result in time"
                ) from None
            except DriverError:
                raise
            except Exception as err:
                raise driver_bug(pdu.name, f"switch outlet {outlet}", err) from err
        except DriverError as err:
            finished = self._clock.now()
            outcome, detail = err.kind, str(err)
            self._failed(miner_id, err, finished, Mode.MINING if on else Mode.SLEEPING)
        else:
            finished = self._clock.now()
            outcome = "ok"
            self.switches.append((finished, miner_id, on))
            self._readings.record_outlet(
                miner_id, OutletReading(reading.on, reading.power_w if on else 0.0, finished)
            )
            if on:
                self._readings.set_ladder(miner_id, cut_at=None, restored_at=finished)
            else:
                self._readings.set_ladder(miner_id, cut_at=finished, restored_at=None)
            self._readings.set_pending(miner_id, None)
            log.info(
                "outlet switched",
                miner=miner_id,
                pdu=pdu.name,
                outlet=outlet,
                on=on,
                reason=action.reason,
            )
        finally:
            self._finish(seq, action, started, finished, outcome, detail)

    async def _run(self, action: Action, *, resumed: bool = False) -> tuple[MinerReading, bool]:
        """The action's verified read-back, and whether the command was sent now (False:
        a resumed sleep found the miner already asleep, so the change dates from the first
        run's command)."""
        spec = self._specs[action.miner_id]
        kind = action.kind
        timeout = self._settings.command_timeouts.get(
            action.miner_id, self._settings.command_timeout_s
        )
        if kind is ActionKind.WARM:
            timeout += spec.traits.gentle_extra_s  # a pre-heat, a profile set first
        try:
            with within(timeout):
                return await self._call(action, spec, resumed=resumed)
        except TimeoutError:
            raise DeviceTimeoutError(
                action.miner_id, action.kind.value, f"no verified result within {timeout:g} s"
            ) from None
        except DriverError:
            raise
        except Exception as err:
            raise driver_bug(action.miner_id, action.kind.value, err) from err

    async def _call(  # noqa: PLR0911 - one per kind of action
        self, action: Action, spec: MinerSpec, *, resumed: bool
    ) -> tuple[MinerReading, bool]:
        """The driver call one action is (see _run for what it returns)."""
        driver = self._drivers[action.miner_id]
        kind = action.kind
        if kind is ActionKind.SLEEP and resumed:
            return await _resume_sleep(driver)
        if kind is ActionKind.SLEEP:
            return await driver.sleep(), True
        if kind is ActionKind.WAKE:
            return await driver.wake(), True
        if kind is ActionKind.WARM:
            return await driver.wake(gentle=True), True
        if kind is ActionKind.RAISE and Capability.POWER_TARGET not in driver.capabilities:
            return await driver.wake(step_up=True), True  # from a gentle start's low mode
        watts = (spec.floor_w() if kind is ActionKind.LOWER else None) or spec.rated_power_w
        if resumed:
            return await _until_taken(lambda: driver.set_power_target(watts), driver), True
        return await driver.set_power_target(watts), True

    # -- bookkeeping -----------------------------------------------------------------------

    def _note_wake_rate(self, now: datetime) -> None:
        """The steepest restart rate sent so far (planned; the hardware's may differ)."""
        window = self._rules.wake_window
        sent = sum(w for t, w in self._recent_wakes if now - t < window)
        self.peak_wake_w = max(self.peak_wake_w, round(sent / window.total_seconds()))

    def _trim_wakes(self, now: datetime) -> None:
        while self._recent_wakes and now - self._recent_wakes[0][0] >= self._rules.wake_window:
            self._recent_wakes.popleft()

    def _flush(self, now: datetime) -> None:
        """Command results and where they left the ladder, in one transaction; kept in
        memory until it commits."""
        site = {**self._site_pending, **self._site_changes(now)}
        ladder = self._readings.take_ladder_changes()
        if not (self._records or ladder or site):
            return
        try:
            self._journal.record_commands(self._records, ladder=ladder, site=site)
        except JournalError:
            self._readings.redo_ladder_changes(ladder)
            raise
        self._records = []
        self._site_saved.update(site)
        self._site_pending.clear()
        self._flushed_at = now

    def _site_changes(self, now: datetime) -> dict[str, Any]:
        """What the loop learned about the site that a restart must not forget: the draw
        the miners do not explain (to the nearest 100 W: it moves with the meter's noise)
        and the frequency relay while it is tripped."""
        state: dict[str, Any] = {
            "offset": {"w": round(self.offset_w, -2), "at": now.isoformat()},
            "frequency": frequency.to_json(self._freq),
        }
        changed = {}
        for key, value in state.items():
            saved = self._site_saved.get(key)
            if key == "offset" and saved is not None and saved.get("w") == value["w"]:
                # The same value, still current: written again only when half as old as
                # a restart would trust it, so a steady base load stays trusted.
                at = parse_time(saved.get("at"))
                if at is not None and now - at < OFFSET_TRUSTED_FOR / 2:
                    continue
            if saved != value:
                changed[key] = value
        return changed

    def _restore(self) -> list[tuple[int, datetime, str, ActionKind, str]]:
        """Before the first read: where the ladder left every miner, what the loop had
        learned, and which commands were on the wire when the daemon stopped (their
        decisions are in the journal without a result). Returns those commands, each
        miner's latest."""
        now = self._clock.now()
        timeouts = [self._settings.command_timeout_s, *self._settings.command_timeouts.values()]
        ramps = [
            max(t.ramp_down_s, t.ramp_up_s, t.retarget_s)
            for t in {spec.traits for spec in self._specs.values()}
        ]
        window = timedelta(seconds=max(timeouts) + max(ramps, default=0.0))
        site = self._journal.site_state()
        self._site_saved = dict(site)
        # Times journaled before the restart adopted a stepped wall clock move with it.
        shift = timedelta(seconds=float(site.get("clock", {}).get("adopted_s", 0.0)))
        if shift:
            log.info("carrying the journal's times across the adopted clock", shift=str(shift))
            self._site_saved["clock"] = {}  # written at the first flush: carried once
            self._site_pending["clock"] = {}
        self._readings.restore_ladder(self._journal.ladder_state(), now, window, shift)
        self.lying_detected = {v.spec.id for v in self._readings.views() if v.lying is not None}
        offset = site.get("offset", {})
        learned = parse_time(offset.get("at"))
        if learned is not None and now - (learned + shift) < OFFSET_TRUSTED_FOR:
            self.offset_w = int(offset.get("w", 0))
            self._learned_at = now  # it decays from here, not from a share of the downtime
        if "frequency" in site:
            self._freq = frequency.from_json(site["frequency"], shift)
        latest: dict[str, tuple[int, datetime, str, ActionKind, str]] = {}
        for seq, at, miner, kind, reason in self._journal.unsettled(
            now - window - shift, now - shift
        ):
            if miner in self._specs and kind in ActionKind.__members__.values():
                latest[miner] = (seq, min(at + shift, now), miner, ActionKind(kind), reason)
        for _, at, miner, kind, _ in latest.values():
            if kind in (ActionKind.SLEEP, ActionKind.CUT):
                self._readings.hint(miner, Mode.SLEEPING, at)
            elif kind in (ActionKind.WAKE, ActionKind.WARM, ActionKind.RESTORE):
                self._readings.hint(miner, Mode.MINING, at)
        if latest or self._journal_has_ladder():
            log.info(
                "ladder restored from journal",
                on_the_wire=len(latest),
                lowered=sum(v.lowered_at is not None for v in self._readings.views()),
                cut=sum(v.cut_at is not None for v in self._readings.views()),
                lying=len(self.lying_detected),
            )
        return list(latest.values())

    def _journal_has_ladder(self) -> bool:
        return any(
            v.lowered_at or v.cut_at or v.lying or v.no_lower for v in self._readings.views()
        )

    def _carry_on(self, view: MinerView, kind: ActionKind, now: datetime) -> bool:
        """Whether a shed sent before the restart has yet to show."""
        if kind is ActionKind.SLEEP:
            reading = view.reading
            asleep = reading is not None and reading.mode is Mode.SLEEPING
            return not (asleep and view.fresh(now, self._rules.stale_after))
        if kind is ActionKind.LOWER:
            return view.lowered_at is None
        if kind is ActionKind.CUT:
            return view.cut_at is None
        return False

    async def _resume(self) -> None:
        """After a restart, the commands that were on the wire: sheds are carried through
        (a sleep is waited for, and sent again only if the miner reads awake; a lower
        target and a cut are sent again: both are idempotent), counted as landed as the
        first run counted them; steps back are left to the readings (their changes are
        dated from the command). Nothing new is decided here."""
        resumed: list[tuple[int, Action, datetime]] = []
        now = self._clock.now()
        for seq, at, miner, kind, reason in self._unsettled:
            view = self._readings.view(miner)
            action = Action(miner, kind, reason)
            if self._carry_on(view, kind, now):
                resumed.append((seq, action, at))
                continue
            reading = view.reading
            if (
                kind is ActionKind.WARM
                and reading is not None
                and reading.mode is Mode.MINING
                and view.lowered_at is None
            ):
                self._warming(miner, at)  # it landed: warming, as if the first run saw it
            # Settled now, by what the miner shows: a later restart must not resume it.
            self._records.append(
                CommandRecord(seq, miner, kind.value, at, now, "seen-after-restart", None)
            )
        self._unsettled = []
        if not resumed:
            return
        log.info("resuming commands sent before the restart", commands=len(resumed))
        for seq, action, at in resumed:
            self._resumed[action.miner_id] = at
            await self._dispatch((action,), seq, now)

    def _report(self, now: datetime, views: tuple[MinerView, ...]) -> None:
        due = (
            self._last_status is None
            or (now - self._last_status).total_seconds() >= self._settings.status_interval_s
        )
        if due:
            self._last_status = now
            self._publisher.status(self.status(now, views))
        if not self.history or now - self.history[-1][0] >= HISTORY_INTERVAL:
            limit = self.limit.limit_w if self.limit is not None else None
            self.history.append((now, self.measured_w, limit))

    def _meter_status(self, now: datetime) -> dict[str, Any] | None:
        if self._measurements is None or self._measurements.meter is None:
            return None
        last = self._measurements.last
        if last is None:
            return {"state": "never read"}
        r = last.reading
        return {
            "import_kw": round(r.import_w / 1000, 3),
            "export_kw": round(r.export_w / 1000, 3),
            "generation_kw": None if r.generation_w is None else round(r.generation_w / 1000, 3),
            "frequency_hz": r.frequency_hz,
            "age_s": round((now - last.at).total_seconds(), 3),
            "stale": self.meter is None,
        }

    def status(self, now: datetime, views: tuple[MinerView, ...] | None = None) -> dict[str, Any]:
        """The daemon's state as published (retained) and served."""
        views = views if views is not None else self._readings.views()
        counts = dict.fromkeys(
            ("mining", "sleeping", "unknown", "unhealthy", "pending", "lowered", "cut"), 0
        )
        for view in views:
            tally(view, now, self._rules.stale_after, counts)
        limit = self.limit
        return {
            "state": "online",
            "site": self.site_id,
            "at": _iso(now),
            "limit_kw": limit.limit_w / 1000 if limit else None,
            "reasons": [_published(r) for r in limit.reasons] if limit else [],
            "measured_kw": None if self.measured_w is None else round(self.measured_w / 1000, 3),
            "measured_by": self.measured_by,
            "meter": self._meter_status(now),
            "unexplained_kw": round(self.offset_w / 1000, 3),
            "escalations": {k: len(v) for k, v in self.escalations.items()},
            "alarms": [
                {"kind": kind, "subject": subject, "since": _iso(at), "detail": detail}
                for (kind, subject), (at, detail) in sorted(self.alarms.items())
            ],
            "cold_cuts": self.cold_cut_count,
            "journal": {"writable": self._journal.error is None, "error": self._journal.error},
            "wall_clock_offset_s": None if self.clock_step_s is None else round(self.clock_step_s),
            "lying": sorted(self.lying_detected),
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
                    "due": _iso(o.due_at),
                }
                for o in self.obligations
            ],
        }


async def _resume_sleep(driver: MinerDriver) -> tuple[MinerReading, bool]:
    """A sleep sent before a restart: a miner that reads asleep obeyed it; one that cannot
    answer may be obeying it still (a stock Antminer restarts its mining process), so it is
    read again until it answers; one that reads awake never got it, and is sent it again.
    The caller's deadline bounds all of it."""
    while True:
        try:
            reading = await driver.read()
        except DriverError as err:
            if not err.retryable:
                raise
            await asyncio.sleep(RESUME_POLL_S)  # real time, as every driver call's
            continue
        if reading.mode is Mode.SLEEPING:
            return reading, False
        return await _until_taken(driver.sleep, driver), True


async def _until_taken(
    command: Callable[[], Awaitable[MinerReading]], driver: MinerDriver
) -> MinerReading:
    """A resumed command, sent again until the miner takes it. A LuxOS write session the
    dead daemon left open refuses every write until it idles out (60 s): the driver
    releases it once (MinerDriver.reclaim). A refusal or a lie is an answer; the caller's
    deadline bounds the rest."""
    reclaimed = False
    while True:
        try:
            return await command()
        except SessionBusyError:
            if reclaimed:
                await asyncio.sleep(RESUME_POLL_S)
            else:
                reclaimed = True
                await driver.reclaim()
        except (UnreachableError, DeviceTimeoutError):
            await asyncio.sleep(RESUME_POLL_S)


def _published(reason: str) -> str:
    """A limit's reason as published on MQTT: an operator override without its author
    and free text (those stay on the authenticated operator API)."""
    if reason.startswith("override "):
        return f"operator override: {reason.rsplit(': ', 1)[-1]}"
    return reason


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")
