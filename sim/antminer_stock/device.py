"""A simulated stock Bitmain Antminer (bmminer/cgminer firmware): one firmware state behind
its read-only 4028 API and its Digest-protected web CGI.
"""

from __future__ import annotations

from sim.antminer_stock.cgi import CgiApi
from sim.antminer_stock.rpc import RpcApi


class AntminerStockDevice(RpcApi, CgiApi):
    """One stock Antminer's firmware state over its physics: config, runtime mode, nonces;
    served on 4028 and by the web CGI."""
