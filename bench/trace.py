"""Timestamps on the path from a signal to the first command, inside the curtaild contender.

`python -m bench.fanout --trace` sets BENCH_TRACE, and bench/ours.py installs these
wrappers before the daemon starts. Each wraps a call made once per cycle (never once per
miner), so the fan-out it measures is the same. Times are CLOCK_MONOTONIC seconds, the
clock the simulators stamp the first command with.
"""

from __future__ import annotations

import asyncio
import cProfile
import functools
import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from controller.core import operator, planner
from controller.core.model import Action
from controller.loop import dispatch, supervisor, telemetry
from controller.record import journal
from drivers.transport import cgminer_tcp

Marks = list[tuple[str, float, float]]  # (what, monotonic, this process's CPU time)


class Trace:
    """What happened when, from the moment `start` is called."""

    def __init__(self) -> None:
        self.marks: Marks = []
        self.sweeps: list[list[float]] = []  # [start, end] of each telemetry sweep
        self.t0: float | None = None
        self.cpu0 = 0.0
        self.profiled = False
        self.dispatched = self.written = False

    def start(self) -> None:
        self.t0, self.cpu0 = time.monotonic(), time.process_time()
        self.marks.clear()

    def mark(self, what: str) -> None:
        if self.t0 is not None:
            self.marks.append((what, time.monotonic(), time.process_time()))

    def summary(self) -> dict[str, Any]:
        """Milliseconds from the signal to the first of each mark, in wall time and in this
        process's CPU time (on a shared machine the two differ), and whether a telemetry
        sweep was running when the signal arrived."""
        assert self.t0 is not None
        wall: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for what, at, used in self.marks:
            wall.setdefault(what, round((at - self.t0) * 1000, 2))
            cpu.setdefault(what, round((used - self.cpu0) * 1000, 2))
        mid_sweep = any(s[0] <= self.t0 and (len(s) < 2 or s[1] >= self.t0) for s in self.sweeps)
        return {"ms": wall, "cpu_ms": cpu, "mid_sweep": mid_sweep}


def install() -> Trace:
    trace = Trace()
    profile_to = os.environ.get("BENCH_PROFILE_CYCLE")

    def around(owner: object, name: str, before: str, after: str | None = None) -> None:
        inner: Callable[..., object] = getattr(owner, name)

        @functools.wraps(inner)
        def wrapper(*args: object, **kwargs: object) -> object:
            trace.mark(before)
            result = inner(*args, **kwargs)
            if after is not None:
                trace.mark(after)
            return result

        setattr(owner, name, wrapper)

    around(planner, "plan", "plan", "planned")
    around(operator, "operator_steps", "operator", "operator done")
    around(journal.Journal, "record_decision", "journal decision", "decision journaled")

    cycle = supervisor.Supervisor.cycle

    async def traced_cycle(self: supervisor.Supervisor, cause: str) -> None:
        trace.mark(f"cycle ({cause})")
        if cause != "signal" or trace.t0 is None or not profile_to or trace.profiled:
            await cycle(self, cause)
            return
        # BENCH_PROFILE_CYCLE: cProfile the signal's cycle alone (its awaits included)
        trace.profiled = True
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            await cycle(self, cause)
        finally:
            profiler.disable()
            profiler.dump_stats(profile_to)

    supervisor.Supervisor.cycle = traced_cycle  # type: ignore[method-assign]

    send = dispatch.Dispatch.send

    async def traced_send(
        self: dispatch.Dispatch,
        actions: tuple[Action, ...],
        seq: int | None,
        now: datetime,
        *,
        resumed_from: datetime | None = None,
    ) -> None:
        trace.mark("dispatch")
        trace.dispatched = True
        await send(self, actions, seq, now, resumed_from=resumed_from)

    dispatch.Dispatch.send = traced_send  # type: ignore[method-assign]

    _watch_wire(trace)
    _watch_sweeps(trace)
    return trace


def _watch_wire(trace: Trace) -> None:
    # The first request written after the dispatch began (cgminer-style TCP: LuxOS and
    # Whatsminer; near enough, as reads in flight at the signal have connected by then).
    made = cgminer_tcp._Exchange.connection_made  # noqa: SLF001

    def traced_made(self: cgminer_tcp._Exchange, transport: asyncio.BaseTransport) -> None:
        made(self, transport)
        if trace.dispatched and not trace.written:
            trace.written = True
            trace.mark("written")

    cgminer_tcp._Exchange.connection_made = traced_made  # type: ignore[method-assign]  # noqa: SLF001


def _watch_sweeps(trace: Trace) -> None:
    sweep = telemetry.Poller.sweep

    async def traced_sweep(self: telemetry.Poller) -> None:
        span = [time.monotonic()]
        trace.sweeps.append(span)
        try:
            await sweep(self)
        finally:
            span.append(time.monotonic())

    telemetry.Poller.sweep = traced_sweep  # type: ignore[method-assign]
