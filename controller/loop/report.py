"""The loop's report: the site's state built once (record/site.py's SiteView), published
as the retained MQTT status, kept for every other reader, and the draw's history."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from controller.core.model import Horizon, Limit, MinerView, Plan
from controller.core.operator import Automation
from controller.intake.desk import Desk
from controller.intake.inbox import Inbox
from controller.loop.alarms import Alarms
from controller.loop.deadlines import Deadlines
from controller.loop.dispatch import Dispatch
from controller.loop.draw import Draw
from controller.loop.ledger import Ledger
from controller.loop.measure import Measurements
from controller.loop.pools import PoolCheck
from controller.record.journal import Journal
from controller.record.publish import Publisher
from controller.record.site import (
    RECENT_FINISHED,
    ContainerState,
    Device,
    ModeCounts,
    SiteFeed,
    SiteView,
    published,
)
from drivers.types import Mode

HISTORY_INTERVAL = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the loop decided last, for the report."""

    limit: Limit | None
    grid_limit: Limit
    plan: Plan | None
    ready: bool
    wall_clock_offset_s: float | None


@dataclass(frozen=True, slots=True)
class Staleness:
    miners: timedelta  # a miner's (or an outlet's) reading older than this is unknown
    meter_s: float
    sensors: timedelta  # a container's ambient older than this counts as cold
    restore_boot: timedelta = timedelta(0)


class Reporter:
    """Builds the SiteView when something changed (a signal, an operator, the desk) and at
    least each status interval, and hands it to every reader."""

    def __init__(
        self,
        *,
        site_id: str,
        feed: SiteFeed,
        publisher: Publisher,
        inbox: Inbox,
        desk: Desk | None,
        journal: Journal,
        draw: Draw,
        deadlines: Deadlines,
        dispatch: Dispatch,
        ledger: Ledger,
        alarms: Alarms,
        measurements: Measurements | None,
        staleness: Staleness,
        interval_s: float,
        pools: PoolCheck | None = None,
    ) -> None:
        self._site_id = site_id
        self.feed = feed
        self._publisher = publisher
        self._inbox = inbox
        self._desk = desk
        self._journal = journal
        self._draw = draw
        self._deadlines = deadlines
        self._dispatch = dispatch
        self._ledger = ledger
        self._alarms = alarms
        self._measurements = measurements
        self._stale = staleness
        self._interval_s = interval_s
        self._pools = pools
        self._last: datetime | None = None
        self._desk_seen = -1

    def report(
        self,
        now: datetime,
        views: tuple[MinerView, ...],
        decision: Callable[[], Decision],
        *,
        changed: bool = False,
    ) -> None:
        """The view, built once, published: when the cycle was caused by a change, when the
        desk changed, else once per interval (the fleet's own drift is not worth a rebuild
        per tick at 10,000 miners). The history every HISTORY_INTERVAL."""
        desk = self._desk.version if self._desk is not None else 0
        due = self._last is None or (now - self._last).total_seconds() >= self._interval_s
        if changed or due or desk != self._desk_seen:
            self._last, self._desk_seen = now, desk
            view = self.build(now, views, decision())  # decided only when a view is due
            self.feed.publish(view)
            self._publisher.status(published(view))
        history = self.feed.history
        if not history or now - history[-1][0] >= HISTORY_INTERVAL:
            held = decision().limit
            limit = held.limit_w if held is not None else None
            history.append((now, self._draw.measured_w, limit))

    def prime(self, now: datetime, views: tuple[MinerView, ...], decision: Decision) -> None:
        """A first view for readers, before the first sweep is in (not published to the
        grid: the MQTT status starts with the first cycle, as it always did). Readers never
        meet an empty feed."""
        self.feed.publish(self.build(now, views, decision))

    def build(self, now: datetime, views: tuple[MinerView, ...], decision: Decision) -> SiteView:
        draw, desk = self._draw, self._desk
        fleet = self._fleet(now, views)
        plan = decision.plan
        return SiteView(
            at=now,
            site=self._site_id,
            ready=decision.ready,
            limit=decision.limit,
            grid_limit=decision.grid_limit,
            measured_w=draw.measured_w,
            measured_by=draw.measured_by,
            meter=draw.meter_status(now),
            unexplained_w=draw.offset_w,
            expected_w=plan.expected_w if plan is not None else None,
            fleet=fleet.modes,
            containers=fleet.containers,
            held=tuple(self._inbox.book.held.values()),
            pending=tuple(self._deadlines.pending),
            finished=tuple(self._deadlines.finished)[-RECENT_FINISHED:],
            overrides=tuple(desk.overrides.values()) if desk else tuple(self._inbox.overrides),
            override_made=dict(desk.created) if desk is not None else {},
            holds=tuple(desk.holds.values()) if desk is not None else (),
            automation=desk.automation if desk is not None else _RUNNING,
            alarms=tuple(
                (kind, subject, at, detail)
                for (kind, subject), (at, detail) in sorted(self._alarms.active().items())
            ),
            cold_cuts=self._alarms.cold_cut_count,
            escalations={k: len(v) for k, v in self._dispatch.escalations.items()},
            lying=tuple(sorted(fleet.lying | draw.lying_detected)),
            journal_error=self._journal.error,
            wall_clock_offset_s=decision.wall_clock_offset_s,
            commands_sent=self._ledger.sent,
            commands_failed=self._ledger.failed,
            devices=self._devices(now, fleet.outlets),
            signals_contained=self._inbox.internal_errors,
            signals_unjournaled=self._inbox.unjournaled,
            pools=self._pools.view() if self._pools is not None else None,
            hashrate_ths=fleet.hashrate_ths,
            fresh_draw_w=fleet.fresh_draw_w,
            expected_ths=plan.expected_ths if plan is not None else None,
        )

    def _fleet(self, now: datetime, views: tuple[MinerView, ...]) -> Fleet:
        ambient = self._measurements.ambient if self._measurements is not None else {}
        return walk(now, views, self._stale, ambient)

    def _devices(self, now: datetime, outlets_seen: Mapping[str, datetime]) -> tuple[Device, ...]:
        """The meter by its own staleness; a PDU by its newest outlet reading, judged as
        the loop judges outlet readings; a sensor as the cold-weather rules judge it."""
        measurements = self._measurements
        if measurements is None:
            return ()
        devices = []
        faults = measurements.health.faults
        if measurements.meter is not None:
            fresh = measurements.meter_fresh(now, self._stale.meter_s) is not None
            name = measurements.meter.name
            devices.append(Device(name, "meter", fresh, name in faults))
        for name in measurements.pdus:
            last = outlets_seen.get(name)
            fresh = last is not None and now - last <= self._stale.miners
            devices.append(Device(name, "pdu", fresh, name in faults))
        for container, sensor in measurements.sensors.items():
            seen = measurements.ambient.get(container)
            up = seen is not None and now - seen[1] <= self._stale.sensors
            devices.append(Device(sensor.name, "sensor", up, sensor.name in faults))
        return tuple(devices)


_RUNNING = Automation()  # no desk: the automation runs
_TOTAL, _MINING, _SLEEPING, _UNKNOWN, _CUT, _PENDING, _LOWERED, _UNHEALTHY, _TUNED = range(9)


class Fleet(NamedTuple):
    """One walk's findings (walk)."""

    modes: ModeCounts
    containers: tuple[ContainerState, ...]
    lying: set[str]  # caught by a command's read-back
    outlets: dict[str, datetime]  # each PDU's newest outlet reading
    hashrate_ths: float  # of the miners read fresh and mining
    fresh_draw_w: int  # the estimated draw of the miners read fresh (not cut)


def walk(
    now: datetime,
    views: tuple[MinerView, ...],
    stale: Staleness,
    ambient: Mapping[str, tuple[float, datetime]],
) -> Fleet:
    """One walk over the fleet: counts by mode overall and per container, each container's
    estimated draw and hottest board, miners caught lying by a command's read-back, each
    PDU's newest outlet reading, and the hashrate the fleet holds and what it costs.

    This runs at least once per status interval and blocks the event loop while it does
    (every API request waits for it): at 10,000 miners, per miner it compares instants
    computed once (fleet_mode's test, inline) and counts into plain lists."""
    horizon = Horizon(now, stale.miners, stale.restore_boot)
    estimate, fresh_from = horizon.estimate, horizon.fresh_from
    # Per container: [total, mining, sleeping, unknown, cut, pending, lowered, unhealthy, tuned]
    counts: dict[str, list[int]] = {}
    draws: dict[str, int] = {}
    hottest: dict[str, float] = {}
    lying: set[str] = set()
    outlets: dict[str, datetime] = {}
    hashrate, fresh_w = 0.0, 0
    sleeping = Mode.SLEEPING
    for view in views:
        spec = view.spec
        container = spec.container
        bucket = counts.get(container)
        if bucket is None:
            bucket = counts[container] = [0] * 9
            draws[container] = 0
        bucket[_TOTAL] += 1
        reading, read_at = view.reading, view.read_at
        fresh = reading is not None and read_at is not None and read_at >= fresh_from
        draw = estimate(view)
        if view.cut_at is not None:  # fleet_mode, inline; and record.site.setting's order
            bucket[_CUT] += 1
        else:
            if not fresh or reading is None:
                bucket[_UNKNOWN] += 1
            elif reading.mode is sleeping:
                bucket[_SLEEPING] += 1
                fresh_w += draw
            else:
                bucket[_MINING] += 1
                bucket[_TUNED] += view.target_w is not None
                hashrate += reading.hashrate_ths
                fresh_w += draw
            bucket[_PENDING] += view.pending is not None
            bucket[_UNHEALTHY] += not view.healthy
        bucket[_LOWERED] += view.lowered_at is not None
        draws[container] += draw
        if fresh and reading is not None and reading.board_temps_c:
            hottest[container] = max(hottest.get(container, -273.0), *reading.board_temps_c)
        reason = view.health_reason
        if reason is not None and reason.startswith("lying"):
            lying.add(spec.id)
        if spec.outlet is not None and view.outlet is not None:
            pdu = spec.outlet.rpartition("#")[0]
            seen = view.outlet.read_at
            if pdu not in outlets or seen > outlets[pdu]:
                outlets[pdu] = seen
    containers = tuple(
        ContainerState(
            name=name,
            miners=_mode_counts(counts[name]),
            draw_w=draws.get(name, 0),
            board_temp_max_c=hottest.get(name),
            ambient_c=ambient[name][0] if name in ambient else None,
            ambient_age_s=round((now - ambient[name][1]).total_seconds(), 1)
            if name in ambient
            else None,
        )
        for name in sorted(counts)
    )
    total = _mode_counts([sum(column) for column in zip(*counts.values(), strict=True)])
    return Fleet(total, containers, lying, outlets, hashrate, fresh_w)


def _mode_counts(tally: list[int]) -> ModeCounts:
    return ModeCounts(*tally)  # the fields, in _TOTAL .. _TUNED order
