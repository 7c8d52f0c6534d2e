"""Wiring: config -> drivers, adapters and the supervisor, all under one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import structlog

from controller.adapters.grid_http import GridHttp
from controller.adapters.metrics import Metrics
from controller.adapters.mqtt_signals import MqttSignals
from controller.adapters.openadr import openadr_ven
from controller.adapters.operator_api.server import OperatorApi
from controller.adapters.systemd import Notifier
from controller.clock import Clock
from controller.config import Loaded, ModbusDeviceCfg, SafetyCfg, listeners
from controller.core.model import MinerSpec
from controller.core.signals import Obligation
from controller.intake.desk import Desk
from controller.intake.inbox import Inbox
from controller.loop.alarms import Alarms
from controller.loop.curves import CurveBook
from controller.loop.deadlines import Deadlines
from controller.loop.dispatch import Dispatch
from controller.loop.draw import Draw, MeasureSettings
from controller.loop.energy import EnergyAccount, tee
from controller.loop.ledger import Ledger, LoopSettings
from controller.loop.measure import Measurements
from controller.loop.outlets import Outlets, OutletSettings
from controller.loop.pools import PoolCheck
from controller.loop.recovery import Recovery
from controller.loop.report import HISTORY_INTERVAL, Reporter, Staleness
from controller.loop.supervisor import Parts, Supervisor
from controller.loop.telemetry import Activity, Poller, Readings
from controller.record.compliance_source import JournalCompliance
from controller.record.journal import Journal
from controller.record.publish import Fanout, Recorder
from controller.record.site import SiteFeed
from controller.record.upkeep import Upkeep
from controller.tls import ServerTls
from drivers.meter.modbus_meter import ModbusMeter
from drivers.meter.sensor import ModbusTemperature
from drivers.pdu.modbus_pdu import ModbusPdu
from drivers.registry import MinerRegistry, default_registry
from drivers.transport import admission, http
from drivers.transport.modbus import ModbusLink
from drivers.types import MinerDriver, MinerEndpoint

log = structlog.get_logger("curtaild.app")

COMMAND_TIMEOUT_CALLS = 5  # a LuxOS write is logon, command, logoff and a read-back or two
# A pools read is one request, after a login (BOS+) or the firmware probe (Whatsminer).
POOLS_TIMEOUT_CALLS = 3
# Collect young objects less often: a fleet-wide shed allocates tens of thousands of
# short-lived objects, and every gen-0 pass over them sits on the path to the last ack.
GC_GEN0_THRESHOLD = 20_000
# Descriptors kept back from the command fan-out for the journal, MQTT, HTTP and logs.
RESERVED_FDS = 512


def _fd_bounded(wanted: int, what: str) -> int:
    """A count of sockets in use at once, capped by the open-file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    allowed = max(1, soft - RESERVED_FDS)
    if allowed < wanted:
        log.warning(
            "concurrency capped by the open-file limit",
            setting=what,
            wanted=wanted,
            allowed=allowed,
            nofile=soft,
        )
    return min(wanted, allowed)


# SIGTERM to exit: the commands in flight finish within their own deadlines (seconds; a
# stock Antminer's restart, tens), well inside systemd's TimeoutStopSec.
STOP_GRACE_S = 45.0


class DaemonError(Exception):
    """The daemon could not start."""


class Daemon:
    """Every part of curtaild for one site. Use as an async context manager or run()."""

    def __init__(
        self,
        loaded: Loaded,
        clock: Clock,
        *,
        registry: MinerRegistry | None = None,
        tune_gc: bool = False,
        notifier: Notifier | None = None,
    ) -> None:
        """`tune_gc` is for the process that hosts the daemon (the CLI, the benchmark):
        it changes the interpreter's collector for the whole process. `notifier` speaks
        to systemd (READY, WATCHDOG, STOPPING); none: not under systemd."""
        self.tune_gc = tune_gc
        self.notifier = notifier or Notifier(None)
        config = loaded.config
        self.loaded = loaded
        self.clock = clock
        registry = registry or default_registry()
        self.journal = Journal(config.journal.path)
        # The chain checked off the loop (`evidence.chain` for the dashboard); retention.
        self.evidence = Upkeep(
            self.journal,
            clock,
            retention_days=config.journal.retention_days,
            archive_path=config.journal.archive_path,
        )
        self.specs: dict[str, MinerSpec] = {}
        self.drivers: dict[str, MinerDriver] = {}
        for m in loaded.miners:
            entry = registry.get(m.driver)
            plug = loaded.outlets.get(m.id)
            self.specs[m.id] = MinerSpec(
                m.id,
                entry.name,
                m.container,
                m.rated_power_w,
                m.efficiency_j_th,
                entry.traits,
                outlet=None if plug is None else f"{plug[0]}#{plug[1]}",
            )
            self.drivers[m.id] = entry.factory(
                MinerEndpoint(m.id, m.host, m.port, m.timeout_s, m.username, m.password, m.web_port)
            )
        # Process-wide: every transport shares the gate (one daemon per process).
        admission.set_limit(_fd_bounded(config.control.io_concurrency, "I/O concurrency"))
        self.activity = Activity()
        self.readings = Readings(self.specs)
        self._modbus(loaded, clock)
        telemetry = config.telemetry
        self.poller = Poller(
            self.drivers,
            self.readings,
            clock,
            interval_s=telemetry.interval_s,
            fast_interval_s=telemetry.fast_interval_s,
            concurrency=telemetry.concurrency,
            activity=self.activity,
        )
        self.recorder = Recorder()
        self.publisher = Fanout(self.recorder)
        book = self.journal.restore_book()
        obligations = self.journal.obligations(pending_only=True)
        if book.held or obligations:
            log.info(
                "restored from journal",
                signals=sorted(book.held),
                deadlines=[o.key for o in obligations],
            )
        signals = config.signals
        self.inbox = Inbox(
            journal=self.journal,
            clock=clock,
            keys=loaded.source_keys,
            replay_window_s=signals.replay_window_s,
            book=book,
            publisher=self.publisher,
        )
        self.mqtt: MqttSignals | None = None
        if signals.mqtt is not None:
            self.mqtt = MqttSignals(
                inbox=self.inbox,
                site_id=config.site.id,
                host=signals.mqtt.host,
                port=signals.mqtt.port,
                prefix=signals.mqtt.topic_prefix,
                client_id=signals.mqtt.client_id,
                username=signals.mqtt.username,
                password=loaded.mqtt_password,
                tls=signals.mqtt.tls,
                keepalive_s=signals.mqtt.keepalive_s,
                backoff_max_s=signals.mqtt.reconnect_max_s,
            )
            self.publisher.add(self.mqtt)
        # Each TLS listener's certificate; reload_tls (SIGHUP) re-reads them.
        self.tls = {
            name: ServerTls(name, listener.tls.files())
            for name, listener in listeners(config).items()
            if listener.tls is not None
        }
        self.http = (
            GridHttp(
                self.inbox, signals.http.host, signals.http.port, tls=self.tls.get("signals.http")
            )
            if signals.http is not None
            else None
        )
        # The operator's overrides, holds and automation switch, restored from the journal.
        self.desk = Desk(journal=self.journal, inbox=self.inbox, miners=self.specs, now=clock.now())
        self.feed = SiteFeed()
        if config.api is not None:
            points = round(config.api.history_s / HISTORY_INTERVAL.total_seconds())
            self.feed.history = deque(maxlen=points)
        # grid.openadr: the site as an OpenADR 2.0b VEN, hearing its events' acks.
        self.openadr = openadr_ven(loaded, self.inbox, self.feed, clock, self.publisher)
        self.supervisor = self._loop(loaded, clock, registry, obligations, tune_gc=tune_gc)
        self.desk.on_change = self.supervisor.nudge
        self.metrics: Metrics | None = None
        self.api: OperatorApi | None = None
        if config.api is not None:
            self.metrics = Metrics(self.feed, self.mqtt)
            self.supervisor.observer = self.metrics
            self.api = OperatorApi(
                feed=self.feed,
                desk=self.desk,
                readings=self.readings,
                journal=self.journal,
                clock=clock,
                cfg=config.api,
                grid_limit=self.supervisor.grid_limit,
                metrics=self.metrics,
                stale_after=loaded.plan_rules().stale_after,
                stall_after_s=max(10.0, 10 * config.control.tick_s),
                history_interval_s=HISTORY_INTERVAL.total_seconds(),
                tls=self.tls.get("api"),
                inbox=self.inbox,
                site_cap_w=loaded.grid_policy().cap_w,
                compliance=JournalCompliance(
                    config.journal.path,
                    site_id=config.site.id,
                    chain=lambda: self.evidence.chain,
                    pools=lambda: self.feed.latest.pools if self.feed.latest else None,
                ),
                openadr=self.openadr,  # an operator's opt-out of a VTN's event
            )
        self._task: asyncio.Task[None] | None = None

    def _loop(
        self,
        loaded: Loaded,
        clock: Clock,
        registry: MinerRegistry,
        obligations: list[Obligation],
        *,
        tune_gc: bool,
    ) -> Supervisor:
        """The control loop and the parts of its cycle, each with its own job."""
        config = loaded.config
        control = config.control
        escalation = config.escalation
        rules = loaded.plan_rules()
        slowest = max((m.timeout_s for m in loaded.miners), default=3.0)
        settings = LoopSettings(
            tick_s=control.tick_s,
            fast_tick_s=control.fast_tick_s,
            command_timeout_s=slowest * COMMAND_TIMEOUT_CALLS,
            command_timeouts={
                m.id: (registry.get(m.driver).traits.command_budget_s or 0.0)
                + m.timeout_s * COMMAND_TIMEOUT_CALLS
                for m in loaded.miners
            },
            command_concurrency=_fd_bounded(control.command_concurrency, "command concurrency"),
            retry_backoff_s=control.retry_backoff_s,
            retry_backoff_max_s=control.retry_backoff_max_s,
            first_read_timeout_s=slowest * 2,
            pause_gc_in_fanout=tune_gc,
        )
        measure = MeasureSettings(
            meter_stale_after_s=config.meter.stale_after_s if config.meter else 3.0,
            meter_lag_s=config.meter.update_lag_s if config.meter else 1.0,
            generation_exempt=bool(config.meter and config.meter.generation_exempt),
            lie_grace_s=escalation.lie_grace_s,
            lie_memory_s=escalation.lie_memory_s,
        )
        ledger = Ledger(
            specs=self.specs,
            readings=self.readings,
            clock=clock,
            activity=self.activity,
            settings=settings,
            on_idle=self.inbox.wake.set,  # verify at once rather than at the next tick
        )
        outlets = Outlets(
            wiring={miner: (self.pdus[pdu], n) for miner, (pdu, n) in loaded.outlets.items()},
            readings=self.readings,
            ledger=ledger,
            clock=clock,
            activity=self.activity,
            settings=OutletSettings(
                cut_batch_size=escalation.cut_batch_size,
                cut_batch_spacing_s=escalation.cut_batch_spacing_s,
                restore_batch_size=escalation.restore_batch_size,
                restore_batch_spacing_s=escalation.restore_batch_spacing_s,
                switch_timeout_s=escalation.switch_timeout_s,
            ),
            emergency=lambda: supervisor.emergency(),  # noqa: PLW0108 - built below
        )
        dispatch = Dispatch(
            specs=self.specs,
            drivers=self.drivers,
            readings=self.readings,
            ledger=ledger,
            outlets=outlets,
            clock=clock,
            activity=self.activity,
            rules=rules,
            settings=settings,
        )
        policy = loaded.grid_policy()
        deadlines = Deadlines(
            inbox=self.inbox,
            journal=self.journal,
            publisher=self.publisher,
            policy=policy,
            pending=obligations,
            known_keys=self.journal.obligation_keys(),
        )
        draw = Draw(
            specs=self.specs,
            readings=self.readings,
            measurements=self.measurements,
            journal=self.journal,
            clock=clock,
            rules=rules,
            settings=measure,
            frequency_rules=loaded.frequency_rules(),
            cap_w=policy.cap_w,
        )
        alarms = Alarms(self.journal)
        self.pools: PoolCheck | None = None
        if config.pools is not None:
            self.pools = PoolCheck(
                drivers=self.drivers,
                approved=config.pools.approved_pools(),
                enforce=config.pools.enforce,
                interval_s=config.pools.check_interval_s,
                concurrency=config.pools.concurrency,
                timeouts={m.id: m.timeout_s * POOLS_TIMEOUT_CALLS for m in loaded.miners},
                journal=self.journal,
                alarms=alarms,
                clock=clock,
                activity=self.activity,
            )
        safety = config.safety or SafetyCfg()
        reporter = Reporter(
            site_id=config.site.id,
            feed=self.feed,
            publisher=self.publisher,
            inbox=self.inbox,
            desk=self.desk,
            journal=self.journal,
            draw=draw,
            deadlines=deadlines,
            dispatch=dispatch,
            ledger=ledger,
            alarms=alarms,
            measurements=self.measurements,
            staleness=Staleness(
                miners=rules.stale_after,
                meter_s=measure.meter_stale_after_s,
                sensors=timedelta(seconds=safety.temperature_stale_after_s),
            ),
            interval_s=settings.status_interval_s,
            pools=self.pools,
        )
        curves = CurveBook(self.specs, stale_after=rules.stale_after, boot=rules.restore_boot)
        recovery = Recovery(
            specs=self.specs,
            readings=self.readings,
            journal=self.journal,
            clock=clock,
            rules=rules,
            settings=settings,
            draw=draw,
            curves=curves,
        )
        account = EnergyAccount(
            journal=self.journal,
            clock=clock,
            policy=policy,
            inbox=self.inbox,
            deadlines=deadlines,
            meter_stale_after_s=measure.meter_stale_after_s if self.meter is not None else None,
            generation_exempt=measure.generation_exempt,
            stale_after=rules.stale_after,
        )
        supervisor = Supervisor(
            readings=self.readings,
            poller=self.poller,
            inbox=self.inbox,
            journal=self.journal,
            clock=clock,
            policy=policy,
            rules=rules,
            settings=settings,
            activity=self.activity,
            parts=Parts(
                ledger, dispatch, outlets, deadlines, draw, alarms, recovery, reporter, account
            ),
            measurements=self.measurements,
            desk=self.desk,
            pools=self.pools,
            curves=curves,
        )
        if self.pools is not None:
            self.pools.on_change = lambda: supervisor.replan("pools")
        # After the supervisor: it gives the relay the meter's callback; the account shares it.
        self.measurements.on_meter = tee(self.measurements.on_meter, account.on_meter)
        return supervisor

    def reload_tls(self) -> bool:
        """SIGHUP: each TLS listener re-reads its certificate, key and client CA for new
        connections. A listener whose files fail keeps its old ones and logs an error; the
        daemon runs on either way. True if every listener loaded its new files."""
        if not self.tls:
            log.info("reload: no listener uses TLS; nothing to reload")
            return True
        loaded = [tls.reload() for tls in self.tls.values()]  # every one, even after a failure
        return all(loaded)

    def _modbus(self, loaded: Loaded, clock: Clock) -> None:
        """The PDUs, the site meter and temperature sensors, each on its own Modbus link."""
        config = loaded.config

        def link(device: ModbusDeviceCfg) -> ModbusLink:
            return ModbusLink(
                device.id,
                device.host,
                device.port,
                unit=device.unit,
                timeout_s=device.timeout_s,
                retries=device.retries,
            )

        self.pdus = {p.id: ModbusPdu(p.id, link(p), loaded.maps[p.id]) for p in config.pdus}
        self.meter = (
            ModbusMeter(config.meter.id, link(config.meter), loaded.maps[config.meter.id])
            if config.meter is not None
            else None
        )
        self.sensors = {
            s.container: ModbusTemperature(s.id, link(s), loaded.maps[s.id]) for s in config.sensors
        }
        self.measurements = Measurements(
            meter=self.meter,
            pdus=self.pdus,
            wiring={plug: miner for miner, plug in loaded.outlets.items()},
            readings=self.readings,
            clock=clock,
            meter_interval_s=config.meter.interval_s if config.meter else 1.0,
            pdu_interval_s=config.escalation.pdu_interval_s,
            activity=self.activity,
            sensors=self.sensors,
            sensor_interval_s=min((s.interval_s for s in config.sensors), default=10.0),
        )

    def _parts(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """Every background part this site's config asks for, by task name."""
        wanted: list[tuple[str, Callable[[], Coroutine[Any, Any, None]] | None]] = [
            ("telemetry", self.poller.run),
            ("meter", self.measurements.run_meter if self.meter is not None else None),
            ("pdus", self.measurements.run_pdus if self.pdus else None),
            ("sensors", self.measurements.run_sensors if self.sensors else None),
            ("supervisor", self.supervisor.run),
            ("chain", self.evidence.run_checks),
            (
                "retention",
                self.evidence.run_retention if self.evidence.retention_days is not None else None,
            ),
            ("pools", self.pools.run if self.pools is not None else None),
            ("systemd", self._ready),
            ("gc", self._tune_gc if self.tune_gc else None),
            ("mqtt_signals", self.mqtt.run if self.mqtt is not None else None),
            ("grid_http", self.http.run if self.http is not None else None),
            ("operator_api", self.api.run if self.api is not None else None),
            ("openadr", self.openadr.run if self.openadr is not None else None),
        ]
        return [(f"curtaild.{name}", start()) for name, start in wanted if start is not None]

    async def run(self) -> None:
        """Run until cancelled; any part failing stops the whole daemon."""
        try:
            async with asyncio.TaskGroup() as tg:
                for name, part in self._parts():
                    tg.create_task(part, name=name)
        finally:
            await asyncio.gather(
                *(d.close() for d in self.drivers.values()),
                *(p.close() for p in self.pdus.values()),
                *(s.close() for s in self.sensors.values()),
                *([self.meter.close()] if self.meter is not None else []),
                return_exceptions=True,
            )
            await http.close_sessions()
            self.journal.close()

    async def _ready(self) -> None:
        """READY once the config is validated (it was, to build the daemon) and the first
        telemetry is in and planned on; from then on every loop cycle feeds the watchdog."""
        await self.supervisor.ready.wait()
        self.notifier.ready(f"controlling {len(self.specs)} miners")
        self.supervisor.on_cycle = lambda: self.notifier.cycle(self.clock.time())
        log.info("ready", miners=len(self.specs), systemd=self.notifier.enabled)

    async def serve(self, stop: asyncio.Event, grace_s: float = STOP_GRACE_S) -> None:
        """Run until `stop` is set (SIGTERM) or the loop wants a restart, then stop
        gracefully. A part that fails stops the daemon and its error propagates (systemd
        restarts it)."""
        self._task = asyncio.create_task(self.run(), name="curtaild")
        waiter = asyncio.create_task(stop.wait(), name="curtaild.stop")
        restart = asyncio.create_task(
            self.supervisor.restart_wanted.wait(), name="curtaild.restart"
        )
        try:
            await asyncio.wait({self._task, waiter, restart}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            restart.cancel()
        if self._task.done():
            self._task.result()
            return
        await self.shutdown(grace_s)

    async def shutdown(self, grace_s: float = STOP_GRACE_S) -> None:
        """A graceful stop: tell systemd, let the commands in flight finish (within
        `grace_s`; no new ones start), flush the journal, then stop every part."""
        self.notifier.stopping()
        log.info("stopping", in_flight=self.supervisor.ledger.in_flight)
        finished = await self.supervisor.drain(grace_s)
        if self.supervisor.energy is not None:
            self.supervisor.energy.close(self.clock.now())  # the part-minute, journaled
        if not finished:
            log.warning(
                "stopping with commands still in flight", in_flight=self.supervisor.ledger.in_flight
            )
        await self.stop()
        self.notifier.close()

    async def _tune_gc(self) -> None:
        """Once start-up is over, move everything that lives as long as the daemon (config,
        drivers, specs) out of the collector's reach, so a full collection during a signal
        no longer walks the whole fleet: measured at 10,000 miners, a gen-2 pass in the
        planner delayed the first command by ~100 ms."""
        await self.supervisor.ready.wait()
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        log.debug("gc tuned", frozen=gc.get_freeze_count())

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name="curtaild")
        ready = asyncio.ensure_future(self.supervisor.ready.wait())
        waits: set[asyncio.Future[object]] = {ready, self._task}  # type: ignore[arg-type]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            ready.cancel()
            self._task.result()  # raises what stopped it
            raise DaemonError("the daemon stopped during start-up")
        if self.http is not None:
            await self.http.started.wait()
        if self.api is not None:
            await self.api.started.wait()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
