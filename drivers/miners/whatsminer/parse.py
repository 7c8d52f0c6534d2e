"""Whatsminer replies read into a WhatsminerState: API v2's `status`, `summary` and
`edevs`, API v3's device info, miner status and settings."""

from __future__ import annotations

import math
from typing import Any, NoReturn

from drivers.errors import ProtocolError
from drivers.lacking import Lacking
from drivers.miners.whatsminer.dialect import TRAITS, WhatsminerState
from drivers.transport import cgminer_tcp
from drivers.transport.cgminer_tcp import Reply
from drivers.types import MinerReading, Mode

NO_LIMIT = "no power target (a power percent is of the limit)"


def parse_v2(
    device: str,
    status: Reply | None,
    summary: Reply,
    edevs: Reply | None,
    lacking: Lacking | None = None,
) -> WhatsminerState:
    """A state from API v2 `status`, `summary` and `edevs` replies (None: the firmware
    lacks that command); the summary fields a mining miner's firmware lacks are learnt."""
    try:
        msg = _object(status["Msg"]) if status is not None else {}
        row = first_row(summary, "SUMMARY", device)
        boards = cgminer_tcp.section(edevs, "DEVS", device=device, op="edevs") if edevs else []
        hashrate_mhs = row["MHS 1m"] if "MHS 1m" in row else row["MHS av"]
        hashrate_ths = round(_number(hashrate_mhs) / 1e6, 3)
        mode = _v2_mode(msg, hashrate_ths)
        power = _number(row["Power"])
        if power < 0 and mode is Mode.SLEEPING:
            power = TRAITS.sleep_power_w  # -1: the PSU gave no figure; only the board runs
        if power < 0:
            _no_power(device)
        reading = MinerReading(
            mode=mode,
            power_w=round(power),
            hashrate_ths=hashrate_ths if mode is Mode.MINING else 0.0,
            board_temps_c=tuple(_number(board["Temperature"]) for board in boards),
            profile=str(row["Power Mode"]).lower() if "Power Mode" in row else None,
        )
        if lacking is not None and mode is Mode.MINING and "Power Limit" not in row:
            lacking.learn("summary:Power Limit", NO_LIMIT)
        limit = _number(row.get("Power Limit", 0))
        pct = str(msg.get("power_pct", "")).strip()
        return WhatsminerState(
            reading=reading,
            power_limit_w=round(limit) if limit > 0 else None,
            power_pct=int(pct) if pct.isdigit() else None,
            fan_rpm=round(_number(row["Fan Speed In"])) if "Fan Speed In" in row else None,
        )
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as err:
        raise ProtocolError(device, "read", f"unexpected reply layout: {err!r}") from None


def parse_v3(
    device: str,
    info: Reply,
    status: Reply,
    setting: Reply | None,
    lacking: Lacking | None = None,
) -> WhatsminerState:
    """A state from API v3 `get.device.info` (miner), `get.miner.status` (summary+edevs)
    and `get.miner.setting` replies (None: the firmware lacks it, and the percent held is
    unknown); the summary fields a mining miner's firmware lacks are learnt."""
    try:
        miner = info["msg"]["miner"]
        summary = status["msg"]["summary"]
        settings = setting["msg"] if setting is not None else {}
        mode = Mode.MINING if str(miner["working"]).lower() == "true" else Mode.SLEEPING
        temps = summary.get("board-temperature")
        if not isinstance(temps, list):
            temps = [board["chip-temp-avg"] for board in status["msg"].get("edevs", [])]
        pct = round(_number(settings.get("power-percent", 0)))
        if lacking is not None and mode is Mode.MINING and "power-limit" not in summary:
            lacking.learn("get.miner.status:power-limit", NO_LIMIT)
        limit = _number(summary.get("power-limit", 0))
        reading = MinerReading(
            mode=mode,
            power_w=round(_number(summary["power-realtime"])),
            hashrate_ths=round(_number(summary["hash-realtime"]), 3)
            if mode is Mode.MINING
            else 0.0,
            board_temps_c=tuple(_number(t) for t in temps),
            profile=str(settings["power-mode"]).lower() if "power-mode" in settings else None,
        )
        return WhatsminerState(
            reading=reading,
            power_limit_w=round(limit) if limit > 0 else None,
            # 0: no percent set, the miner runs at its full limit
            power_pct=(pct or 100) if setting is not None else None,
            fan_rpm=round(_number(summary["fan-speed-in"])) if "fan-speed-in" in summary else None,
        )
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError) as err:
        # AttributeError: a section that should be an object came as a list or a string.
        raise ProtocolError(device, "read", f"unexpected reply layout: {err!r}") from None


def _v2_mode(msg: dict[str, Any], hashrate_ths: float) -> Mode:
    # New firmware (API 2.0.4+) says "mineroff"; older says "btmineroff" (btminer stopped).
    for key in ("mineroff", "btmineroff"):
        if key in msg:
            return Mode.SLEEPING if str(msg[key]).lower() == "true" else Mode.MINING
    return Mode.MINING if hashrate_ths > 0 else Mode.SLEEPING


def _object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{value!r} is not an object")
    return value


def _no_power(device: str) -> NoReturn:
    raise ProtocolError(device, "read", "the miner reports no power figure while mining")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def first_row(reply: Reply, name: str, device: str) -> dict[str, Any]:
    items = cgminer_tcp.section(reply, name, device=device, op=name.lower())
    if not items:
        raise ProtocolError(device, name.lower(), f"{name} is empty")
    return items[0]
