"""Readings store and the background poller that keeps it fresh.

A signal never waits for a fleet-wide read: the poller runs continuously with bounded
concurrency, and the supervisor freezes whatever is latest. Health is a state; it is
logged once when it changes and retried quietly in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from controller.clock import Clock
from controller.core.escalation import target_lost
from controller.core.model import ActionKind, MinerSpec, MinerView, OutletReading
from drivers.errors import DriverError, driver_bug
from drivers.types import DriverTraits, MinerDriver, MinerReading, Mode

log = structlog.get_logger("curtaild.telemetry")


class _Keep:
    """Leave a field as it is (None is a value: cleared)."""


KEEP = _Keep()


class Activity:
    """Counts work in progress so tests on a fake clock can wait until the daemon is idle."""

    def __init__(self) -> None:
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self._busy += 1
        self._idle.clear()

    def end(self) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


class Readings:
    """The latest view of every miner. Only the poller and the supervisor write here."""

    def __init__(self, specs: Mapping[str, MinerSpec]) -> None:
        self._views = {miner_id: MinerView(spec) for miner_id, spec in specs.items()}
        self._read_fault: dict[str, str] = {}
        self._command_fault: dict[str, str] = {}
        self._aimed: dict[str, Mode] = {}  # the mode a failed command set out to reach
        self._failures: dict[str, int] = {}
        # When a lie or a skipped power target step is forgotten, by (miner, mark).
        self._until: dict[tuple[str, str], datetime] = {}
        # After a restart: the mode each miner was last commanded into and when, so the
        # first reading that shows it dates the change from the command, as before.
        self._hints: dict[str, tuple[Mode, datetime]] = {}
        self._dirty: set[str] = set()  # ladder state changed since the last journal flush
        # (miner, why) of lowered miners found back at their default target, for the loop.
        self.targets_lost: list[tuple[str, str]] = []
        self._over_target: set[str] = set()  # read once above its lowered target
        self.first_sweep = asyncio.Event()

    def views(self) -> tuple[MinerView, ...]:
        return tuple(self._views.values())

    def view(self, miner_id: str) -> MinerView:
        return self._views[miner_id]

    def record(
        self,
        miner_id: str,
        reading: MinerReading,
        at: datetime,
        *,
        command: bool = False,
        since: datetime | None = None,
        transition: bool = True,
    ) -> None:
        """A successful read, or a command's verified read-back (which also clears the
        command's pending state and back-off; `since` is when the command began, which is
        when the change began). One object built: this runs per miner on the fan-out's
        hot path."""
        view = self._views[miner_id]
        changed = view.reading is not None and view.reading.mode is not reading.mode
        # A command's read-back marks a transition even when it is the first reading we have
        # (a new power target is not one: its own timing is judged from `lowered_at`).
        mode_since = (since or at) if changed or (command and transition) else view.mode_since
        if self._hints:
            hint = self._hints.pop(miner_id, None)
            if hint is not None and hint[0] is reading.mode and not command:
                mode_since = hint[1]
        if command:
            self._dirty.add(miner_id)
        self._read_fault.pop(miner_id, None)
        if command or self._aimed.get(miner_id) is reading.mode:
            # A command that failed (a timeout across a slow restart, say) may still have
            # landed: once the miner reads in the mode it was sent to, it has recovered.
            self._command_fault.pop(miner_id, None)
            self._aimed.pop(miner_id, None)
            self._failures.pop(miner_id, None)
        healthy, reason = self._judge(view)
        self._views[miner_id] = MinerView(
            view.spec,
            reading,
            at,
            healthy,
            reason,
            mode_since,
            None if command else view.pending,
            None if command else view.retry_after,
            view.outlet,
            view.lowered_at,
            view.cut_at,
            view.lying,
            view.no_lower,
            view.restored_at,
            view.warming_until,
            view.held_asleep,
            view.resumed if not command else False,
            view.outlet,
            view.target_w,
            view.tuned_at,
        )
        if (view.lowered_at is not None or view.tuned_at is not None) and not command:
            self._judge_target(miner_id)

    def _judge_target(self, miner_id: str) -> None:
        """A lowered miner read twice in a row well above its target is back at its
        default (a hand on its web UI; a firmware that forgets): no longer counted as
        lowered, so the ladder lowers it again. Once is an overshoot, not a loss."""
        view = self._views[miner_id]
        why = target_lost(view)
        if why is None:
            self._over_target.discard(miner_id)
        elif miner_id not in self._over_target:
            self._over_target.add(miner_id)
        else:
            self._over_target.discard(miner_id)
            self._views[miner_id] = replace(
                view, lowered_at=None, warming_until=None, target_w=None, tuned_at=None
            )
            self._dirty.add(miner_id)
            self.targets_lost.append((miner_id, why))

    def fail(
        self,
        miner_id: str,
        err: DriverError,
        *,
        command: bool = False,
        known: bool = False,
        aimed: Mode | None = None,
    ) -> int:
        """A failed call; returns how many commands in a row have failed.

        A failed command may still have landed (a wake that timed out may be ramping up),
        so unless its outcome is `known` (a lying miner's read-back) the miner's reading is
        dropped: it counts at rated power until it is read again. `aimed` is the mode the
        command set out to reach; a later read in that mode clears the fault.
        """
        faults = self._command_fault if command else self._read_fault
        faults[miner_id] = f"{err.kind}: {err.detail}"
        if command and aimed is not None:
            self._aimed[miner_id] = aimed
        count = 0
        view = self._views[miner_id]
        if command:
            count = self._failures[miner_id] = self._failures.get(miner_id, 0) + 1
            if not known:
                view = replace(view, read_at=None)
        self._views[miner_id] = self._health(view)
        return count

    def set_pending(
        self,
        miner_id: str,
        kind: ActionKind | None,
        *,
        resumed: bool = False,
        target_w: int | None = None,
    ) -> None:
        """A command is in flight (None: no longer). `resumed`: it resumes one sent before a
        restart, and counts as landed even while the miner cannot be read. Built field by
        field, as record() does: dataclasses.replace costs twice as much, and the dispatch
        does this once per command, between its batches."""
        view = self._views[miner_id]
        if kind is ActionKind.TUNE:
            self._dirty.add(miner_id)  # its target reaches the journal with the next flush
        self._views[miner_id] = MinerView(
            view.spec,
            view.reading,
            view.read_at,
            view.healthy,
            view.health_reason,
            view.mode_since,
            kind,
            view.retry_after,
            view.outlet,
            view.lowered_at,
            view.cut_at,
            view.lying,
            view.no_lower,
            view.restored_at,
            view.warming_until,
            view.held_asleep,
            resumed,
            view.outlet_at_read,
            target_w if kind is ActionKind.TUNE else view.target_w,
            view.tuned_at,
        )

    def set_retry_after(self, miner_id: str, at: datetime | None) -> None:
        self._views[miner_id] = replace(self._views[miner_id], retry_after=at)

    def commanded(
        self,
        miner_id: str,
        kind: ActionKind,
        reading: MinerReading,
        at: datetime,
        *,
        since: datetime,
        warm_up: timedelta | None = None,
    ) -> None:
        """A command landed: its verified read-back (which clears its pending state and
        back-off; `since` is when the change began) and where it leaves the ladder. A new
        power target is no mode change: its own timing is judged from `lowered_at`. A
        gentle wake (`warm_up` given) runs at its family's low level until warmed up."""
        self.record(
            miner_id,
            reading,
            at,
            command=True,
            since=since,
            transition=kind is not ActionKind.LOWER and kind is not ActionKind.TUNE,
        )
        if kind is ActionKind.LOWER:
            self.set_ladder(miner_id, lowered_at=since, target_w=None)
        elif kind is ActionKind.RAISE:
            self.set_ladder(miner_id, lowered_at=None, warming_until=None, target_w=None)
        elif kind is ActionKind.TUNE:  # its target was set when it was sent
            self.set_ladder(miner_id, lowered_at=None, tuned_at=since)
        elif warm_up is not None:
            self.set_ladder(
                miner_id, lowered_at=since, warming_until=since + warm_up, target_w=None
            )

    def switched(self, miner_id: str, outlet: OutletReading) -> None:
        """An outlet we switched: its read-back, where the ladder now has the miner (cut, or
        restored and booting), and nothing pending; one update."""
        at = outlet.read_at
        cut, restored = (None, at) if outlet.on else (at, None)
        self._views[miner_id] = replace(
            self._views[miner_id],
            outlet=outlet,
            cut_at=cut,
            restored_at=restored,
            pending=None,
            resumed=False,  # as set_pending(None) did: no longer a command resumed
        )
        self._dirty.add(miner_id)

    def record_outlet(self, miner_id: str, outlet: OutletReading) -> None:
        """What the miner's PDU outlet measured. The outlet is the truth about its power:
        one found off that we did not cut (after a restart, or a cut whose command failed
        but landed) counts as cut from now, so the ladder restores it in time; one found on
        that we had cut (a PDU rebooted, a hand on the switch) is no longer cut."""
        view = self._views[miner_id]
        if view.pending is None:
            if not outlet.on and view.cut_at is None:
                view = replace(view, cut_at=outlet.read_at)
                self._dirty.add(miner_id)
            elif outlet.on and view.cut_at is not None:
                view = replace(view, cut_at=None, restored_at=outlet.read_at)
                self._dirty.add(miner_id)
        self._views[miner_id] = replace(view, outlet=outlet)

    def set_ladder(
        self,
        miner_id: str,
        *,
        lowered_at: datetime | _Keep | None = KEEP,
        cut_at: datetime | _Keep | None = KEEP,
        restored_at: datetime | _Keep | None = KEEP,
        no_lower: bool | None = None,
        warming_until: datetime | _Keep | None = KEEP,
        target_w: int | _Keep | None = KEEP,
        tuned_at: datetime | _Keep | None = KEEP,
    ) -> None:
        """Where the escalation ladder (or the allocation) left this miner."""
        view = self._views[miner_id]
        if not isinstance(target_w, _Keep):
            view = replace(view, target_w=target_w, tuned_at=None)
        if not isinstance(tuned_at, _Keep):
            view = replace(view, tuned_at=tuned_at)
        if not isinstance(warming_until, _Keep):
            view = replace(view, warming_until=warming_until)
        if not isinstance(restored_at, _Keep):
            view = replace(view, restored_at=restored_at)
        if no_lower is not None:
            view = replace(view, no_lower=no_lower)
        if not isinstance(lowered_at, _Keep):
            view = replace(view, lowered_at=lowered_at)
        if not isinstance(cut_at, _Keep):
            view = replace(view, cut_at=cut_at)
        self._views[miner_id] = view
        self._dirty.add(miner_id)

    def mark_lying(self, miner_id: str, reason: str, until: datetime | None = None) -> bool:
        """Measured power contradicts the firmware; True the first time. It stays marked
        until `until` (None: for good): the ladder goes straight to the outlet for a unit
        that has lied."""
        view = self._views[miner_id]
        if view.lying is not None:
            return False
        log.warning(
            "miner lies: measured power contradicts its firmware", miner=miner_id, reason=reason
        )
        self._views[miner_id] = replace(view, lying=reason)
        if until is not None:
            self._until[miner_id, "lying"] = until
        self._dirty.add(miner_id)
        return True

    def skip_lowering(self, miner_id: str, until: datetime | None) -> None:
        """Its power target could not be set: the ladder skips that step for it until
        `until` (None: for good, the firmware has none)."""
        self._views[miner_id] = replace(self._views[miner_id], no_lower=True)
        if until is None:
            self._until.pop((miner_id, "no_lower"), None)
        else:
            self._until[miner_id, "no_lower"] = until
        self._dirty.add(miner_id)

    def expiring(self, now: datetime) -> list[tuple[str, str]]:
        """(miner, mark) of every lie or skipped step due to be forgotten at `now`."""
        return [key for key, until in self._until.items() if until <= now]

    def forget(self, miner_id: str, mark: str) -> None:
        """Forget a lie (the outlet judges the unit afresh) or a skipped power target step."""
        self._until.pop((miner_id, mark), None)
        view = self._views[miner_id]
        if mark == "lying":
            self._views[miner_id] = replace(view, lying=None)
        elif mark == "no_lower":
            self._views[miner_id] = replace(view, no_lower=False)
        self._dirty.add(miner_id)

    # -- what survives a restart -----------------------------------------------------------

    def take_ladder_changes(self) -> dict[str, dict[str, Any] | None]:
        """The ladder state of every miner changed since the last call, for the journal
        (None: nothing left to remember about it)."""
        dirty, self._dirty = self._dirty, set()
        return {m: self._ladder_row(self._views[m]) for m in dirty}

    def redo_ladder_changes(self, changes: Mapping[str, object]) -> None:
        """A journal flush failed: these miners are still to be written."""
        self._dirty.update(changes)

    def restore_ladder(
        self,
        rows: Mapping[str, Mapping[str, Any]],
        now: datetime,
        hint_within: timedelta,
        shift: timedelta = timedelta(0),
    ) -> None:
        """Where the ladder left each miner before a restart: lowered, cut, restored,
        warming, a skipped power target step, a lie (each until its mark expires), and the
        mode it was last commanded into, if that was recent enough to still be ramping.
        `shift` carries the times across a clock the restart adopted; none is later than
        `now` (a clock stepped back since they were written)."""

        def when(value: object) -> datetime | None:
            at = parse_time(value)
            return None if at is None else min(at + shift, now)

        def until(value: object) -> datetime | None:  # an end in the future stays there
            at = parse_time(value)
            return None if at is None else at + shift

        for miner_id, row in rows.items():
            view = self._views.get(miner_id)
            if view is None:
                continue  # a miner no longer in the config
            lying = row.get("lying")
            no_lower = bool(row.get("no_lower", False))
            for mark in ("lying", "no_lower"):
                expires = until(row.get(f"{mark}_until"))
                if expires is None:
                    continue
                if expires <= now:
                    lying = None if mark == "lying" else lying
                    no_lower = False if mark == "no_lower" else no_lower
                elif (mark == "lying" and lying is not None) or (mark == "no_lower" and no_lower):
                    self._until[miner_id, mark] = expires
            self._views[miner_id] = replace(
                view,
                lowered_at=when(row.get("lowered_at")),
                cut_at=when(row.get("cut_at")),
                restored_at=when(row.get("restored_at")),
                warming_until=until(row.get("warming_until")),
                no_lower=no_lower,
                lying=str(lying) if lying is not None else None,
                target_w=_watts(row.get("target_w")),
                tuned_at=when(row.get("tuned_at")),
            )
            since = when(row.get("mode_since"))
            mode = row.get("mode")
            if since is not None and now - since <= hint_within and mode in _MODES:
                self.hint(miner_id, Mode(mode), since)

    def hint(self, miner_id: str, mode: Mode, since: datetime) -> None:
        """The miner was commanded into `mode` at `since` before a restart: if its first
        reading shows that mode, the change dates from then (its ramp is timed from it)."""
        self._hints[miner_id] = (mode, since)

    def _ladder_row(self, view: MinerView) -> dict[str, Any] | None:
        row: dict[str, Any] = {}
        for name in ("lowered_at", "cut_at", "restored_at", "warming_until", "tuned_at"):
            value = getattr(view, name)
            if value is not None:
                row[name] = value.isoformat()
        if view.target_w is not None:
            row["target_w"] = view.target_w
        if view.no_lower:
            row["no_lower"] = True
        if view.lying is not None:
            row["lying"] = view.lying
        for mark in ("lying", "no_lower"):
            until = self._until.get((view.spec.id, mark))
            if until is not None:
                row[f"{mark}_until"] = until.isoformat()
        if view.mode_since is not None and view.reading is not None:
            row["mode"] = view.reading.mode.value
            row["mode_since"] = view.mode_since.isoformat()
        return row or None

    def _health(self, view: MinerView) -> MinerView:
        healthy, reason = self._judge(view)
        if healthy is view.healthy and reason == view.health_reason:
            return view
        return replace(view, healthy=healthy, health_reason=reason)

    def _judge(self, view: MinerView) -> tuple[bool, str | None]:
        """Health from the recorded faults; logs only when it changes."""
        miner_id = view.spec.id
        reason = self._command_fault.get(miner_id) or self._read_fault.get(miner_id)
        healthy = reason is None
        if healthy != view.healthy:
            if healthy:
                log.info("miner recovered", miner=miner_id, was=view.health_reason)
            else:
                log.warning("miner unhealthy", miner=miner_id, reason=reason)
        elif not healthy and reason != view.health_reason:
            log.debug("miner still unhealthy", miner=miner_id, reason=reason)
        return healthy, reason


_MODES = frozenset(m.value for m in Mode)


def parse_time(value: object) -> datetime | None:
    """A journaled ISO time, or None where there is none (or it is not one)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


class Poller:
    """Reads every miner in turn, forever, with bounded concurrency."""

    def __init__(
        self,
        drivers: Mapping[str, MinerDriver],
        readings: Readings,
        clock: Clock,
        *,
        interval_s: float,
        fast_interval_s: float,
        concurrency: int,
        activity: Activity,
    ) -> None:
        self._drivers = drivers
        self._readings = readings
        self._clock = clock
        self._interval_s = interval_s
        self._fast_interval_s = fast_interval_s
        self._concurrency = concurrency
        self._activity = activity
        self._fast = False  # fast sweeps while a deadline is pending
        self.kick = asyncio.Event()  # start the next sweep now
        # The control loop's wake (a signal, a relay trip, an operator): while it is set,
        # and while the cycle it woke runs (pause() to resume()), no read starts, so the
        # event loop is the decision's and its first commands' (see _worker).
        self.defer_to: asyncio.Event | None = None
        self._go = asyncio.Event()
        self._go.set()
        self.sweeps = 0
        self.reads_planned = 0  # reads the sweeps set out to make (tests count them)

    async def run(self) -> None:
        while True:
            started = self._clock.now()
            self._activity.begin()
            try:
                await self.sweep()
            finally:
                self._activity.end()
            self.sweeps += 1
            self._readings.first_sweep.set()
            interval = self._fast_interval_s if self._fast else self._interval_s
            spent = (self._clock.now() - started).total_seconds()
            self.kick.clear()
            await self._clock.wait(self.kick, max(0.0, interval - spent))

    def set_fast(self, fast: bool) -> None:
        """Sweep at the fast interval (while a deadline is pending), starting now."""
        if fast and not self._fast:
            self.kick.set()
        self._fast = fast

    def pause(self) -> None:
        """The control loop has the floor: start no read until resume()."""
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    async def sweep(self) -> None:
        """One read of every miner that needs one, by a bounded pool of workers sharing
        one queue. A slow sweep reads every miner; a fast sweep only those in motion."""
        due = self._in_motion() if self._fast else list(self._drivers)
        self.reads_planned += len(due)
        queue = iter(due)
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self._concurrency, len(due))):
                tg.create_task(self._worker(queue))

    def _in_motion(self) -> list[str]:
        """Miners whose draw may be moving, plus those the slow cadence would read now.

        Fast sweeps exist to see commanded miners ramp, so a deadline can be judged on
        fresh readings. A miner settled in its mode changes slowly: reading all of them
        every second would make telemetry the bulk of the work during a fan-out (measured:
        over half the daemon's CPU on a mixed farm of 5,000), competing with the commands
        the deadline depends on. A miner counts as moving from its mode change until one
        fast interval past its family's ramp time; failed and never-read miners are due.
        """
        now = self._clock.now()
        # Readings taken at or after this are recent enough for the slow cadence.
        slow_from = now - timedelta(seconds=self._interval_s - self._fast_interval_s / 2)
        windows: dict[DriverTraits, tuple[timedelta, timedelta]] = {}
        slack = timedelta(seconds=self._fast_interval_s)
        due = []
        for miner_id in self._drivers:
            view = self._readings.view(miner_id)
            read_at, since, reading = view.read_at, view.mode_since, view.reading
            if read_at is None or reading is None or read_at < slow_from:
                due.append(miner_id)
                continue
            if since is None:
                continue
            traits = view.spec.traits
            window = windows.get(traits)
            if window is None:
                window = windows[traits] = (
                    timedelta(seconds=traits.ramp_down_s) + slack,
                    timedelta(seconds=traits.ramp_up_s) + slack,
                )
            ramp = window[0] if reading.mode is Mode.SLEEPING else window[1]
            if now - since <= ramp:
                due.append(miner_id)
        return due

    async def _worker(self, queue: Iterator[str]) -> None:
        for miner_id in queue:
            # Measured at 10,000 mixed miners: a signal that met a sweep waited ~20 ms for
            # the loop, and its first commands queued behind the reads that kept starting.
            wake = self.defer_to
            if wake is not None and wake.is_set():
                self._go.clear()  # until the cycle it wakes has run
            # Every cycle hands the floor back when it ends; the wait is bounded all the
            # same, so no path can leave the fleet unread.
            if not self._go.is_set() and not await self._clock.wait(
                self._go, self._fast_interval_s
            ):
                self._go.set()  # no cycle handed the floor back in time: take it
            view = self._readings.view(miner_id)
            if view.pending is not None or view.cut_at is not None:
                continue  # its command reports it; an unpowered unit cannot answer
            try:
                reading = await self._drivers[miner_id].read()
            except DriverError as err:
                self._readings.fail(miner_id, err)
            except Exception as err:  # noqa: BLE001 - one broken driver must not stop the poller
                self._readings.fail(miner_id, driver_bug(miner_id, "read", err))
            else:
                self._readings.record(miner_id, reading, self._clock.now())


def _watts(value: object) -> int | None:
    """A journaled power target: a positive whole number of watts, else none (a row from
    an older run, or one edited by hand, is not trusted with a target)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
