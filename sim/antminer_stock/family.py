"""How the farm builds a stock Antminer: one device behind its 4028 server and its web CGI,
and the hardware model (with its low-power mode) for a rated power and efficiency.
"""

from __future__ import annotations

from sim.antminer_stock.cgi import StockCgiServer
from sim.antminer_stock.device import AntminerStockDevice
from sim.antminer_stock.rpc import StockRpcServer
from sim.families import BuildContext, Built, Family, SimMinerSpec
from sim.faults import FaultState
from sim.missing import http_missing
from sim.physics import MinerModel, Profile, antminer_class, hashrate_fraction

DEFAULT_PASSWORD = "root"  # noqa: S105 - the firmware's published default
DEFAULT_WEB_PORT = 80
SLEEP_POWER_W = 55  # (inferred) control board, PSU standby, four fans at ~960 rpm
RAMP_DOWN_S = 20.0  # the restart stops hashing; the PSU winds down over tens of seconds
RAMP_UP_S = 75.0  # the new process re-initialises every board before hashing fully
# Mode 3 (low power) at 70 % of rated, hashing as the shared curve says (sim.physics).
# hass-miner #525 reports one unit at 90 -> 60 TH/s but not its watts; the 70 % is inferred.
LOW_POWER = (0.7, hashrate_fraction(0.7))


def _build(spec: SimMinerSpec, ctx: BuildContext) -> Built:
    # Each endpoint has its own fault state so a test can fail one of them alone;
    # SimFarm.set_fault sets both.
    web_fault = FaultState(ctx.fault.mode, ctx.fault.slow_s, ctx.fault.control_up)
    device = AntminerStockDevice(
        ctx.physics,
        rpc_fault=ctx.fault,
        web_fault=web_fault,
        time_fn=ctx.time_fn,
        rng=ctx.rng,
        serial=ctx.serial,
        mac=ctx.mac,
        password=spec.password or DEFAULT_PASSWORD,
    )
    ctx.pools.attach(device.load_pools, device.store_pools)
    rpc = StockRpcServer(
        spec.host,
        spec.port,
        device,
        ctx.fault,
        rng=ctx.rng,
        observer=ctx.observer,
        missing=ctx.missing,
    )
    app = device.app()
    cgi = StockCgiServer(
        spec.host,
        spec.web_port or DEFAULT_WEB_PORT,
        app,
        web_fault,
        device=device,
        rng=ctx.rng,
        observer=ctx.observer,
    )
    # Inside the server's fault middleware, so wire faults hit the 401s too; a CGI the
    # build lacks is a 404 behind the Digest auth, as any unknown path is (lighttpd).
    app.middlewares.append(device.guard)
    app.middlewares.append(http_missing(ctx.missing))
    return Built(device, (rpc, cgi))


def _model(spec: SimMinerSpec) -> MinerModel:
    return model_for(spec.rated_power_w, spec.efficiency_j_th)


FAMILY = Family("antminer-stock", ("antminer-stock",), _build, _model)


def model_for(rated_power_w: int, efficiency_j_th: float) -> MinerModel:
    """A stock Antminer model for a rated power and efficiency, with its low-power mode."""
    hashrate = round(rated_power_w / efficiency_j_th, 1)
    # Past the S19j Pro: the 34.5 J/TH S19, the nameplate the driver estimates with.
    name = antminer_class(efficiency_j_th) or "Antminer S19"
    power_scale, hash_scale = LOW_POWER
    return MinerModel(
        name=name,
        rated_power_w=rated_power_w,
        hashrate_ths=hashrate,
        sleep_power_w=SLEEP_POWER_W,
        ramp_down_s=RAMP_DOWN_S,
        ramp_up_s=RAMP_UP_S,
        profiles=(
            Profile("default", rated_power_w, hashrate),
            Profile("low", round(rated_power_w * power_scale), round(hashrate * hash_scale, 1)),
        ),
    )
