"""A simulated Whatsminer (MicroBT btminer): one machine that speaks API v2 and, on firmware
dated after 2024-11, API v3 as well.
"""

from __future__ import annotations

from sim.whatsminer.v2 import V2Api
from sim.whatsminer.v3 import V3Api


class WhatsminerDevice(V2Api, V3Api):
    """One Whatsminer's API state over its physics: both APIs act on the one machine."""
