"""Whatsminer (MicroBT btminer) over its API v2 (TCP 4028) and API v3 (TCP 4433).

API v2: one JSON request per connection, the reply, then the miner closes (no NUL). Reads
are plaintext. Writes need a token: get_token gives salt, newsalt and time, md5-crypt of
the admin password yields the AES-256-ECB key and the token's sign, and the command travels
encrypted; the miner keeps a token 30 minutes, so we reuse ours and renew it once when the
miner says it has gone. API v3 (firmware from 2024-11): a 4-byte little-endian length and
JSON each way, several frames per connection; writes carry ts, account and an 8-character
token over cmd + password + salt + ts.

Sleep is power_off / `set.miner.service stop` (hashboards off, control board up); wake is
power_on / `start`, and a gentle wake (cold boards) first waits for pre_power_on /
`set.miner.pre_power_on` to finish the vendor's pre-heat. A power target uses
set_power_pct / `set.miner.power_percent`, which apply without a restart.
adjust_power_limit / `set.miner.power_limit` restart the mining process (minutes at low
draw, then a slow ramp), so they are offered as set_power_limit() for operators and never
used for a power target. Every write is verified by read-back.

The package's rooms: crypto.py (the tokens and the AES envelope), transport.py (API v3's
frames), parse.py (replies into a state), dialect.py (what both APIs share), v2.py and
v3.py (one driver each), probe.py (the driver that picks the API, and the registry's
entries). The names below are its public face; the modules import each other, never this
file.
"""

from drivers.miners.whatsminer.crypto import (
    V2Credentials,
    v2_credentials,
    v2_decrypt,
    v2_encrypt,
    v3_token,
)
from drivers.miners.whatsminer.dialect import TRAITS, WhatsminerState
from drivers.miners.whatsminer.parse import parse_v2, parse_v3
from drivers.miners.whatsminer.probe import ENTRIES, WhatsminerMiner, firmware_date
from drivers.miners.whatsminer.v2 import TOKEN_RENEW_S, V2_PORT, WhatsminerV2Miner
from drivers.miners.whatsminer.v3 import V3_PORT, WhatsminerV3Miner

__all__ = [
    "ENTRIES",
    "TOKEN_RENEW_S",
    "TRAITS",
    "V2_PORT",
    "V3_PORT",
    "V2Credentials",
    "WhatsminerMiner",
    "WhatsminerState",
    "WhatsminerV2Miner",
    "WhatsminerV3Miner",
    "firmware_date",
    "parse_v2",
    "parse_v3",
    "v2_credentials",
    "v2_decrypt",
    "v2_encrypt",
    "v3_token",
]
