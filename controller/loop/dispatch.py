"""Commands to miners: sent concurrently, each under its deadline, and what each says
about the fleet (sheds and wakes counted, restarts paced, pre-heats withdrawn)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

import structlog

from controller.clock import Clock
from controller.core.model import SHEDS, Action, ActionKind, MinerSpec, PlanRules, coming_back_w
from controller.loop.ledger import Ledger, LoopSettings
from controller.loop.outlets import Outlets
from controller.loop.telemetry import Activity, Readings
from drivers.deadline import within
from drivers.errors import (
    DeviceTimeoutError,
    DriverError,
    RejectedError,
    SessionBusyError,
    UnreachableError,
    driver_bug,
)
from drivers.transport.admission import Gate
from drivers.types import Capability, MinerDriver, MinerReading, Mode

log = structlog.get_logger("curtaild.dispatch")

# Commands go out in batches growing eightfold from 8, yielding to the loop between them:
# each connection started in a loop pass does its set-up before any of them completes,
# so one batch of 10,000 puts the first command ~0.8 s late; doubling from 8 starts the
# last command ~0.2 s late at 1,000 miners (both measured). Eightfold does both well.
DISPATCH_FIRST_BATCH = 8
DISPATCH_MAX_BATCH = 4096
# A resumed sleep (sent before a restart) reads the miner again this often while it
# cannot answer (a stock Antminer restarting its mining process).
RESUME_POLL_S = 1.0
# Commands that set a power target: one that fails leaves the miner to the ladder's sleep.
_TARGETS = frozenset({ActionKind.LOWER, ActionKind.RAISE, ActionKind.TUNE})


class Dispatch:
    """Sends a plan's commands and keeps what the planner needs to know of them."""

    def __init__(
        self,
        *,
        specs: Mapping[str, MinerSpec],
        drivers: Mapping[str, MinerDriver],
        readings: Readings,
        ledger: Ledger,
        outlets: Outlets,
        clock: Clock,
        activity: Activity,
        rules: PlanRules,
        settings: LoopSettings,
    ) -> None:
        self._specs = specs
        self._drivers = drivers
        self._readings = readings
        self._ledger = ledger
        self._outlets = outlets
        self._clock = clock
        self._activity = activity
        self._rules = rules
        self._settings = settings
        self._slots = Gate(settings.command_concurrency)  # FIFO, and O(1) with 10,000s waiting
        self._tg: asyncio.TaskGroup | None = None
        self.recent_wakes: deque[tuple[datetime, int]] = deque()  # (sent at, W coming back)
        self.last_shed_at: datetime | None = None
        self.escalations: dict[str, set[str]] = {k.value: set() for k in SHEDS}
        self.warm_wakes: set[str] = set()  # miners woken gently
        self.peak_wake_w = 0  # the steepest restart rate sent, W per second
        # Sleeps an operator's hold forces: not grid sheds, so they neither hold the
        # fleet's wakes nor withdraw queued restores.
        self.hold_sleeps: set[str] = set()
        self.retune_sleeps: set[str] = set()  # sleeps the allocation chose (Plan.tuned)
        self._preheats: dict[str, asyncio.Task[None]] = {}  # gentle wakes still pre-heating
        self._withdrawn: set[str] = set()
        self._resumed: dict[str, datetime] = {}  # commands resumed after a restart: sent at
        self._waking_tunes: set[str] = set()  # retunes on the wire that wake a sleeper
        self._targets_taken: set[str] = set()  # retunes whose target was taken, not done

    def start(self, tg: asyncio.TaskGroup) -> None:
        """Every command task lives in the loop's task group."""
        self._tg = tg

    async def send(
        self,
        actions: tuple[Action, ...],
        seq: int | None,
        now: datetime,
        *,
        resumed_from: datetime | None = None,
    ) -> None:
        """Send `actions` (decision `seq`). `resumed_from`: they resume commands a run
        before a restart sent then (one action each time)."""
        assert self._tg is not None
        batch, left = DISPATCH_FIRST_BATCH, DISPATCH_FIRST_BATCH
        for action in actions:
            if resumed_from is not None:
                self._resumed[action.miner_id] = resumed_from
            spec = self._specs[action.miner_id]
            kind = action.kind
            self._account(action, spec, now)
            self._ledger.going()
            if kind is ActionKind.CUT or kind is ActionKind.RESTORE:
                self._resumed.pop(action.miner_id, None)  # a cut is sent again: it dates now
                self._outlets.enqueue(action, seq)
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

    def _wakes_at_target(self, action: Action) -> bool:
        """A retune of a sleeper: a restart at its target (marked for its longer time)."""
        reading = self._readings.view(action.miner_id).reading
        if reading is None or reading.mode is Mode.SLEEPING:
            self._waking_tunes.add(action.miner_id)
            return True
        return False

    def _coming_back(self, action: Action, spec: MinerSpec) -> int:
        """The draw a step back brings on, for the restart rate: a sleeper woken at its
        target that target, anything else as coming_back_w says."""
        if action.kind is ActionKind.TUNE:
            return action.target_w or spec.rated_power_w
        return coming_back_w(spec, action.kind)

    def trim_wakes(self, now: datetime) -> None:
        while self.recent_wakes and now - self.recent_wakes[0][0] >= self._rules.wake_window:
            self.recent_wakes.popleft()

    def _account(self, action: Action, spec: MinerSpec, now: datetime) -> None:
        """A command is about to go: the miner is pending, and sheds and wakes are counted."""
        kind = action.kind
        if kind is ActionKind.SLEEP and action.miner_id in self._preheats:
            self._withdraw_preheat(action.miner_id)
        self._readings.set_pending(
            action.miner_id,
            kind,
            resumed=action.miner_id in self._resumed,
            target_w=action.target_w,
        )
        if kind is ActionKind.TUNE and not self._wakes_at_target(action):
            return  # a running retune is no restart: the plan paced its rise (core.tuning)
        if kind in SHEDS and action.miner_id in self.retune_sleeps:
            # The allocation's sleep: no grid shed (not counted on the ladder, no restore
            # withdrawn), but wakes and raises wait for its draw to settle, as after a
            # shed: the estimate counts a sleep as landed at once, and a deceiving unit's
            # draw shows only on its outlet, later (chaos "liars" went over the limit).
            self.retune_sleeps.discard(action.miner_id)
            self.last_shed_at = now
        elif kind in SHEDS and action.miner_id in self.hold_sleeps:
            self.hold_sleeps.discard(action.miner_id)
        elif kind in SHEDS:
            if self.last_shed_at != now:
                self._outlets.drop_queued_restores()
            self.last_shed_at = now
            self.escalations[kind.value].add(action.miner_id)
        else:
            self.recent_wakes.append((now, self._coming_back(action, spec)))
            window = self._rules.wake_window
            sent = sum(w for t, w in self.recent_wakes if now - t < window)
            self.peak_wake_w = max(self.peak_wake_w, round(sent / window.total_seconds()))
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
            if action.kind is ActionKind.TUNE:
                self._tune_failed(action, err, finished)
            elif action.kind in _TARGETS:
                self._ledger.target_failed(miner_id, err, finished)
            else:
                aimed = Mode.SLEEPING if action.kind is ActionKind.SLEEP else Mode.MINING
                self._ledger.command_failed(miner_id, err, finished, aimed)
        else:
            finished = self._clock.now()
            outcome = "ok"
            # One update on the hot path: the read-back, and where the ladder has it now.
            self._readings.commanded(
                miner_id,
                action.kind,
                reading,
                finished,
                since=_changed_at(started, finished, sent_before, resent=resent),
                warm_up=self.warm_up(miner_id) if action.kind is ActionKind.WARM else None,
            )
        finally:
            self._waking_tunes.discard(miner_id)
            self._targets_taken.discard(miner_id)
            if self._preheats.get(miner_id) is asyncio.current_task():
                del self._preheats[miner_id]
            self._ledger.finish(seq, action, started, finished, outcome, detail)

    async def _tune(self, driver: MinerDriver, action: Action) -> MinerReading:
        """The allocation's setting: the power target, and for a sleeper a wake after it
        (the firmware keeps its target asleep, so the miner comes up at it, as a gentle
        wake does). A miner found asleep or awake against the plan is handled as found."""
        if action.target_w is None:
            raise RejectedError(action.miner_id, "tune", "a tune without a power target")
        reading = await driver.set_power_target(action.target_w)
        if reading.mode is Mode.SLEEPING:
            self._targets_taken.add(action.miner_id)
            reading = await driver.wake()
        return reading

    def _tune_failed(self, action: Action, err: DriverError, finished: datetime) -> None:
        """A retune that failed. One that timed out, or whose wake failed after its target
        was taken, may have landed (the miner ramping up, the target taken): the miner
        counts at rated until it is read again, as any failed wake does, and the target
        is kept, so the estimate counts it at the higher of its reading and the target
        until its retarget time (a target not taken shows as lost then). A target refused
        leaves the miner to the ladder (its sleep, or a plain wake), as a failed lower
        does."""
        miner_id = action.miner_id
        if miner_id in self._targets_taken or isinstance(err, DeviceTimeoutError):
            self._ledger.command_failed(miner_id, err, finished, Mode.MINING)
            self._readings.set_ladder(miner_id, tuned_at=finished)
            return
        self._ledger.target_failed(miner_id, err, finished)
        self._readings.set_ladder(miner_id, target_w=None)

    def warm_up(self, miner_id: str) -> timedelta | None:
        """How long a gently woken miner runs at its family's low level (a power target or
        work mode, which the ladder walks back with RAISE); None: no low level."""
        spec = self._specs[miner_id]
        if spec.traits.gentle_fraction is None:
            return None
        safety = self._rules.safety
        return safety.rules(spec.container).warm_up if safety is not None else timedelta(0)

    def _withdraw_preheat(self, miner_id: str) -> None:
        """The plan sleeps a miner whose gentle wake is still pre-heating its boards (a
        Whatsminer, for up to a minute): the wake stops before it starts the miner."""
        task = self._preheats.pop(miner_id, None)
        if task is not None:
            self._withdrawn.add(miner_id)
            task.cancel()

    async def _run(self, action: Action, *, resumed: bool = False) -> tuple[MinerReading, bool]:
        """The action's verified read-back, and whether the command was sent now (False:
        a resumed sleep found the miner already asleep, so the change dates from the first
        run's command)."""
        spec = self._specs[action.miner_id]
        timeout = self._settings.timeout_for(action.miner_id)
        if action.kind is ActionKind.WARM or action.miner_id in self._waking_tunes:
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
        if kind is ActionKind.TUNE:
            return await self._tune(driver, action), True
        if kind is ActionKind.RAISE and Capability.POWER_TARGET not in driver.capabilities:
            return await driver.wake(step_up=True), True  # from a gentle start's low mode
        watts = (spec.floor_w() if kind is ActionKind.LOWER else None) or spec.rated_power_w
        if resumed:
            return await _until_taken(lambda: driver.set_power_target(watts), driver), True
        return await driver.set_power_target(watts), True


def _changed_at(
    started: datetime, finished: datetime, sent_before: datetime | None, *, resent: bool
) -> datetime:
    """When a command's change began, for its ramp: when it was sent; for a resumed one,
    when the first run sent it, unless it had to be sent again, which may have waited out
    a session the dead daemon left (then: when it was taken, at the end)."""
    if sent_before is None:
        return started
    return finished if resent else sent_before


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
