"""How the farm builds a Braiins OS+ miner: one device behind its REST, gRPC and 4028
servers, and the hardware model for a rated power and efficiency.
"""

from __future__ import annotations

from dataclasses import replace

from sim.braiins_os.bosminer import BosminerApi
from sim.braiins_os.device import QUICK_DOWN_S, QUICK_UP_S, BraiinsDevice, target_profile
from sim.braiins_os.grpc import GrpcSimServer
from sim.braiins_os.rest import RestApi, RestServer
from sim.cgminer_server import CgminerServer
from sim.families import BuildContext, Built, Family, SimMinerSpec
from sim.physics import MinerModel

GRPC_PORT = 50051  # bos-plus-api README
CGMINER_PORT = 4028
DEFAULT_PASSWORD = "root"  # noqa: S105 - the well-known default pyasic and asic-rs send
SLEEP_POWER_W = 30  # paused: control board, PSU standby, fans at pause speed (assumption)


def _build(spec: SimMinerSpec, ctx: BuildContext) -> Built:
    grpc_port = spec.web_port or GRPC_PORT
    if len({spec.port, grpc_port, CGMINER_PORT}) != 3:  # noqa: PLR2004 - three endpoints
        raise ValueError(
            f"{spec.id}: REST port {spec.port}, gRPC port {grpc_port} and BOSminer's "
            f"{CGMINER_PORT} must differ"
        )
    device = BraiinsDevice(
        ctx.physics,
        ctx.fault,
        time_fn=ctx.time_fn,
        rng=ctx.rng,
        serial=ctx.serial,
        mac=ctx.mac,
        password=spec.password if spec.password is not None else DEFAULT_PASSWORD,
        pools=ctx.pools,
    )
    rest = RestServer(
        spec.host,
        spec.port,
        RestApi(device),
        ctx.fault,
        rng=ctx.rng,
        observer=ctx.observer,
        missing=ctx.missing,
    )
    grpc = GrpcSimServer(
        spec.host, grpc_port, device, ctx.fault, rng=ctx.rng, observer=ctx.observer
    )
    bosminer = CgminerServer(
        spec.host,
        CGMINER_PORT,
        BosminerApi(device),
        ctx.fault,
        rng=ctx.rng,
        observer=ctx.observer,
        missing=ctx.missing,
    )
    return Built(device, (rest, grpc, bosminer))


def model_for(rated_power_w: int, efficiency_j_th: float) -> MinerModel:
    """A plausible Antminer under BOS+ for a rated power and efficiency."""
    hashrate = round(rated_power_w / efficiency_j_th, 1)
    if efficiency_j_th <= 18.5:  # noqa: PLR2004 - S21 class
        name = "Antminer S21"
    elif efficiency_j_th <= 23:  # noqa: PLR2004 - S19 XP class
        name = "Antminer S19 XP"
    elif efficiency_j_th <= 30:  # noqa: PLR2004 - S19j Pro class
        name = "Antminer S19j Pro"
    else:
        name = "Antminer S19 Pro"
    base = MinerModel(name=name, rated_power_w=rated_power_w, hashrate_ths=hashrate)
    return replace(
        base,
        sleep_power_w=SLEEP_POWER_W,
        ramp_down_s=float(QUICK_DOWN_S),
        ramp_up_s=float(QUICK_UP_S),
        profiles=(target_profile(base, rated_power_w),),
    )


def _model(spec: SimMinerSpec) -> MinerModel:
    return model_for(spec.rated_power_w, spec.efficiency_j_th)


FAMILY = Family("braiins-os", ("braiins-os",), _build, _model)
