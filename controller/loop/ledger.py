"""The books every command and outlet switch is kept in: what is on the wire, what came of
it (journaled in batches: the decision before it was write-ahead), and what a failure
does to the miner it was for. Shared by the command dispatch and the outlets.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from controller.clock import Clock
from controller.core.model import Action, MinerSpec
from controller.loop.telemetry import Activity, Readings
from controller.record.journal import CommandRecord
from drivers.errors import DriverError, RejectedError, VerificationError
from drivers.types import Mode

log = structlog.get_logger("curtaild.loop")

# A power target that failed for a passing reason (a timeout) is skipped this long; one the
# firmware refuses, for good.
NO_LOWER_FOR = timedelta(hours=1)


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

    def timeout_for(self, miner_id: str) -> float:
        return self.command_timeouts.get(miner_id, self.command_timeout_s)


class Ledger:
    """Commands and switches on the wire, their results, and their failures' effects."""

    def __init__(
        self,
        *,
        specs: Mapping[str, MinerSpec],
        readings: Readings,
        clock: Clock,
        activity: Activity,
        settings: LoopSettings,
        on_idle: Callable[[], None],
    ) -> None:
        self._specs = specs
        self._readings = readings
        self._clock = clock
        self._activity = activity
        self._settings = settings
        self._on_idle = on_idle  # the wire went quiet: verify at once, not at the next tick
        self.records: list[CommandRecord] = []  # results not yet journaled
        self.in_flight = 0
        self.sent = 0
        self.failed = 0
        # Something the last plan counted on did not happen (a command failed, a miner
        # lied): the loop plans again even while a fan-out is on the wire.
        self.replan = False
        self.observer: LoopObserver | None = None

    def going(self) -> None:
        """A command or switch leaves (or is queued to)."""
        if self._settings.pause_gc_in_fanout and self.in_flight == 0:
            gc.disable()
        self.in_flight += 1

    def finish(  # noqa: PLR0917 - one record's fields
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
        self.records.append(
            CommandRecord(seq, action.miner_id, action.kind.value, started, ended, outcome, detail)
        )
        if self.observer is not None:
            family = self._specs[action.miner_id].driver
            took = (ended - started).total_seconds()
            self.observer.command(action.kind.value, family, took, outcome)
        self.sent += 1
        self.settled()
        self._activity.end()

    def settled(self) -> None:
        """One fewer on the wire (finished, or withdrawn from a queue)."""
        self.in_flight -= 1
        if self.in_flight == 0:
            if self._settings.pause_gc_in_fanout:
                gc.enable()
                gc.collect(0)  # what the fan-out left behind, young objects only
            self._on_idle()

    def target_failed(self, miner_id: str, err: DriverError, finished: datetime) -> None:
        """A power target that could not be set says nothing against sleeping the miner:
        the ladder skips that step for it, rather than going to the outlet."""
        self.failed += 1
        self.replan = True
        log.warning("power target failed; sleep instead", miner=miner_id, error=str(err))
        # Refused or unsupported: for good. A timeout or an unreachable unit: a while.
        lasting = isinstance(err, RejectedError) or not err.retryable
        self._readings.skip_lowering(miner_id, None if lasting else finished + NO_LOWER_FOR)
        self._readings.set_pending(miner_id, None)

    def command_failed(
        self, miner_id: str, err: DriverError, finished: datetime, aimed: Mode
    ) -> None:
        """A command failed: the miner is unknown (unless its read-back showed a lie) and
        backs off before the next try; the plan counted it as done, so plan again."""
        self.failed += 1
        self.replan = True
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

    def take(self) -> list[CommandRecord]:
        """The results to journal now; give them back with `keep` if the write fails."""
        records, self.records = self.records, []
        return records

    def keep(self, records: list[CommandRecord]) -> None:
        self.records = [*records, *self.records]
