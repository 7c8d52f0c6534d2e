"""Stock Bitmain Antminer firmware (bmminer/cgminer): reads on 4028, writes on the web CGI.

4028 is read-only on stock firmware: `api-allow "A:0/0,W:*"` puts every client in group A,
which may run only stats, pools, devs, summary and version (anything else is E 45). Sleep
and wake therefore go through lighttpd's CGI behind HTTP Digest: read the whole config,
write it back with the work mode changed. Saving restarts the mining process, so the
reply takes 20-30 s on real units, 4028 refuses connections for a while, and the stored
config is only intent (asic-rs #245: it can say "sleep" while the boards hash on). A write
is proven only when the restarted process reports the new mode: stats.cgi `miner-mode`
and RPC stats `Mode`, polled for `verify_window_s`.

The package's rooms: parse.py (replies into a reading, and the power estimate), workmode.py
(the config written and the mode judged), web.py (the Digest CGI), driver.py (the driver
and its registry entry). The names below are its public face; the modules import each
other, never this file.
"""

from drivers.miners.antminer_stock.driver import ENTRY, TRAITS, AntminerStockMiner
from drivers.miners.antminer_stock.parse import (
    MODE_HIGH,
    MODE_LOW,
    MODE_NORMAL,
    MODE_SLEEP,
    NOMINAL_J_TH,
    SLEEP_POWER_W,
    parse_reading,
    runtime_mode_from_stats_cgi,
)
from drivers.miners.antminer_stock.workmode import Observation, write_body

__all__ = [
    "ENTRY",
    "MODE_HIGH",
    "MODE_LOW",
    "MODE_NORMAL",
    "MODE_SLEEP",
    "NOMINAL_J_TH",
    "SLEEP_POWER_W",
    "TRAITS",
    "AntminerStockMiner",
    "Observation",
    "parse_reading",
    "runtime_mode_from_stats_cgi",
    "write_body",
]
