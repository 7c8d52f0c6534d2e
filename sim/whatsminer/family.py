"""How the farm builds a Whatsminer: one device behind API v2 on 4028 and, on new firmware,
API v3 on 4433 as well; and the hardware model for a rated power and efficiency.
"""

from __future__ import annotations

from typing import Any

from sim.families import BuildContext, Built, Family, SimMinerSpec, SimServer
from sim.physics import MinerModel
from sim.whatsminer.device import WhatsminerDevice
from sim.whatsminer.wire import WhatsminerV2Server, WhatsminerV3Server

V2_PORT = 4028
V3_PORT = 4433
FIRMWARE_V2 = "20230911.12.Rel"  # API 2.0.5 generation (pyasic's status fixture)
FIRMWARE_V3 = "20250915.16.Rel2"  # a real M50 capture, API 3.0.2: pyasic picks API v3
SLEEP_POWER_W = 13  # Tether's suspended M56S: control board only
RAMP_DOWN_S = 5.0  # power_off: hashboards off within seconds
RAMP_UP_S = 20.0  # power_on: draw back within seconds


def _build(spec: SimMinerSpec, ctx: BuildContext) -> Built:
    new_firmware = spec.driver != "whatsminer-v2"
    device = WhatsminerDevice(
        ctx.physics,
        ctx.fault,
        time_fn=ctx.time_fn,
        rng=ctx.rng,
        serial=ctx.serial,
        mac=ctx.mac,
        host=spec.host,
        firmware=FIRMWARE_V3 if new_firmware else FIRMWARE_V2,
        password=spec.password,
        missing=ctx.missing,
        pools=ctx.pools,
    )
    options: dict[str, Any] = {"rng": ctx.rng, "observer": ctx.observer}
    servers: list[SimServer] = [
        WhatsminerV2Server(spec.host, spec.port, device, ctx.fault, **options)
    ]
    if new_firmware:
        port = spec.web_port or V3_PORT
        servers.append(WhatsminerV3Server(spec.host, port, device, ctx.fault, **options))
    return Built(device, tuple(servers))


def _model(spec: SimMinerSpec) -> MinerModel:
    return model_for(spec.rated_power_w, spec.efficiency_j_th)


FAMILY = Family("whatsminer", ("whatsminer", "whatsminer-v2", "whatsminer-v3"), _build, _model)


def model_for(rated_power_w: int, efficiency_j_th: float) -> MinerModel:
    """A plausible Whatsminer for a rated power and efficiency, with btminer's timing."""
    hashrate = round(rated_power_w / efficiency_j_th, 1)
    if efficiency_j_th <= 19:  # noqa: PLR2004 - M60S class
        name = "M60S_VK30"
    elif efficiency_j_th <= 24:  # noqa: PLR2004 - M56S++ class
        name = "M56S++_VK10"
    elif efficiency_j_th <= 31:  # noqa: PLR2004 - M50 class
        name = "M50_VH50"
    elif efficiency_j_th <= 36:  # noqa: PLR2004 - M30S+ class
        name = "M30S+_VE40"
    else:
        name = "M30S_V10"
    return MinerModel(
        name=name,
        rated_power_w=rated_power_w,
        hashrate_ths=hashrate,
        sleep_power_w=SLEEP_POWER_W,
        ramp_down_s=RAMP_DOWN_S,
        ramp_up_s=RAMP_UP_S,
    )
