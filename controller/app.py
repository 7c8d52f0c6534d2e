"""Wiring: config -> drivers, adapters and the supervisor, all under one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
from types import TracebackType
from typing import Self

import structlog

from controller.adapters.grid_http import GridHttp
from controller.adapters.mqtt_signals import MqttSignals
from controller.clock import Clock
from controller.config import Loaded
from controller.core.model import MinerSpec
from controller.inbox import Inbox
from controller.journal import Journal
from controller.publish import Fanout, Recorder
from controller.supervisor import LoopSettings, Supervisor
from controller.telemetry import Activity, Poller, Readings
from drivers.registry import MinerEndpoint, MinerRegistry, default_registry
from drivers.transport import admission, http
from drivers.types import MinerDriver

log = structlog.get_logger("curtaild.app")

COMMAND_TIMEOUT_CALLS = 5  # a LuxOS write is logon, command, logoff and a read-back or two
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
    ) -> None:
        """`tune_gc` is for the process that hosts the daemon (the CLI, the benchmark):
        it changes the interpreter's collector for the whole process."""
        self.tune_gc = tune_gc
        config = loaded.config
        self.loaded = loaded
        self.clock = clock
        registry = registry or default_registry()
        self.journal = Journal(config.journal.path)
        self.specs: dict[str, MinerSpec] = {}
        self.drivers: dict[str, MinerDriver] = {}
        for m in loaded.miners:
            entry = registry.get(m.driver)
            self.specs[m.id] = MinerSpec(
                m.id, entry.name, m.container, m.rated_power_w, m.efficiency_j_th, entry.traits
            )
            self.drivers[m.id] = entry.factory(
                MinerEndpoint(m.id, m.host, m.port, m.timeout_s, m.username, m.password, m.web_port)
            )
        # Process-wide: every transport shares the gate (one daemon per process).
        admission.set_limit(_fd_bounded(config.control.io_concurrency, "I/O concurrency"))
        self.activity = Activity()
        self.readings = Readings(self.specs)
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
        self.http = (
            GridHttp(self.inbox, signals.http.host, signals.http.port)
            if signals.http is not None
            else None
        )
        control = config.control
        slowest = max((m.timeout_s for m in loaded.miners), default=3.0)
        self.supervisor = Supervisor(
            site_id=config.site.id,
            specs=self.specs,
            drivers=self.drivers,
            readings=self.readings,
            poller=self.poller,
            inbox=self.inbox,
            journal=self.journal,
            clock=clock,
            policy=loaded.grid_policy(),
            rules=loaded.plan_rules(),
            settings=LoopSettings(
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
            ),
            publisher=self.publisher,
            activity=self.activity,
            obligations=obligations,
            known_keys=self.journal.obligation_keys(),
        )
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Run until cancelled; any part failing stops the whole daemon."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.poller.run(), name="curtaild.telemetry")
                tg.create_task(self.supervisor.run(), name="curtaild.supervisor")
                if self.tune_gc:
                    tg.create_task(self._tune_gc(), name="curtaild.gc")
                if self.mqtt is not None:
                    tg.create_task(self.mqtt.run(), name="curtaild.mqtt_signals")
                if self.http is not None:
                    tg.create_task(self.http.run(), name="curtaild.grid_http")
        finally:
            await asyncio.gather(
                *(d.close() for d in self.drivers.values()), return_exceptions=True
            )
            await http.close_sessions()
            self.journal.close()

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
