"""Braiins OS+ over its public REST API v1 (http://<miner>/api/v1, plain HTTP on port 80).

Login gives a token that goes raw in `Authorization` (no "Bearer"). It expires after
`timeout_s` without use, each request sliding it on, and it dies with a reboot: an HTTP 401
means log in again, once. Curtailment pauses mining (hashboards off, bosminer and the
control board up); we never `stop` bosminer, which has left fans at 100 %. Every write is
followed by a read-back; a miner that acknowledges and does not act raises
VerificationError. pyasic drives BOS+ over gRPC instead; REST needs no generated code,
carries everything we command, and shares the HTTP transport with other families.

The package's rooms: parse.py (replies into readings and settings), rest.py (the REST
API under its login token), driver.py (the driver and its registry entry). The names
below are its public face; the modules import each other, never this file.
"""

from drivers.miners.braiins_os.driver import (
    ENTRY,
    QUICK_RAMP_DOWN_S,
    QUICK_RAMP_UP_S,
    READ_PARTS,
    TRAITS,
    BraiinsOsMiner,
)
from drivers.miners.braiins_os.parse import (
    PauseFans,
    QuickRamping,
    parse_reading,
    target_profile,
)

__all__ = [
    "ENTRY",
    "QUICK_RAMP_DOWN_S",
    "QUICK_RAMP_UP_S",
    "READ_PARTS",
    "TRAITS",
    "BraiinsOsMiner",
    "PauseFans",
    "QuickRamping",
    "parse_reading",
    "target_profile",
]
