"""Coarse deadlines behave like asyncio.timeout, just cheaper and up to a tick late."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from drivers import deadline
from drivers.deadline import within


async def test_deadline_fires_as_timeout_error() -> None:
    with pytest.raises(TimeoutError), within(0.05) as d:
        await asyncio.sleep(5)
    assert d.expired


async def test_deadline_that_does_not_fire_leaves_no_stray_cancellation() -> None:
    with within(0.05) as d:
        await asyncio.sleep(0)
    assert not d.expired
    await asyncio.sleep(0.2)  # past the deadline: nothing may cancel us now


async def test_deadline_lets_other_cancellations_through() -> None:
    async def victim() -> None:
        with within(10):
            await asyncio.sleep(10)

    task = asyncio.create_task(victim())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_deadline_nested_inner_fires_first() -> None:
    outcome = []
    with within(5):
        try:
            with within(0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            outcome.append("inner")
        await asyncio.sleep(0)
    assert outcome == ["inner"]


async def test_deadline_many_at_once_all_fire_none_early_and_the_sweeper_stops() -> None:
    # Which fires first is wall-clock timing (a busy machine may fire all three durations
    # in one late sweep), so the test asserts what a deadline guarantees: every one fires,
    # none early, and the sweeper stops when nothing is armed.
    loop = asyncio.get_running_loop()
    early: list[float] = []
    fired: list[float] = []

    async def wait(seconds: float) -> None:
        armed = loop.time()
        try:
            with within(seconds):
                await asyncio.sleep(5)
        except TimeoutError:
            fired.append(seconds)
            if loop.time() < armed + seconds:
                early.append(seconds)

    durations = [0.15, 0.05, 0.1] * 50
    await asyncio.gather(*(wait(s) for s in durations))
    assert sorted(fired) == sorted(durations)
    assert early == []
    await asyncio.sleep(deadline.TICK_S * 3)
    sweeper = deadline._sweepers[asyncio.get_running_loop()]
    assert sweeper._handle is None  # nothing live, no timer left running


async def test_deadline_spent_even_when_the_block_swallows_the_cancellation() -> None:
    task = asyncio.current_task()
    assert task is not None
    # A block that swallows its cancellation (nothing in curtaild does; the deadline copes).
    with within(0.05) as d, contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert d.expired
    assert task.cancelling() == 0
