"""Prometheus metrics: what the loop observes as it goes, and the site's state at scrape.

Each Metrics has a registry of its own, never the process-wide default: a process may host
several daemons (the tests do). Scrapes read the site's read model (SiteView), the one the
loop built last, without awaiting or I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

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

from controller.adapters.mqtt_signals import MqttSignals
from controller.core.model import FLEET_MODES
from controller.core.operator import HoldMode
from controller.core.signals import ObligationStatus
from controller.record.site import SiteFeed, SiteView

# From a LuxOS sleep (under a second) to a stock Antminer's restart (tens of seconds), up
# to the longest command budget a family gets.
COMMAND_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120)
# A quiet cycle costs well under a millisecond; planning 10,000 miners, a good part of one.
CYCLE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Exported at zero before they first happen, so increase() over a range sees the first one.
DEADLINE_KINDS = ("curtailment", "grant", "grant-end", "cancel", "under-frequency")
DEADLINE_STATUSES = (ObligationStatus.REACHED.value, ObligationStatus.MISSED.value)
ALARM_KINDS = ("heater-floor", "unapproved-pool")
# One of these per miner: they partition the fleet, so a sum over `mode` is its size.
MODES = FLEET_MODES


class Metrics:
    """The loop's observer (controller.loop.ledger.LoopObserver) and the /metrics body."""

    def __init__(self, feed: SiteFeed, mqtt: MqttSignals | None = None) -> None:
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
        self.registry.register(StateCollector(feed, mqtt))
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
    """The site's state at scrape time, from the read model the loop built last."""

    def __init__(self, feed: SiteFeed, mqtt: MqttSignals | None) -> None:
        self._feed = feed
        self._mqtt = mqtt

    def collect(self) -> Iterator[Metric]:
        view = self._feed.latest
        yield _value(
            "curtaild_ready",
            "1 once the first telemetry is in and planned on (systemd READY).",
            int(self._feed.ready),
        )
        if view is None:
            return  # nothing to say before the first report
        yield from _power(view)
        yield from _hashrate(view)
        yield from _miners(view)
        yield _gauge(
            "curtaild_device_up",
            "1 while the device's last read is fresh enough for the loop to use, else 0.",
            ("device", "kind"),
            {(d.name, d.kind): int(d.up) for d in view.devices},
        )
        yield _counter(
            "curtaild_commands_sent", "Commands sent to miners and PDUs.", view.commands_sent
        )
        yield _counter(
            "curtaild_commands_failed",
            "Commands that failed (refused, timed out, not verified by read-back).",
            view.commands_failed,
        )
        yield _counter(
            "curtaild_loop_cycles", "Supervisor loop cycles completed.", self._feed.cycles
        )
        yield _counter(
            "curtaild_cold_cuts",
            "Outlets cut in the cold because an emergency needed it (the rules refuse otherwise).",
            view.cold_cuts,
        )
        yield from self._inputs(view)
        yield from _operator(view)
        yield from _pools(view)
        alarms = Counter(dict.fromkeys(ALARM_KINDS, 0))
        alarms.update(kind for kind, _, _, _ in view.alarms)
        yield _gauge(
            "curtaild_alarms_active",
            "Alarms standing now, by kind (a heater floor not held, per container).",
            ("kind",),
            {(kind,): n for kind, n in alarms.items()},
        )
        yield _value(
            "curtaild_pending_deadlines", "Grid deadlines not yet settled.", len(view.pending)
        )

    def _inputs(self, view: SiteView) -> Iterator[Metric]:
        """What the outside sent that a human should look at, and the journal's health."""
        yield _counter(
            "curtaild_signals_contained",
            "Signals whose handling met an unexpected error: refused, journaled, logged with "
            "the payload's hash (a bug to report; the daemon went on).",
            view.signals_contained,
        )
        yield _counter(
            "curtaild_signals_unjournaled",
            "Unauthenticated HTTP signals answered but not journaled (at most one a second is).",
            view.signals_unjournaled,
        )
        yield _counter(
            "curtaild_mqtt_adapter_errors",
            "Unexpected failures the MQTT adapter survived (it reconnects and goes on).",
            self._mqtt.errors if self._mqtt is not None else 0,
        )
        yield _value(
            "curtaild_wall_clock_offset_seconds",
            "The system's wall clock minus curtaild's steady time: 0 unless it was stepped "
            "(curtaild keeps its own time; restart to adopt the wall clock).",
            view.wall_clock_offset_s or 0.0,
        )
        yield _value(
            "curtaild_journal_writable",
            "1 while the journal takes writes; 0: nothing is commanded until it does.",
            int(view.journal_error is None),
        )


def _power(view: SiteView) -> Iterator[Metric]:
    # No sample while unknown (a stale meter, no plan yet): a gap, never a made-up 0.
    yield _value(
        "curtaild_grid_draw_watts",
        "The draw deadlines are judged by: the site meter's import where there is one, "
        "else the miners' own figures; absent while unknown (a stale meter).",
        view.measured_w,
    )
    limit = None if view.limit is None else view.limit.limit_w
    yield _value("curtaild_grid_limit_watts", "The limit that applies now.", limit)
    yield _value(
        "curtaild_expected_draw_watts", "The draw the current plan expects.", view.expected_w
    )
    yield _value(
        "curtaild_unexplained_draw_watts",
        "Measured draw the miners' own figures do not explain, taken off the budget.",
        view.unexplained_w,
    )


def _hashrate(view: SiteView) -> Iterator[Metric]:
    yield _value(
        "curtaild_hashrate_ths",
        "The hashrate the miners read fresh report, in TH/s (asleep, unknown and cut miners "
        "add none).",
        view.hashrate_ths,
    )
    yield _value(
        "curtaild_plan_expected_hashrate_ths",
        "The hashrate the current plan expects once its commands land, on the miners' "
        "curves, in TH/s; absent when planned without curves.",
        view.expected_ths,
    )
    yield _value(
        "curtaild_efficiency_j_per_th",
        "The planner's estimate of the draw of the miners read fresh (from their own figures; "
        "a unit changing counts where its change ends) over their hashrate, in J/TH; absent "
        "while nothing hashes.",
        view.efficiency_j_th,
    )


def _miners(view: SiteView) -> Iterator[Metric]:
    fleet = view.fleet
    yield _gauge(
        "curtaild_miners",
        "Miners by mode: mining, sleeping, unknown (no fresh reading), cut (outlet off).",
        ("mode",),
        {(mode,): getattr(fleet, mode) for mode in MODES},
    )
    yield _gauge(
        "curtaild_miners_by_container",
        "Miners by container and mode.",
        ("container", "mode"),
        {(c.name, mode): getattr(c.miners, mode) for c in view.containers for mode in MODES},
    )
    yield _value("curtaild_miners_pending", "Miners with a command in flight.", fleet.pending)
    yield _value(
        "curtaild_miners_lowered", "Miners running at a lowered power target.", fleet.lowered
    )
    yield _value(
        "curtaild_miners_unhealthy", "Miners whose last read or command failed.", fleet.unhealthy
    )
    yield _value(
        "curtaild_miners_tuned",
        "Miners mining at a power target the allocation chose.",
        fleet.tuned,
    )


def _pools(view: SiteView) -> Iterator[Metric]:
    """Only with a `pools:` section: without one nothing is checked, and 0 would say all
    is well."""
    pools = view.pools
    if pools is None:
        return
    yield _gauge(
        "curtaild_miners_unapproved_pools",
        "Miners configured with a pool that pools.approved does not admit, by the action "
        "taken (alarm, or sleep: kept asleep until fixed).",
        ("action",),
        {(pools.enforce,): pools.unapproved},
    )
    yield _value(
        "curtaild_miners_pools_unchecked",
        "Miners whose pools were never read (a firmware without the read, or not yet).",
        len(pools.miners) - pools.checked,
    )


def _operator(view: SiteView) -> Iterator[Metric]:
    yield _value(
        "curtaild_automation_paused",
        "1 while an operator has paused the automation (sheds go on; nothing comes back).",
        int(view.automation.paused),
    )
    yield _value(
        "curtaild_overrides_active", "Operator limit overrides in force.", len(view.overrides)
    )
    holds = Counter(dict.fromkeys(HoldMode, 0))
    holds.update(h.mode for h in view.holds)
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
