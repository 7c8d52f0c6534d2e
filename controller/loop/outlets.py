"""The ladder's hardware step: switched PDU outlets, cut and restored in paced batches."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import structlog

from controller.clock import Clock
from controller.core.model import Action, ActionKind, OutletReading
from controller.loop.ledger import Ledger
from controller.loop.telemetry import Activity, Readings
from controller.record.journal import CommandRecord
from drivers.deadline import within
from drivers.errors import DeviceTimeoutError, DriverError, driver_bug
from drivers.types import Mode, PduDriver

log = structlog.get_logger("curtaild.outlets")

# In-memory histories keep a window: a daemon runs for months, the journal holds it all.
KEEP_SWITCHES = 1000


@dataclass(frozen=True, slots=True)
class OutletSettings:
    cut_batch_size: int = 8
    cut_batch_spacing_s: float = 0.5  # not under an emergency
    restore_batch_size: int = 4  # every restored miner boots at once: inrush
    restore_batch_spacing_s: float = 2.0
    switch_timeout_s: float = 3.0


class Outlets:
    """Cuts and restores go through a queue, a batch at a time. Restores are paced for
    inrush (every restored miner boots at once); cuts draw no inrush and are paced only to
    spare the feeder a step change, except under an emergency (a frequency trip, an
    emergency signal), when they go as fast as the PDUs take them."""

    def __init__(
        self,
        *,
        wiring: Mapping[str, tuple[PduDriver, int]],
        readings: Readings,
        ledger: Ledger,
        clock: Clock,
        activity: Activity,
        settings: OutletSettings,
        emergency: Callable[[], bool],
    ) -> None:
        self._wiring = dict(wiring)
        self._readings = readings
        self._ledger = ledger
        self._clock = clock
        self._activity = activity
        self._settings = settings
        self._emergency = emergency
        self._queue: deque[tuple[Action, int | None]] = deque()
        self._wake = asyncio.Event()
        self.switches: deque[tuple[datetime, str, bool]] = deque(maxlen=KEEP_SWITCHES)

    @property
    def wired(self) -> bool:
        return bool(self._wiring)

    def last_switched(self) -> datetime | None:
        """When the last outlet switched (a restore too): the meter has yet to show it."""
        return self.switches[-1][0] if self.switches else None

    def enqueue(self, action: Action, seq: int | None) -> None:
        """Busy only while on the wire, not while queued for the next batch: tests on a
        fake clock wait for idle before moving time to that batch."""
        self._queue.append((action, seq))
        self._wake.set()

    def drop_queued_restores(self) -> None:
        """A new shed cancels restores still waiting for their batch: the plan that sent
        them no longer holds, and a power cycle is worse than a late restore."""
        kept: deque[tuple[Action, int | None]] = deque()
        for action, seq in self._queue:
            if action.kind is not ActionKind.RESTORE:
                kept.append((action, seq))
                continue
            self._readings.set_pending(action.miner_id, None)
            now = self._clock.now()
            self._ledger.records.append(
                # The plain record of a switch that never went: not observed as a command.
                _withdrawn(seq, action, now)
            )
            self._ledger.settled()
        self._queue = kept

    async def run(self) -> None:
        settings = self._settings
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            kind = self._queue[0][0].kind
            restore = kind is ActionKind.RESTORE
            size = settings.restore_batch_size if restore else settings.cut_batch_size
            batch: list[tuple[Action, int | None]] = []
            while self._queue and len(batch) < size:
                if self._queue[0][0].kind is not kind:
                    break  # one kind per batch: a restore never rides with cuts
                batch.append(self._queue.popleft())
            for _ in batch:
                self._activity.begin()
            await asyncio.gather(*(self._switch(action, seq) for action, seq in batch))
            spacing = settings.restore_batch_spacing_s if restore else settings.cut_batch_spacing_s
            if self._queue and spacing > 0 and (restore or not self._emergency()):
                await self._clock.sleep(spacing)

    async def _switch(self, action: Action, seq: int | None) -> None:
        miner_id = action.miner_id
        on = action.kind is ActionKind.RESTORE
        pdu, outlet = self._wiring[miner_id]
        started = self._clock.now()
        outcome, detail, finished = "cancelled", None, None
        try:
            try:
                with within(self._settings.switch_timeout_s):
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
            aimed = Mode.MINING if on else Mode.SLEEPING
            self._ledger.command_failed(miner_id, err, finished, aimed)
        else:
            finished = self._clock.now()
            outcome = "ok"
            self.switches.append((finished, miner_id, on))
            self._readings.switched(
                miner_id, OutletReading(reading.on, reading.power_w if on else 0.0, finished)
            )
            log.info(
                "outlet switched",
                miner=miner_id,
                pdu=pdu.name,
                outlet=outlet,
                on=on,
                reason=action.reason,
            )
        finally:
            self._ledger.finish(seq, action, started, finished, outcome, detail)


def _withdrawn(seq: int | None, action: Action, now: datetime) -> CommandRecord:
    return CommandRecord(
        seq, action.miner_id, action.kind.value, now, now, "withdrawn", "a new shed came first"
    )
