"""A simulated Whatsminer (MicroBT btminer): btminer's state over the physics (machine.py),
API v2 on 4028 (v2.py, crypto.py), API v3 on 4433 on new firmware (v3.py), their TCP
endpoints (wire.py) and how the farm builds one (family.py).
"""

from __future__ import annotations

from sim.whatsminer.device import WhatsminerDevice
from sim.whatsminer.family import FAMILY, model_for
from sim.whatsminer.machine import (
    PREHEAT_S,
    RESTART_S,
    UPFREQ_PREHEATED_S,
    UPFREQ_S,
)
from sim.whatsminer.v2 import MAX_TOKENS, V2Answer
from sim.whatsminer.wire import WhatsminerV2Server, WhatsminerV3Server

__all__ = [
    "FAMILY",
    "MAX_TOKENS",
    "PREHEAT_S",
    "RESTART_S",
    "UPFREQ_PREHEATED_S",
    "UPFREQ_S",
    "V2Answer",
    "WhatsminerDevice",
    "WhatsminerV2Server",
    "WhatsminerV3Server",
    "model_for",
]
