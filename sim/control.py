"""The simulated farm's control API: read its true state, inject faults, set ambient.

Loopback only, for tests, the demo and third-party witness clients that run in another
process (and another virtualenv) and must check what the simulated hardware really did.

  GET  /v1/farm                         farm-wide winter counts: cold boots, breakers, starts
  GET  /v1/miners                       every miner's true state
  GET  /v1/miners/{id}
  PUT  /v1/miners/{id}/fault            {"mode": "lie", "slow_s": 2.0}
  PUT  /v1/miners/{id}/missing          {"missing": ["stats", "/cgi-bin/stats.cgi"]}
  PUT  /v1/miners/{id}/pools            {"pools": [{"url": "stratum+tcp://h:3333",
                                          "user": "w.1", "enabled": true, "alive": true}]}
  PUT  /v1/containers/{name}/ambient    {"ambient_c": -35}
  POST /v1/reset                        {"mode": "mining"}
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from drivers.types import Mode
from sim.farm import SimFarm, SimMiner
from sim.faults import Fault
from sim.pools import SimPool


class SimControl:
    """Serves the control API for one farm."""

    def __init__(self, farm: SimFarm, host: str = "127.0.0.1", port: int = 0) -> None:
        self._farm = farm
        self._host = host
        self._port = port
        self.port: int | None = None
        app = web.Application()
        app.router.add_get("/v1/farm", self._summary)
        app.router.add_get("/v1/miners", self._miners)
        app.router.add_get("/v1/miners/{miner}", self._miner)
        app.router.add_put("/v1/miners/{miner}/fault", self._fault)
        app.router.add_put("/v1/miners/{miner}/missing", self._missing)
        app.router.add_put("/v1/miners/{miner}/pools", self._pools)
        app.router.add_put("/v1/containers/{container}/ambient", self._ambient)
        app.router.add_post("/v1/reset", self._reset)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        server = site._server  # noqa: SLF001 - aiohttp exposes no public bound address
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _summary(self, _: web.Request) -> web.Response:
        farm = self._farm
        return web.json_response(
            {
                "miners": len(farm.miners),
                "power_w": round(farm.total_power_w(), 1),
                "failed_cold_boots": farm.failed_cold_boots(),
                "breaker_trips": farm.breaker_trips(),
                "starts": len(farm.starts),
                "peak_start_w_per_s": round(farm.peak_start_w_per_s(), 1),
                "cuts": len(farm.cuts),
                "ambient_c": {c: farm.ambient_of(c) for c in _containers(farm)},
            }
        )

    async def _miners(self, _: web.Request) -> web.Response:
        return web.json_response([self._state(m) for m in self._farm.miners.values()])

    async def _miner(self, request: web.Request) -> web.Response:
        return web.json_response(self._state(self._find(request)))

    async def _fault(self, request: web.Request) -> web.Response:
        miner = self._find(request)
        body = await _body(request)
        try:
            mode = Fault(body["mode"])
            slow_s = float(body["slow_s"]) if "slow_s" in body else None
        except (KeyError, ValueError, TypeError):
            raise web.HTTPBadRequest(
                text=f"give {{'mode': one of {[f.value for f in Fault]}, 'slow_s': seconds}}"
            ) from None
        await self._farm.set_fault(miner.spec.id, mode, slow_s=slow_s)
        return web.json_response(self._state(miner))

    async def _missing(self, request: web.Request) -> web.Response:
        """What the miner's firmware lacks from now on (sim.missing names)."""
        miner = self._find(request)
        names = (await _body(request)).get("missing")
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise web.HTTPBadRequest(text="give {'missing': [command, path or command:key, ...]}")
        self._farm.set_missing(miner.spec.id, names)
        return web.json_response(self._state(miner))

    async def _pools(self, request: web.Request) -> web.Response:
        """The pools the miner is configured with from now on, in failover order."""
        miner = self._find(request)
        rows = (await _body(request)).get("pools")
        try:
            pools = [parse_pool(row) for row in _listed(rows)]
        except (TypeError, ValueError, KeyError) as err:
            raise web.HTTPBadRequest(
                text="give {'pools': [{'url': str, 'user': str, 'password'?: str, "
                f"'enabled'?: bool, 'alive'?: bool}}, ...]}} ({err})"
            ) from None
        self._farm.set_pools(miner.spec.id, pools)
        return web.json_response(self._state(miner))

    async def _ambient(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            ambient = float(body["ambient_c"])
        except (KeyError, ValueError, TypeError):
            raise web.HTTPBadRequest(text="give {'ambient_c': degrees}") from None
        self._farm.set_ambient(request.match_info["container"], ambient)
        return web.json_response(
            {"container": request.match_info["container"], "ambient_c": ambient}
        )

    async def _reset(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            mode = Mode(body.get("mode", "mining"))
        except ValueError:
            raise web.HTTPBadRequest(text="mode: mining or sleeping") from None
        self._farm.reset(mode)
        await asyncio.sleep(0)
        return web.json_response({"reset": mode.value, "miners": len(self._farm.miners)})

    def _find(self, request: web.Request) -> SimMiner:
        miner = self._farm.miners.get(request.match_info["miner"])
        if miner is None:
            raise web.HTTPNotFound(text=f"no miner {request.match_info['miner']!r}")
        return miner

    def _state(self, miner: SimMiner) -> dict[str, Any]:
        physics = miner.physics
        power = self._farm.power_w(miner.spec.id)
        return {
            "id": miner.spec.id,
            "driver": miner.spec.driver,
            "host": miner.spec.host,
            "port": miner.spec.port,
            "web_port": miner.spec.web_port,
            "container": miner.spec.container,
            "model": physics.model.name,
            "mode": physics.mode.value,
            "profile": physics.profile.name,
            "power_w": round(power, 1),
            "board_temps_c": [round(t, 1) for t in physics.board_temps_c],
            "powered": physics.powered,
            "cold_failed": physics.cold_failed,
            "failed_cold_boots": physics.failed_cold_boots,
            "fault": miner.fault.mode.value,
            "missing": sorted(miner.missing.names),
            "missing_asked": dict(miner.missing.asked),  # requests for what it lacks
            "pools": [
                {"url": p.url, "user": p.user, "enabled": p.enabled, "alive": p.alive}
                for p in miner.pools.get()
            ],
            "commands": list(miner.device.commands),
            "requests": sum(s.requests for s in miner.servers),
        }


def parse_pool(row: object) -> SimPool:
    """One pool of a control request; TypeError or ValueError naming what is wrong."""
    if not isinstance(row, dict):
        raise TypeError("a pool is an object")
    unknown = set(row) - {"url", "user", "password", "enabled", "alive"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    url, user = row["url"], row.get("user", "")
    password, enabled, alive = (
        row.get("password", "x"),
        row.get("enabled", True),
        row.get("alive", True),
    )
    if not all(isinstance(v, str) for v in (url, user, password)) or not url:
        raise ValueError("url (not empty), user and password are strings")
    if not isinstance(enabled, bool) or not isinstance(alive, bool):
        raise TypeError("enabled and alive are true or false")
    return SimPool(url, user, password, enabled, alive)


def _listed(rows: object) -> list[object]:
    if not isinstance(rows, list):
        raise TypeError("pools is a list")
    return rows


def _containers(farm: SimFarm) -> list[str]:
    """Every container with a miner or a scripted ambient, in order."""
    return sorted({m.spec.container for m in farm.miners.values()} | set(farm.ambient_c))


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body
