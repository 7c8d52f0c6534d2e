"""Unit-test fixtures: a hand-moved clock and small simulated farms on private addresses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sim.farm import SimFarm, SimMinerSpec
from tests.conftest import subnet


class Time:
    """A hand-moved clock for the simulator's physics and session expiry."""

    def __init__(self) -> None:
        self.now = 1_795_000_000.0

    def __call__(self) -> float:
        return self.now


MakeFarm = Callable[..., Awaitable[SimFarm]]


@pytest.fixture
def clock() -> Time:
    return Time()


@pytest.fixture
async def make_farm(clock: Time) -> AsyncIterator[MakeFarm]:
    """make_farm(count, rated, efficiency, driver=..., port=..., web_port=..., password=...,
    **SimFarm options): miners m0, m1... on a loopback /16 no other test uses."""
    farms: list[SimFarm] = []

    async def make(
        count: int,
        rated_power_w: int,
        efficiency_j_th: float,
        *,
        driver: str = "luxos",
        port: int = 4028,
        web_port: int | None = None,
        password: str | None = None,
        **options: Any,
    ) -> SimFarm:
        net = subnet()
        specs = [
            SimMinerSpec(
                f"m{i}",
                driver,
                f"{net}.0.{i + 1}",
                port,
                "c1",
                rated_power_w,
                efficiency_j_th,
                web_port=web_port,
                password=password,
            )
            for i in range(count)
        ]
        farm = SimFarm(specs, time_fn=clock, **options)
        await farm.start()
        farms.append(farm)
        return farm

    yield make
    for farm in farms:
        await farm.stop()
