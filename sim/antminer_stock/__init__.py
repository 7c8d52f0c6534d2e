"""A simulated stock Bitmain Antminer: its firmware state (firmware.py) behind the read-only
4028 API (rpc.py) and the web CGI (cgi.py) behind HTTP Digest (digest.py).
"""

from __future__ import annotations

from sim.antminer_stock.cgi import StockCgiServer
from sim.antminer_stock.device import AntminerStockDevice
from sim.antminer_stock.digest import NONCE_TTL_S
from sim.antminer_stock.family import FAMILY, SLEEP_POWER_W, model_for
from sim.antminer_stock.firmware import READ_COMMANDS, RESTART_S, SLEEP_FAN_RPM
from sim.antminer_stock.rpc import StockRpcServer

__all__ = [
    "FAMILY",
    "NONCE_TTL_S",
    "READ_COMMANDS",
    "RESTART_S",
    "SLEEP_FAN_RPM",
    "SLEEP_POWER_W",
    "AntminerStockDevice",
    "StockCgiServer",
    "StockRpcServer",
    "model_for",
]
