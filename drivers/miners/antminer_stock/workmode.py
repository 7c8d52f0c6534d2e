"""The work mode, saved and running: the set_miner_conf body and its acknowledgement,
and whether the saved config and the running process are in the mode asked for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.errors import ProtocolError, RejectedError
from drivers.miners.antminer_stock.parse import MODE_SLEEP, mode_of
from drivers.types import MinerReading


@dataclass(frozen=True, slots=True)
class Observation:
    """One look at the miner: the reading and each runtime mode source (None: not given)."""

    reading: MinerReading
    rpc_mode: int | None  # RPC stats STATS[1].Mode
    web_mode: int | None  # stats.cgi STATS[0]["miner-mode"]


def write_body(conf: object, mode: int, *, device: str, op: str) -> dict[str, Any]:
    """The set_miner_conf body: the whole config as read, with the work mode changed.

    Refuses (ProtocolError, nothing written) unless the read is a stock config with its
    pools: a save carries the pools, and an empty list wipes them (pyasic's bug). Echoing
    every key keeps anything the browser form would send from falling back to defaults.
    """
    if not isinstance(conf, dict):
        raise ProtocolError(device, op, "get_miner_conf is not a JSON object; not writing")
    pools = conf.get("pools")
    if (
        not isinstance(pools, list)
        or not pools
        or not all(
            isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("url", "user", "pass"))
            for p in pools
        )
    ):
        raise ProtocolError(device, op, "get_miner_conf has no usable pools list; not writing")
    if not any(p["url"] for p in pools):
        raise ProtocolError(device, op, "get_miner_conf lists no pool; not writing")
    if "bitmain-work-mode" not in conf and "miner-mode" not in conf:
        raise ProtocolError(device, op, "get_miner_conf has no work mode; not a stock config")
    body = dict(conf)  # pools and fan settings (bitmain-fan-ctrl/-pwm) exactly as read
    level = conf.get("bitmain-freq-level")
    if level is not None:
        # The write key differs from the read key; "" (never set) is the browser's 100 %.
        body["freq-level"] = str(level) if level != "" else "100"
    # Builds differ in the key they honour: the S19j Pro Dec 2022 build acts only on
    # "miner-mode" (and M000-acks "bitmain-work-mode" without acting); the S21+ Feb 2025 build
    # ignored "miner-mode" alone. Both keys as integers work on both (asic-rs #245, #310).
    body["miner-mode"] = mode
    body["bitmain-work-mode"] = mode
    return body


def _same(code: int, target: int, *, exact: bool) -> bool:
    return code == target if exact else (code == MODE_SLEEP) == (target == MODE_SLEEP)


def stored_agrees(conf: object, target: int, *, exact: bool = False) -> bool:
    """The saved config is asleep (or not; `exact`: in `target`) as asked, so a reboot
    keeps the state."""
    if not isinstance(conf, dict):
        return False
    stored = mode_of(conf.get("bitmain-work-mode", conf.get("miner-mode")))
    return stored is not None and _same(stored, target, exact=exact)


def reached(seen: Observation, target: int, *, exact: bool = False) -> bool:
    """Every runtime mode source agrees the unit is asleep (or not; `exact`: in `target`)
    as asked."""
    codes = [c for c in (seen.rpc_mode, seen.web_mode) if c is not None]
    if codes:
        return all(_same(c, target, exact=exact) for c in codes)
    # No mode field anywhere (older builds): judge by hashing alone.
    return (seen.reading.hashrate_ths <= 0) == (target == MODE_SLEEP)


def describe(seen: Observation) -> str:
    sources = (("rpc", seen.rpc_mode), ("stats.cgi", seen.web_mode))
    return ", ".join(f"{src} {code}" for src, code in sources if code is not None) or "unknown"


def check_ack(ack: object, *, device: str, op: str) -> None:
    if not isinstance(ack, dict):
        raise ProtocolError(device, op, f"set_miner_conf answered {ack!r}")
    code = str(ack.get("code", ""))
    if ack.get("stats") != "success" or code != "M000":
        raise RejectedError(device, op, f"set_miner_conf: {code or '?'} {ack.get('msg', '')}")
