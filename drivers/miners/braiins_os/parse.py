"""Braiins OS+ REST replies read: a reading from details, stats, hashboards and mode, and
the quick ramping, pause fans and power targets of the configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from drivers.errors import ProtocolError
from drivers.types import MinerReading, Mode

# MinerStatus (deprecated but still served): restricted still hashes; not-started,
# paused and suspended do not.
MINING_STATUSES = frozenset({2, 5})
IDLE_STATUSES = frozenset({1, 3, 4})
RUNTIME_LIMITED = 1  # FanPauseRuntime
RUNTIME_INDEFINITE = 2
# Paused: hashboards off, control board and PSU standby, fans at their pause speed.
SLEEP_POWER_W = 30


@dataclass(frozen=True, slots=True)
class QuickRamping:
    """How fast the miner powers up on resume and down on pause (firmware >= 25.07)."""

    up_s: int
    down_s: int


@dataclass(frozen=True, slots=True)
class PauseFans:
    """Fans while paused. No ratio: firmware auto, from the last mining speed down to 0 %."""

    speed_ratio: float | None = None
    indefinite: bool = True  # a fixed ratio until resumed, else for the firmware's limit

    def normalised(self) -> PauseFans:
        return PauseFans() if self.speed_ratio is None else self

    def __str__(self) -> str:
        if self.speed_ratio is None:
            return "pause fans auto (down to 0 %)"
        until = "until resumed" if self.indefinite else "for the firmware's limited time"
        return f"pause fans at {self.speed_ratio:.0%} {until}"


def target_profile(watts: int) -> str:
    """BOS+ has no named profiles: a reading's profile is its tuner's power target."""
    return f"{watts}W"


def parse_reading(
    replies: dict[str, Any], device: str, last: MinerReading | None = None
) -> MinerReading:
    """A reading from whichever replies were read; what is missing comes from `last`."""
    try:
        status = replies["details"]["status"]
        if status in MINING_STATUSES:
            mode = Mode.MINING
        elif status in IDLE_STATUSES:
            mode = Mode.SLEEPING
        else:
            raise ProtocolError(device, "read", f"unknown miner status {status!r}")
        stats = replies["stats"]
        watt = _path(stats, "power_stats", "approximated_consumption", "watt")
        if watt is None:
            if mode is Mode.MINING:
                raise ProtocolError(device, "read", "mining but no power estimate")
            power_w = SLEEP_POWER_W  # paused firmware may stop estimating
        else:
            power_w = round(_number(watt))
        ghs = _path(stats, "miner_stats", "real_hashrate", "last_5s", "gigahash_per_second")
        hashrate = 0.0 if ghs is None else round(_number(ghs) / 1000, 3)
        if "hashboards" in replies:
            boards = sorted(replies["hashboards"]["hashboards"], key=_board_order)
            temps = tuple(_board_temp(b) for b in boards if b.get("enabled", True))
            if any(math.isnan(t) for t in temps):
                temps = ()  # one board unknown: all count as cold (a NaN compares as warm)
        else:
            temps = last.board_temps_c if last is not None else ()
        if "mode" in replies:
            target = _path(replies["mode"], "tunermode", "target", "powertarget", "power_target")
            profile = None if target is None else target_profile(int(target["watt"]))
        else:
            profile = last.profile if last is not None else None
        return MinerReading(
            mode=mode, power_w=power_w, hashrate_ths=hashrate, board_temps_c=temps, profile=profile
        )
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError) as err:
        raise ProtocolError(device, "read", f"unexpected reply layout: {err!r}") from None


def _path(value: Any, *keys: str) -> Any:  # noqa: ANN401 - JSON
    """value[k1][k2]..., None where a nullable level is null or absent."""
    for key in keys:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise TypeError(f"{key!r} is under a {type(value).__name__}, not an object")
        value = value.get(key)
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"not a finite number: {value!r}")
    return result


def _board_order(board: dict[str, Any]) -> tuple[int, str]:
    board_id = str(board["id"])
    return (int(board_id), "") if board_id.isdigit() else (1 << 30, board_id)


def _board_temp(board: dict[str, Any]) -> float:
    """The board sensor, else its hottest chip; NaN if the board reports neither."""
    temp = _path(board, "board_temp", "degree_c")
    if temp is None:
        temp = _path(board, "highest_chip_temp", "temperature", "degree_c")
    return float("nan") if temp is None else _number(temp)


def target_limits(reply: object, device: str) -> tuple[int | None, int | None]:
    """(minimum, default) power target from GetConstraintsResponse; None where not given."""
    if reply is None:
        return None, None
    target = ("tuner_constraints", "power_target")
    return (
        power_watt(reply, *target, "min", device=device, op="constraints"),
        power_watt(reply, *target, "default", device=device, op="constraints"),
    )


def power_watt(value: object, *keys: str, device: str, op: str = "configuration") -> int | None:
    """The watts of the Power object at value[k1][k2]... ({"watt": 1220}); None if null."""
    try:
        watt = _path(value, *keys, "watt")
        if watt is None:
            return None
        watts = round(_number(watt))
    except (TypeError, ValueError, OverflowError) as err:
        raise ProtocolError(device, op, f"unexpected power: {err!r}") from None
    if watts <= 0:
        raise ProtocolError(device, op, f"power target of {watts} W")
    return watts


def quick_ramping(config: dict[str, Any], device: str) -> QuickRamping:
    try:
        board = config.get("hashboard_config") or {}  # none: firmware without the setting
        return QuickRamping(
            int(board.get("quick_ramping_time_up_s") or 0),
            int(board.get("quick_ramping_time_down_s") or 0),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ProtocolError(device, "configuration", f"unexpected layout: {err!r}") from None


def cooling_mode(config: dict[str, Any], device: str) -> tuple[str, dict[str, Any]]:
    try:
        mode = config["temperature"]["mode"]
        (kind, fields), *rest = mode.items()
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ProtocolError(device, "configuration", f"no cooling mode: {err!r}") from None
    if rest or not isinstance(fields, dict):
        raise ProtocolError(device, "configuration", f"cooling mode is not one of: {mode!r}")
    return str(kind), fields


def pause_json(fans: PauseFans) -> dict[str, Any]:
    if fans.speed_ratio is None:
        return {"mode": {"auto": {}}}
    runtime = RUNTIME_INDEFINITE if fans.indefinite else RUNTIME_LIMITED
    return {
        "mode": {
            "manual": {
                "pause_cooldown_fan_speed_ratio": fans.speed_ratio,
                "fan_pause_runtime": runtime,
            }
        }
    }


def pause_fans(pause_mode: object, device: str) -> PauseFans | None:
    """The configured pause fans; None when the firmware reports no pause mode."""
    try:
        mode = _path(pause_mode, "mode")
        if mode is None:
            return None
        if "auto" in mode:
            return PauseFans()
        manual = mode["manual"]
        return PauseFans(
            _number(manual["pause_cooldown_fan_speed_ratio"]),
            manual.get("fan_pause_runtime") != RUNTIME_LIMITED,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ProtocolError(device, "configuration", f"unexpected pause mode: {err!r}") from None
