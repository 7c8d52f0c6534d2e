"""The Whatsminer driver that probes the firmware and picks the API it speaks, and the
registry's entries for it and for each API on its own."""

from __future__ import annotations

import asyncio

from drivers.errors import DriverError, RejectedError, UnreachableError
from drivers.lacking import Lacking
from drivers.miners.whatsminer.dialect import TRAITS
from drivers.miners.whatsminer.v2 import V2_PORT, WhatsminerV2Miner
from drivers.miners.whatsminer.v3 import V3_PORT, WhatsminerV3Miner
from drivers.types import (
    Capability,
    MinerDriverEntry,
    MinerEndpoint,
    MinerReading,
    PoolConfig,
)

V3_FIRST_FIRMWARE = 20241101  # firmware dated from 2024-11-01 speaks API v3 (pyasic, asic-rs)


def firmware_date(firmware: str | None) -> int | None:
    """20250915 from "20250915.16.Rel2"; None if the version does not start with a date."""
    text = (firmware or "").strip().strip("'")
    return int(text[:8]) if len(text) >= 8 and text[:8].isdigit() else None  # noqa: PLR2004 - YYYYMMDD


class WhatsminerMiner:
    """A Whatsminer whose API is chosen on first use, from the firmware date get_version
    reports on 4028, and kept (firmware upgrades need a daemon restart)."""

    def __init__(self, endpoint: MinerEndpoint) -> None:
        self._ep = endpoint
        self._choosing = asyncio.Lock()
        self._chosen: WhatsminerV2Miner | WhatsminerV3Miner | None = None

    @property
    def miner_id(self) -> str:
        return self._ep.miner_id

    @property
    def capabilities(self) -> frozenset[Capability]:
        if self._chosen is not None:
            return self._chosen.capabilities  # less where the firmware lacks a part
        return frozenset({Capability.SLEEP, Capability.POWER_TARGET})  # the same on both APIs

    @property
    def lacking(self) -> Lacking | None:
        return None if self._chosen is None else self._chosen.lacking

    @property
    def api(self) -> str | None:
        return None if self._chosen is None else self._chosen.api

    @property
    def firmware(self) -> str | None:
        return None if self._chosen is None else self._chosen.firmware

    @property
    def model(self) -> str | None:
        return None if self._chosen is None else self._chosen.model

    async def probe(self) -> None:
        await (await self._impl()).probe()

    async def read(self) -> MinerReading:
        return await (await self._impl()).read()

    async def sleep(self) -> MinerReading:
        return await (await self._impl()).sleep()

    async def wake(
        self,
        *,
        gentle: bool = False,
        step_up: bool = False,
    ) -> MinerReading:
        return await (await self._impl()).wake(gentle=gentle, step_up=step_up)

    async def set_profile(self, profile: str) -> MinerReading:
        return await (await self._impl()).set_profile(profile)

    async def set_power_target(self, watts: int) -> MinerReading:
        return await (await self._impl()).set_power_target(watts)

    async def set_power_limit(self, watts: int) -> MinerReading:
        """Restarts the miner to apply the limit; see WhatsminerV2Miner.set_power_limit."""
        return await (await self._impl()).set_power_limit(watts)

    async def set_fans_when_asleep(self, running: bool) -> MinerReading:
        return await (await self._impl()).set_fans_when_asleep(running)

    async def pools(self) -> tuple[PoolConfig, ...]:
        return await (await self._impl()).pools()

    async def reclaim(self) -> None:
        """Nothing a dead process could have left held: writes take no session."""

    async def close(self) -> None:
        if self._chosen is not None:
            await self._chosen.close()

    async def _impl(self) -> WhatsminerV2Miner | WhatsminerV3Miner:
        if self._chosen is None:
            async with self._choosing:
                if self._chosen is None:
                    self._chosen = await self._choose()
        return self._chosen

    async def _choose(self) -> WhatsminerV2Miner | WhatsminerV3Miner:
        v2 = WhatsminerV2Miner(self._ep)
        try:
            firmware = await v2.firmware_version()
        except RejectedError:
            return v2  # firmware older than get_version cannot speak API v3
        except UnreachableError as err:
            v3 = WhatsminerV3Miner(self._ep)
            try:
                await v3.probe()  # 4028 closed: a miner that speaks only API v3?
            except DriverError:
                raise err from None
            return v3
        date = firmware_date(firmware)
        if date is not None and date >= V3_FIRST_FIRMWARE:
            return WhatsminerV3Miner(self._ep)
        return v2


_SUMMARY = "Whatsminer (MicroBT btminer): power_off/power_on, set_power_pct for power targets"
_RESTART_NOTE = "set_power_limit restarts the miner (never used for curtailment)"

ENTRIES = (
    MinerDriverEntry(
        name="whatsminer",
        factory=WhatsminerMiner,
        traits=TRAITS,
        default_port=V2_PORT,
        summary=f"{_SUMMARY}; API v2 (4028) or v3 (4433) chosen from the firmware date; "
        f"{_RESTART_NOTE}",
        default_web_port=V3_PORT,
    ),
    MinerDriverEntry(
        name="whatsminer-v2",
        factory=WhatsminerV2Miner,
        traits=TRAITS,
        default_port=V2_PORT,
        summary=f"{_SUMMARY}; API v2 on 4028 (token + AES-256-ECB); {_RESTART_NOTE}",
        default_web_port=V3_PORT,
    ),
    MinerDriverEntry(
        name="whatsminer-v3",
        factory=WhatsminerV3Miner,
        traits=TRAITS,
        default_port=V2_PORT,
        summary=f"{_SUMMARY}; API v3 on 4433 (firmware from 2024-11); {_RESTART_NOTE}",
        default_web_port=V3_PORT,
    ),
)
