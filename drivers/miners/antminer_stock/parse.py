"""Readings from stock Antminer replies: RPC `stats` and `summary`, stats.cgi's running
work mode, and the power estimate firmware that reports no watts needs."""

from __future__ import annotations

import math
import re
from typing import Any

from drivers.errors import ProtocolError
from drivers.transport import cgminer_tcp
from drivers.types import MinerReading, Mode

MODE_NORMAL = 0
MODE_SLEEP = 1
MODE_HIGH = 2  # HEM on S19k Pro; "Mode 2" on an S21 XP Hyd
MODE_LOW = 3  # low-power mode on some S19 Pro / S19j Pro builds
MODE_NAMES = {MODE_NORMAL: "normal", MODE_SLEEP: "sleep", MODE_HIGH: "high", MODE_LOW: "low"}

# Stock sleep keeps the control board up and the fans at ~960 rpm (hass-miner #424); the
# residual is not reported anywhere, so this is a deliberately high estimate.
SLEEP_POWER_W = 60

# Stock firmware reports no watts (pyasic: wattage None; Tether: "S19XP ❌"). Mining power
# is estimated as the unit's ideal hashrate times its model's nameplate efficiency, most
# specific name first. An unknown model counts at S19-class efficiency: over-estimating
# is the safe side, since the planner trusts readings.
NOMINAL_J_TH: tuple[tuple[str, float], ...] = (
    ("S23 HYD", 9.5),
    ("S21 XP HYD", 12.0),
    ("S21 XP", 13.5),
    ("S21+ HYD", 15.0),
    ("S21 PRO", 15.0),
    ("S21 HYD", 16.0),
    ("S21+", 16.5),
    ("S21", 17.5),
    ("S19 XP HYD", 20.8),
    ("S19 XP", 21.5),
    ("S19K PRO", 23.0),
    ("S19 PRO HYD", 27.5),
    ("S19J PRO", 29.5),
    ("S19 PRO", 29.5),
    ("S19", 34.5),
    ("S17", 45.0),
    ("S9", 98.0),
)
UNKNOWN_MODEL_J_TH = 34.5
RATE_UNITS_TH = {"MH": 1e-6, "GH": 1e-3, "TH": 1.0, "PH": 1e3}

PARSE_ERRORS = (KeyError, TypeError, ValueError, IndexError, OverflowError)


def parse_reading(
    stats: cgminer_tcp.Reply | None,
    summary: cgminer_tcp.Reply | None,
    *,
    device: str,
    op: str = "read",
    model: str | None = None,
    web_mode: int | None = None,
) -> tuple[MinerReading, int | None]:
    """A reading from RPC `stats` and `summary` (either may be None: the build lacks it),
    with the RPC work mode; see NOMINAL_J_TH."""
    try:
        items = cgminer_tcp.section(stats, "STATS", device=device, op=op) if stats else []
        header = items[0] if items else {}
        board = items[1] if len(items) > 1 else {}
        if summary is not None:
            totals = cgminer_tcp.section(summary, "SUMMARY", device=device, op=op)[0]
            ghs = _number(totals["GHS 5s"])
        else:
            ghs = _number(board["GHS 5s"])
        hashrate_ths = round(ghs / 1000, 3)
        rpc_mode = mode_of(board.get("Mode"))
        mode_code = web_mode if web_mode is not None else rpc_mode
        # Builds without a mode field: a unit that does not hash is taken as asleep.
        sleeping = mode_code == MODE_SLEEP if mode_code is not None else hashrate_ths <= 0
        power_w = _power_w(board, str(header.get("Type") or model or ""), hashrate_ths, sleeping)
        reading = MinerReading(
            mode=Mode.SLEEPING if sleeping else Mode.MINING,
            power_w=power_w,
            hashrate_ths=hashrate_ths,
            board_temps_c=_board_temps(board),
            profile=MODE_NAMES.get(mode_code) if mode_code is not None else None,
        )
    except PARSE_ERRORS as err:
        raise ProtocolError(device, op, f"unexpected reply layout: {err!r}") from None
    return reading, rpc_mode


def runtime_mode_from_stats_cgi(body: object, *, device: str, op: str) -> int | None:
    """stats.cgi's STATS[0]["miner-mode"]; None when the build or the moment has none."""
    try:
        stats = body["STATS"]  # type: ignore[index]
        if not stats:
            return None  # bmminer is restarting (or the build empties it while asleep)
        return mode_of(stats[0].get("miner-mode"))
    except (*PARSE_ERRORS, AttributeError) as err:
        raise ProtocolError(device, op, f"unexpected stats.cgi layout: {err!r}") from None


def _power_w(board: dict[str, Any], model: str, hashrate_ths: float, sleeping: bool) -> int:
    """The firmware's own figure where a build has one (chain_power), else an estimate."""
    reported = _watts(board.get("chain_power"))
    if reported is not None and reported > 0:
        return max(round(reported), SLEEP_POWER_W)
    if sleeping:
        return SLEEP_POWER_W
    j_th = next((j for name, j in NOMINAL_J_TH if name in model.upper()), UNKNOWN_MODEL_J_TH)
    ideal_ths = _number(board.get("total_rateideal", 0)) * RATE_UNITS_TH.get(
        str(board.get("rate_unit", "GH")).upper().removesuffix("/S"), 1e-3
    )
    # Mining counts at nameplate even while the boards come up: a booting unit soon draws it.
    basis = ideal_ths if ideal_ths > 0 else hashrate_ths
    if basis <= 0:
        raise ValueError("mining, but neither an ideal nor a real hashrate to estimate from")
    return round(basis * j_th)


def _board_temps(board: dict[str, Any]) -> tuple[float, ...]:
    """Per hashboard, its hottest PCB sensor (`temp_pcbN` "a-b-c-d"), else `tempN`."""
    pcb = sorted(
        (int(k.removeprefix("temp_pcb")), v)
        for k, v in board.items()
        if k.startswith("temp_pcb") and k.removeprefix("temp_pcb").isdigit()
    )
    if pcb:
        temps = (_hottest(v) for _, v in pcb)
    else:
        plain = sorted(
            (int(k.removeprefix("temp")), v)
            for k, v in board.items()
            if re.fullmatch(r"temp\d+", k)
        )
        temps = (float(v) for _, v in plain)
    # An absent chain reads all zeros ("0-0-0-0"); it is no board at all.
    return tuple(t for t in temps if t != 0 and not math.isnan(t))


_SENSOR = re.compile(r"(?:^|-)(-?\d+(?:\.\d+)?)")


def _hottest(value: object) -> float:
    """Sensors as "38-48-47-52" (or a list); below freezing "-31--30" (inferred)."""
    values = [float(v) for v in value] if isinstance(value, list) else _sensors(str(value))
    readings = [v for v in values if v != 0]
    return max(readings) if readings else 0.0


def _sensors(text: str) -> list[float]:
    return [float(v) for v in _SENSOR.findall(text)]


def _number(value: object) -> float:
    """A JSON number, or a number in a string ("GHS 5s" is a string on some bmminer builds)."""
    if isinstance(value, bool):
        raise TypeError("a boolean where a number belongs")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ValueError(f"non-finite number {value!r}")
    return number


_LEADING_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)")


def _watts(value: object) -> float | None:
    """chain_power as builds send it: 3250, "3250 W", "456.78 (AB)"."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    match = _LEADING_NUMBER.match(str(value))
    return float(match.group(1)) if match else None


def mode_of(value: object) -> int | None:
    """A work mode as builds send it (a number, or digits in a string); None if not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def board_lacks_mode(stats: cgminer_tcp.Reply) -> bool:
    """A `stats` reply whose board section has no work mode (older builds)."""
    items = stats.get("STATS")
    board = items[1] if isinstance(items, list) and len(items) > 1 else None
    return isinstance(board, dict) and "Mode" not in board
