"""Prometheus metrics: what the loop observes as it goes, and the daemon's state at scrape.

Each Metrics has a registry of its own, never the process-wide default: a process may host
several daemons (the tests do). Scrapes read the daemon's state without awaiting or I/O,
so call exposition() from the daemon's event loop (the operator API's handler), not from
another thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.config import SafetyCfg
from controller.core.model import FLEET_MODES, MinerView, fleet_mode, tally
from controller.core.operator import HoldMode
from controller.core.signals import ObligationStatus
from controller.intake.desk import Desk

if TYPE_CHECKING:
    from controller.app import Daemon

# From a LuxOS sleep (under a second) to a stock Antminer's restart (tens of seconds), up
# to the longest command budget a family gets.
COMMAND_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120)
# A quiet cycle costs well under a millisecond; planning 10,000 miners, a good part of one.
CYCLE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Exported at zero before they first happen, so increase() over a range sees the first one.
DEADLINE_KINDS = ("curtailment", "grant", "grant-end", "cancel", "under-frequency")
DEADLINE_STATUSES = (ObligationStatus.REACHED.value, ObligationStatus.MISSED.value)
ALARM_KINDS = ("heater-floor",)
# One of these per miner: they partition the fleet, so a sum over `mode` is its size.
MODES = FLEET_MODES


class Metrics:
    """The loop's observer (controller.loop.supervisor.LoopObserver) and the /metrics body."""

    def __init__(self, daemon: Daemon) -> None:
        self.registry = CollectorRegistry()
        self._command = Histogram(
            "curtaild_command_duration_seconds",
            "Time from a command leaving to its verified read-back (or its failure).",
            ("action", "family", "outcome"),
            buckets=COMMAND_BUCKETS_S,
            registry=self.registry,
        )
        self._cycle = Histogram(
            "curtaild_loop_cycle_seconds",
            "CPU-bound cost of one supervisor loop cycle (freeze, decide, dispatch, report).",
            buckets=CYCLE_BUCKETS_S,
            registry=self.registry,
        )
        self._deadline = PromCounter(
            "curtaild_deadlines",
            "Grid deadlines settled, by obligation kind and whether the limit was reached.",
            ("kind", "status"),
            registry=self.registry,
        )
        for kind in DEADLINE_KINDS:
            for status in DEADLINE_STATUSES:
                self._deadline.labels(kind, status)
        self.registry.register(StateCollector(daemon))
        ProcessCollector(registry=self.registry)  # memory, CPU, open descriptors

    def command(self, action: str, family: str, seconds: float, outcome: str) -> None:
        self._command.labels(action, family, outcome).observe(seconds)

    def cycle(self, seconds: float) -> None:
        self._cycle.observe(seconds)

    def deadline(self, kind: str, status: str) -> None:
        self._deadline.labels(kind, status).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The body and content type to serve at GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class StateCollector(Collector):
    """Reads the daemon's state at scrape time: gauges, and counters the loop keeps."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        config = daemon.loaded.config
        self._miner_stale = timedelta(seconds=config.telemetry.stale_after_s)
        self._meter_stale_s = config.meter.stale_after_s if config.meter is not None else 0.0
        safety = config.safety or SafetyCfg()
        self._sensor_stale = timedelta(seconds=safety.temperature_stale_after_s)

    def collect(self) -> Iterator[Metric]:
        daemon = self._daemon
        sup = daemon.supervisor
        now = daemon.clock.now()
        yield from self._power()
        yield from self._miners(daemon.readings.views(), now)
        yield _gauge(
            "curtaild_device_up",
            "1 while the device's last read is fresh enough for the loop to use, else 0.",
            ("device", "kind"),
            self._devices(now),
        )
        yield _counter(
            "curtaild_commands_sent", "Commands sent to miners and PDUs.", sup.commands_sent
        )
        yield _counter(
            "curtaild_commands_failed",
            "Commands that failed (refused, timed out, not verified by read-back).",
            sup.commands_failed,
        )
        yield _counter("curtaild_loop_cycles", "Supervisor loop cycles completed.", sup.cycles)
        yield _counter(
            "curtaild_cold_cuts",
            "Outlets cut in the cold because an emergency needed it (the rules refuse otherwise).",
            sup.cold_cut_count,
        )
        yield from self._inputs()
        yield from self._operator()
        alarms = Counter(dict.fromkeys(ALARM_KINDS, 0))
        alarms.update(kind for kind, _ in sup.alarms)
        yield _gauge(
            "curtaild_alarms_active",
            "Alarms standing now, by kind (a heater floor not held, per container).",
            ("kind",),
            {(kind,): n for kind, n in alarms.items()},
        )
        pending = sum(o.status is ObligationStatus.PENDING for o in sup.obligations)
        yield _value("curtaild_pending_deadlines", "Grid deadlines not yet settled.", pending)
        yield _value(
            "curtaild_ready",
            "1 once the first telemetry is in and planned on (systemd READY).",
            int(sup.ready.is_set()),
        )

    def _inputs(self) -> Iterator[Metric]:
        """What the outside sent that a human should look at, and the journal's health."""
        daemon = self._daemon
        inbox = daemon.inbox
        yield _counter(
            "curtaild_signals_contained",
            "Signals whose handling met an unexpected error: refused, journaled, logged with "
            "the payload's hash (a bug to report; the daemon went on).",
            inbox.internal_errors,
        )
        yield _counter(
            "curtaild_signals_unjournaled",
            "Unauthenticated HTTP signals answered but not journaled (at most one a second is).",
            inbox.unjournaled,
        )
        mqtt = daemon.mqtt
        yield _counter(
            "curtaild_mqtt_adapter_errors",
            "Unexpected failures the MQTT adapter survived (it reconnects and goes on).",
            mqtt.errors if mqtt is not None else 0,
        )
        yield _value(
            "curtaild_wall_clock_offset_seconds",
            "The system's wall clock minus curtaild's steady time: 0 unless it was stepped "
            "(curtaild keeps its own time; restart to adopt the wall clock).",
            daemon.supervisor.clock_step_s or 0.0,
        )
        yield _value(
            "curtaild_journal_writable",
            "1 while the journal takes writes; 0: nothing is commanded until it does.",
            int(daemon.journal.error is None),
        )

    def _power(self) -> Iterator[Metric]:
        sup = self._daemon.supervisor
        # No sample while unknown (a stale meter, no plan yet): a gap, never a made-up 0.
        yield _value(
            "curtaild_grid_draw_watts",
            "The draw deadlines are judged by: the site meter's import where there is one, "
            "else the miners' own figures; absent while unknown (a stale meter).",
            sup.measured_w,
        )
        limit = None if sup.limit is None else sup.limit.limit_w
        yield _value("curtaild_grid_limit_watts", "The limit that applies now.", limit)
        expected = None if sup.plan is None else sup.plan.expected_w
        yield _value("curtaild_expected_draw_watts", "The draw the current plan expects.", expected)
        yield _value(
            "curtaild_unexplained_draw_watts",
            "Measured draw the miners' own figures do not explain, taken off the budget.",
            sup.offset_w,
        )

    def _miners(self, views: tuple[MinerView, ...], now: datetime) -> Iterator[Metric]:
        """Counted as Supervisor.status() counts them."""
        counts = dict.fromkeys((*MODES, "pending", "lowered", "unhealthy"), 0)
        by_container: Counter[tuple[str, ...]] = Counter()
        for view in views:
            tally(view, now, self._miner_stale, counts)
            by_container[view.spec.container, fleet_mode(view, now, self._miner_stale)] += 1
        modes = {mode: counts[mode] for mode in MODES}
        pending, lowered, unhealthy = counts["pending"], counts["lowered"], counts["unhealthy"]
        containers = sorted({v.spec.container for v in views})
        yield _gauge(
            "curtaild_miners",
            "Miners by mode: mining, sleeping, unknown (no fresh reading), cut (outlet off).",
            ("mode",),
            {(mode,): n for mode, n in modes.items()},
        )
        yield _gauge(
            "curtaild_miners_by_container",
            "Miners by container and mode.",
            ("container", "mode"),
            {(c, mode): by_container[c, mode] for c in containers for mode in MODES},
        )
        yield _value("curtaild_miners_pending", "Miners with a command in flight.", pending)
        yield _value(
            "curtaild_miners_lowered", "Miners running at a lowered power target.", lowered
        )
        yield _value(
            "curtaild_miners_unhealthy", "Miners whose last read or command failed.", unhealthy
        )

    def _devices(self, now: datetime) -> dict[tuple[str, ...], float]:
        """The meter by its own stale_after; a PDU by its newest outlet reading, judged as
        the loop judges outlet readings; a sensor as the cold-weather rules judge it."""
        daemon = self._daemon
        up: dict[tuple[str, ...], float] = {}
        measurements = daemon.measurements
        if measurements.meter is not None:
            fresh = measurements.meter_fresh(now, self._meter_stale_s) is not None
            up[measurements.meter.name, "meter"] = int(fresh)
        if measurements.pdus:
            newest: dict[str, datetime] = {}
            for view in daemon.readings.views():
                if view.spec.outlet is None or view.outlet is None:
                    continue
                pdu = view.spec.outlet.rpartition("#")[0]
                read_at = view.outlet.read_at
                if pdu not in newest or read_at > newest[pdu]:
                    newest[pdu] = read_at
            for name in measurements.pdus:
                last = newest.get(name)
                up[name, "pdu"] = int(last is not None and now - last <= self._miner_stale)
        for container, sensor in measurements.sensors.items():
            seen = measurements.ambient.get(container)
            up[sensor.name, "sensor"] = int(
                seen is not None and now - seen[1] <= self._sensor_stale
            )
        return up

    def _operator(self) -> Iterator[Metric]:
        # The desk is optional: a daemon without an operator API has none.
        desk = cast("Desk | None", getattr(self._daemon, "desk", None))
        paused = desk is not None and desk.paused
        overrides = len(desk.overrides) if desk is not None else len(self._daemon.inbox.overrides)
        yield _value(
            "curtaild_automation_paused",
            "1 while an operator has paused the automation (sheds go on; nothing comes back).",
            int(paused),
        )
        yield _value("curtaild_overrides_active", "Operator limit overrides in force.", overrides)
        holds = Counter(dict.fromkeys(HoldMode, 0))
        if desk is not None:
            holds.update(h.mode for h in desk.holds.values())
        yield _gauge(
            "curtaild_holds_active",
            "Operator holds on miners, by mode (sleep: kept asleep; run: shed last).",
            ("mode",),
            {(mode.value,): n for mode, n in holds.items()},
        )


def _gauge(
    name: str, documentation: str, labels: tuple[str, ...], samples: Mapping[tuple[str, ...], float]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples.items():
        family.add_metric(values, value)
    return family


def _value(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    """A gauge without labels; no sample while `value` is unknown."""
    family = GaugeMetricFamily(name, documentation, labels=())
    if value is not None:
        family.add_metric((), value)
    return family


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """`name` without `_total`: the exposition adds it."""
    family = CounterMetricFamily(name, documentation, labels=())
    family.add_metric((), value)
    return family
