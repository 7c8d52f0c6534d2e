"""The site's draw as measured, and what the loop learns from it: the meter's reading
(or the miners' own figures), the draw they do not explain, the miners whose outlets
catch them lying, and the local under-frequency relay the meter feeds."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from controller.clock import Clock
from controller.core import closed_loop, frequency
from controller.core.escalation import lie
from controller.core.frequency import FrequencyRules, FrequencyState
from controller.core.model import MinerSpec, MinerView, PlanRules, measured_w
from controller.core.signals import Obligation, Override
from controller.loop.measure import Measurements, MeterSample
from controller.loop.telemetry import Readings
from controller.record.journal import Journal, JournalError

log = structlog.get_logger("curtaild.draw")

KEEP_EVENTS = 1000  # frequency events kept in memory (the journal holds them all)


@dataclass(frozen=True, slots=True)
class MeasureSettings:
    """How the loop uses measured power."""

    meter_stale_after_s: float = 3.0
    meter_lag_s: float = 1.0  # the meter's own refresh: a reading reflects this much earlier
    generation_exempt: bool = False
    lie_grace_s: float = 0.0
    lie_memory_s: float | None = 86_400.0  # a lie is remembered this long (None: for good)


class Draw:
    """What the grid sees, measured, and the closed loop on it."""

    def __init__(
        self,
        *,
        specs: Mapping[str, MinerSpec],
        readings: Readings,
        measurements: Measurements | None,
        journal: Journal,
        clock: Clock,
        rules: PlanRules,
        settings: MeasureSettings,
        frequency_rules: FrequencyRules | None,
        cap_w: int,
    ) -> None:
        self._readings = readings
        self._measurements = measurements
        self._journal = journal
        self._clock = clock
        self._rules = rules
        self._settings = settings
        self._freq_rules = frequency_rules
        self._cap_w = cap_w
        metered = measurements is not None and measurements.meter is not None
        self.measured_by = "meter" if metered else "firmware"
        self.measured_w: int | None = 0  # None: unknown (a stale meter)
        self.offset = closed_loop.Offset()  # measured draw the miners do not explain
        self.meter: MeterSample | None = None
        self.lying_detected: set[str] = set()
        self._target_lost_at: dict[str, datetime] = {}
        self._watched = [m for m, spec in specs.items() if spec.outlet is not None]
        self.freq = FrequencyState()
        self.frequency_events: deque[tuple[datetime, str, float | None]] = deque(maxlen=KEEP_EVENTS)
        self.frequency_trips = 0
        # Set by the loop: what the relay's trip does besides changing the limit.
        self.on_trip: Callable[[Obligation], None] | None = None
        self.on_event: Callable[[], None] | None = None

    @property
    def offset_w(self) -> int:
        return self.offset.w

    def measure(self, now: datetime, views: tuple[MinerView, ...]) -> None:
        """The draw the grid sees: the meter's import where there is a meter (None while it
        is stale: unknown, so over every limit), else the miners' own figures."""
        self.measured_w = self._measured(now, views)

    def _measured(self, now: datetime, views: tuple[MinerView, ...]) -> int | None:
        if self._measurements is None or self._measurements.meter is None:
            return measured_w(views, now, self._rules.stale_after)
        self.meter = self._measurements.meter_fresh(now, self._settings.meter_stale_after_s)
        if self.meter is None:
            return None
        reading = self.meter.reading
        # The meter's import is net of on-site generation. Where generation is exempt that
        # is what the limit applies to; where it is not, the limit is on the farm's gross
        # draw, so the generation it covered is added back.
        gross = 0.0 if self._settings.generation_exempt else (reading.generation_w or 0.0)
        return round(reading.import_w + gross)

    def learn(
        self,
        now: datetime,
        views: tuple[MinerView, ...],
        *,
        quiet: bool,
        last_switch: datetime | None,
    ) -> None:
        """Close the loop: once the wire is `quiet`, every command has landed and the meter
        has seen it, the draw the miners' figures do not explain is taken off the next
        plan's budget, so a draw that stays above the limit sheds more."""
        meter = self.meter
        if meter is None or not quiet:
            return
        moved = closed_loop.settled_at(views, last_switch)
        if not closed_loop.settled(meter.at, moved, timedelta(seconds=self._settings.meter_lag_s)):
            return
        unexplained = (self.measured_w or 0) - measured_w(views, now, self._rules.stale_after)
        if unexplained - self.offset.w > self._rules.margin_w:
            log.info(
                "meter reads more than the miners explain",
                unexplained_kw=unexplained / 1000,
                was_kw=self.offset.w / 1000,
            )
        self.offset = closed_loop.learn(self.offset, unexplained, now)

    def detect_lies(self, now: datetime) -> bool:
        """Judge every metered miner's firmware by its outlet; True if one was caught (the
        plan counted it as obeying: plan again)."""
        caught = False
        grace = timedelta(seconds=self._settings.lie_grace_s)
        for miner_id in self._watched:
            view = self._readings.view(miner_id)
            if view.lying is not None or view.pending is not None:
                continue
            why = lie(view, now, self._rules.stale_after, grace)
            if why is None:
                continue
            memory = self._settings.lie_memory_s
            until = None if memory is None else now + timedelta(seconds=memory)
            # The mark is a judgement of measured power, kept even if the journal cannot
            # take its event: the ladder row carries it at the next flush.
            with contextlib.suppress(JournalError):
                self._journal.record_event(now, "lying", miner_id, why)
            if self._readings.mark_lying(miner_id, why, until):
                self.lying_detected.add(miner_id)
                caught = True
        return caught

    def targets_lost(self, now: datetime) -> bool:
        """Lowered miners back at their default target (a hand on the web UI, a firmware
        that forgets it across a reboot), as telemetry found them: each is journaled; True
        if any (the plan counted them as lowered: plan again, which lowers them anew). One
        that loses its target twice within the lie memory is not lowered again for as
        long (null memory: for good): the ladder sleeps it instead of chasing it."""
        if not self._readings.targets_lost:
            return False
        lost, self._readings.targets_lost = self._readings.targets_lost, []
        memory = self._settings.lie_memory_s
        for miner_id, why in lost:
            log.info("lost its power target", miner=miner_id, detail=why)
            with contextlib.suppress(JournalError):
                self._journal.record_event(now, "target-lost", miner_id, why)
            before = self._target_lost_at.get(miner_id)
            self._target_lost_at[miner_id] = now
            if before is None:
                continue
            if memory is None:  # lies are remembered for good: so is this
                self._readings.skip_lowering(miner_id, None)
            elif now - before < timedelta(seconds=memory):
                self._readings.skip_lowering(miner_id, now + timedelta(seconds=memory))
        return True

    def forgive(self, now: datetime) -> None:
        """A lie is remembered for `lie_memory_s`, a failed power target for an hour: then
        the unit is judged afresh. Each is journaled before it is forgotten."""
        for miner_id, mark in self._readings.expiring(now):
            what = "lie" if mark == "lying" else "skipped power target"
            self._journal.record_event(now, f"{mark}-expired", miner_id, f"{what} forgotten")
            self._readings.forget(miner_id, mark)
            if mark == "lying":
                self.lying_detected.discard(miner_id)
            log.info("judged afresh", miner=miner_id, forgotten=what)

    # -- the under-frequency relay ---------------------------------------------------------

    def relay(self, now: datetime) -> tuple[Override, ...]:
        """The frequency relay's limit while it is tripped."""
        rules, state = self._freq_rules, self.freq
        if rules is None or not state.tripped:
            return ()
        limit = frequency.limit_at(state, rules, now)
        rising = " (frequency recovered; rising)" if state.recovered_at is not None else ""
        why = f"{state.trip_hz:g} Hz below {rules.trip_below_hz:g} Hz{rising}"
        return (Override("under-frequency", limit, why, "the frequency relay"),)

    def on_meter(self, sample: MeterSample | None) -> None:
        """Every meter poll: the frequency relay judges it at once, not at the next tick."""
        rules = self._freq_rules
        if rules is None:
            return
        now = self._clock.now()
        hz = sample.reading.frequency_hz if sample is not None else None
        draw = round(sample.reading.import_w) if sample is not None else self.measured_w
        self.freq, event = frequency.step(
            self.freq,
            rules,
            hz=hz,
            now=now,
            draw_w=draw if draw is not None else self._cap_w,
            cap_w=self._cap_w,
        )
        if event is None:
            return
        self.frequency_events.append((now, event.value, hz))
        limit = self.freq.limit_w
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
            if self.on_trip is not None:
                self.on_trip(ob)
        if self.on_event is not None:
            self.on_event()  # the relay's limit binds now, journaled or not
        try:
            self._journal.record_event(now, "frequency", event.value, detail)
            if ob is not None:
                self._journal.record_obligations([ob], self.measured_by)
        except JournalError:
            log.warning("frequency event not journaled; the relay's limit binds anyway")

    def meter_status(self, now: datetime) -> dict[str, Any] | None:
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
