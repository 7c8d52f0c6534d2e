"""What the two Whatsminer dialects (API v2 and v3) share: the traits, the state a read
yields, the power-target, read-back and pre-heat logic, and the base of both drivers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

from drivers import readback
from drivers.deadline import within
from drivers.errors import (
    DeviceTimeoutError,
    DriverError,
    RejectedError,
    UnsupportedError,
    VerificationError,
)
from drivers.lacking import Lacking
from drivers.types import (
    Capability,
    DriverTraits,
    FanPause,
    MinerEndpoint,
    MinerReading,
    Mode,
)

# A gentle wake waits for the pre-heat to complete (it takes up to a minute) before power_on:
# a full-power start with cold boards fails. Each poll is a command, so not too often.
PREHEAT_POLL_S = 2.0
PREHEAT_WAIT_S = 70.0
# Where firmware does not report the percent it holds, draw decides: at most 10 % above the
# target, or at least 2 % below the draw before the command (still ramping down to it).
POWER_TARGET_SLACK = 1.10
POWER_TARGET_FALLING = 0.98

# power_off keeps the control board up: Tether's model of a suspended M56S draws 13 W.
# Hashing stops within ~15 s (field report, M64); draw is back within about a minute of
# power_on although full hashrate takes minutes. set_poweroff_cool selects whether the
# fans keep running while the hashboards are off.
TRAITS = DriverTraits(
    sleep_power_w=15,
    ramp_down_s=15.0,
    ramp_up_s=60.0,
    fans_when_asleep=FanPause.CONFIGURABLE,
    # A gentle wake is the pre-heat, then power_on at full power: no low start.
    gentle_fraction=None,
    gentle_extra_s=PREHEAT_WAIT_S + 5.0,  # the pre-heat wait, and slack for its deadline
)


TARGET = "a power target"
NO_PERCENT = "no power target (no power percent)"
NO_PREHEAT = "wakes power on without the vendor's pre-heat"


@dataclass(frozen=True, slots=True)
class WhatsminerState:
    """One read of a Whatsminer: the reading plus the settings writes are verified against."""

    reading: MinerReading
    power_limit_w: int | None  # the configured ceiling a power percent scales
    power_pct: int | None  # the percent the miner holds, where firmware reports it
    fan_rpm: int | None  # inlet fan speed
    poweroff_cool: bool | None = None  # fans kept running while off (API v3 reports it)


def percent_for(device: str, watts: int, state: WhatsminerState) -> int:
    """The power percent that keeps draw at or below `watts`, from the miner's power limit."""
    if watts <= 0:
        raise RejectedError(device, "set_power_target", f"invalid power target {watts} W")
    if state.power_limit_w is None:
        raise UnsupportedError(
            device, "set_power_target", "the miner reports no power limit to take a percent of"
        )
    return max(1, min(100, watts * 100 // state.power_limit_w))


def holds_percent(
    pct: int, watts: int, before: WhatsminerState
) -> Callable[[WhatsminerState], bool]:
    def done(state: WhatsminerState) -> bool:
        if state.power_pct is not None:
            return state.power_pct == pct
        draw = state.reading.power_w
        return draw <= watts * POWER_TARGET_SLACK or (
            draw <= before.reading.power_w * POWER_TARGET_FALLING
        )

    return done


def asleep(state: WhatsminerState) -> bool:
    return state.reading.mode is Mode.SLEEPING


def mining(state: WhatsminerState) -> bool:
    return state.reading.mode is Mode.MINING


async def verify(
    device: str,
    read: Callable[[], Awaitable[WhatsminerState]],
    op: str,
    done: Callable[[WhatsminerState], bool],
    unanswered: DriverError | None = None,
) -> MinerReading:
    """Read back until `done`; VerificationError (or the write's own silence) if never."""
    state, shown = await readback.until(read, done)
    if shown:
        return state.reading
    if unanswered is not None:
        raise unanswered  # never acknowledged and not done: the silence is the cause
    reading = state.reading
    raise VerificationError(
        device,
        op,
        f"acknowledged {op} but reads back {reading.mode.value} at {reading.power_w} W",
        reading,
    )


def preheat_progress(msg: object) -> bool | None:
    """Whether pre_power_on's reply says the pre-heat is complete; None if it says nothing
    ({"complete": "false", "msg": "wait for adjust temp"} until it is)."""
    if not isinstance(msg, dict) or "complete" not in msg:
        return None
    return str(msg["complete"]).lower() == "true"


async def until_pre_heated(device: str, poll: Callable[[], Awaitable[bool | None]]) -> None:
    """Poll the pre-heat until it completes, for at most PREHEAT_WAIT_S.

    Still warming at the deadline: DeviceTimeoutError, without power_on (it would fail on
    cold boards; the firmware keeps warming for the next try). Firmware that reports no
    progress has warmed for the whole wait, and may start."""
    silent = False  # the last reply said nothing about progress
    try:
        with within(PREHEAT_WAIT_S):
            while not (progress := await poll()):
                silent = progress is None
                await asyncio.sleep(PREHEAT_POLL_S)
    except TimeoutError:
        if silent:
            return
        raise DeviceTimeoutError(
            device,
            "pre_power_on",
            f"pre-heat not complete within {PREHEAT_WAIT_S:g} s; not powering on cold boards",
        ) from None


class Dialect:
    """The driver of one API: its endpoint and password, one call in flight at a time, and
    what it has learnt of the firmware (what the build lacks, its versions and model)."""

    api: ClassVar[str]
    # What a power target needs: the percent command, and the limit it is a percent of.
    target_needs: ClassVar[tuple[str, ...]]

    def __init__(self, endpoint: MinerEndpoint, default_password: str) -> None:
        self._ep = endpoint
        self._password = endpoint.password or default_password
        self._lock = asyncio.Lock()
        self.lacking = Lacking(endpoint.miner_id)  # commands and fields this build lacks
        self.firmware: str | None = None
        self.model: str | None = None
        self.api_version: str | None = None

    @property
    def miner_id(self) -> str:
        return self._ep.miner_id

    @property
    def capabilities(self) -> frozenset[Capability]:
        if any(name in self.lacking for name in self.target_needs):
            return frozenset({Capability.SLEEP})
        return frozenset({Capability.SLEEP, Capability.POWER_TARGET})

    async def set_profile(self, profile: str) -> MinerReading:
        raise UnsupportedError(
            self.miner_id, "set_profile", f"no named profiles ({profile!r}); use a power target"
        )

    async def reclaim(self) -> None:
        """Nothing a dead process could have left held: writes take no session."""

    async def close(self) -> None:
        """Nothing is held between calls: one connection per call."""

    def _power_target_offered(self) -> None:
        """UnsupportedError, without a write, once the firmware has shown it has no target."""
        missing = [name for name in self.target_needs if name in self.lacking]
        if missing:
            raise self.lacking.essential(" and ".join(missing), "set_power_target", TARGET)
