"""Braiins OS+ REST API v1 over one device, as the public OpenAPI document "Braiins OS
Public REST API" (1.7.0) gives it: snake_case JSON, enums as integers, oneofs as objects
keyed by variant. Login gives a token sent raw in `Authorization`; it expires after
`timeout_s` without use (each request refreshes it) and a missing or expired one answers
HTTP 401 with no body.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from sim.braiins_os.device import (
    API_VERSION,
    BOS_VERSION,
    FAN_MAX_RPM,
    FANS,
    LIMITED_FAN_RUNTIME_S,
    QUICK_DOWN_S,
    QUICK_RAMP_LIMITS_S,
    QUICK_UP_S,
    RUNTIME_INDEFINITE,
    BraiinsDevice,
)
from sim.faults import FaultState
from sim.http_server import HttpSimServer
from sim.missing import Missing, http_missing

TUNER_STABLE = 2  # TunerState
TUNER_TUNING = 3
HTTP_PRECONDITION_FAILED = 412  # constraint violations (a secondary source; assumption)


RestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RestApi:
    """The REST API v1 routes over one device."""

    def __init__(self, device: BraiinsDevice) -> None:
        self.device = device
        self._serving: set[asyncio.Task[Any]] = set()

    def cancel_in_flight(self) -> None:
        """End requests still being served (a stalled reply holds its handler for a minute,
        and aiohttp's shutdown would wait that long for it)."""
        for task in self._serving:
            task.cancel()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._count])
        private = self._private
        routes = [
            web.post("/api/v1/auth/login", self._login),
            web.get("/api/v1/version", private(self._version)),
            web.get("/api/v1/version/", private(self._version)),
            web.put("/api/v1/actions/pause", private(self._pause)),
            web.put("/api/v1/actions/resume", private(self._resume)),
            web.get("/api/v1/miner/details", private(self._details)),
            web.get("/api/v1/miner/stats", private(self._stats)),
            web.get("/api/v1/miner/hw/hashboards", private(self._hashboards)),
            web.get("/api/v1/miner/errors", private(self._errors)),
            web.get("/api/v1/cooling/state", private(self._cooling_state)),
            web.put("/api/v1/cooling/mode", private(self._cooling_mode)),
            web.get("/api/v1/performance/mode", private(self._performance_mode)),
            web.get("/api/v1/performance/tuner-state", private(self._tuner_state)),
            web.put("/api/v1/performance/power-target", private(self._power_target)),
            web.put("/api/v1/performance/quick-ramping", private(self._quick_ramping)),
            web.put("/api/v1/performance/quick-ramping/default", private(self._quick_default)),
            web.get("/api/v1/configuration/miner", private(self._configuration)),
            web.get("/api/v1/configuration/constraints", private(self._constraints)),
            web.get("/api/v1/pools/", private(self._pools)),
        ]
        app.add_routes(routes)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: RestHandler) -> web.StreamResponse:
        device = self.device
        device.in_flight += 1
        device.peak_in_flight = max(device.peak_in_flight, device.in_flight)
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        try:
            return await handler(request)
        finally:
            device.in_flight -= 1
            if task is not None:
                self._serving.discard(task)

    def _private(self, handler: RestHandler) -> RestHandler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            # The raw token, as the OpenAPI says; "Bearer <token>" is not a token we issued.
            if not self.device.authorised(request.headers.get("Authorization")):
                return web.Response(status=401)
            return await handler(request)

        return guarded

    async def _login(self, request: web.Request) -> web.StreamResponse:
        body, problem = await _json_body(request)
        if problem is not None:
            return problem
        if not isinstance(body, dict) or "username" not in body or "password" not in body:
            return _bad_request("missing field `username` or `password`")
        token = self.device.login(body["username"], body["password"])
        if token is None:
            return web.Response(status=401)
        return web.json_response({"token": token, "timeout_s": self.device.timeout_s})

    async def _version(self, _: web.Request) -> web.StreamResponse:
        major, minor, patch = API_VERSION
        return web.json_response({"major": major, "minor": minor, "patch": patch})

    async def _pause(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self.device.pause())

    async def _resume(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self.device.resume())

    async def _details(self, _: web.Request) -> web.StreamResponse:
        d = self.device
        detailed: dict[str, Any]
        if d.paused:
            detailed = {"stopped": {"reason": {"user_pause": {}}}}
        else:
            detailed = {"running": {"reason": {"normal": {}}}}
        uptime = d.uptime_s()
        return web.json_response(
            {
                "uid": d.serial,
                "miner_identity": {
                    "brand": 1,
                    "model": 0,
                    "name": d.model_name(),
                    "miner_model": d.model_name(),
                },
                "platform": 3,
                "bos_mode": 4,
                "bos_version": {"current": BOS_VERSION, "major": "25.07", "bos_plus": True},
                "hostname": f"bos-{d.serial[-6:].lower()}",
                "mac_address": d.mac,
                "system_uptime": uptime,
                "sticker_hashrate": {"gigahash_per_second": d.physics.model.hashrate_ths * 1000},
                "bosminer_uptime_s": uptime,
                "system_uptime_s": uptime,
                "status": d.status(),
                "kernel_version": "5.10.0",
                "psu_info": None,
                "serial_number": d.serial,
                "control_board_soc_family": 1,
                "detailed_status": {
                    "status": detailed,
                    "status_since": {"seconds": int(d.since), "nanos": 0},
                    "status_until": None,
                },
                "is_pic_model": False,
            }
        )

    async def _stats(self, _: web.Request) -> web.StreamResponse:
        d = self.device
        ghs = d.hashrate_ghs()
        watts = d.power_w()
        efficiency = round(watts / (ghs / 1000), 2) if ghs > 0 else 0.0
        return web.json_response(
            {
                "pool_stats": {
                    "accepted_shares": d.accepted,
                    "rejected_shares": 0,
                    "stale_shares": 0,
                    "last_difficulty": 0,
                    "best_share": 0,
                    "best_share_str": "0",
                    "generated_work": 0,
                    "last_share_time": None,
                },
                "miner_stats": _work_stats(ghs, d.physics.profile.hashrate_ths * 1000),
                "power_stats": {
                    "approximated_consumption": {"watt": watts},
                    "efficiency": {"joule_per_terahash": efficiency},
                },
            }
        )

    async def _hashboards(self, _: web.Request) -> web.StreamResponse:
        d = self.device
        boards = d.physics.model.boards
        per_board = round(d.hashrate_ghs() / boards, 2)
        nominal = d.physics.profile.hashrate_ths * 1000 / boards
        hashboards = [
            {
                "id": str(i + 1),
                "enabled": True,
                "chips_count": 126,
                "current_voltage": {"volt": 13.2},
                "current_frequency": {"hertz": 525_000_000.0 if not d.paused else 0.0},
                "highest_chip_temp": {
                    "id": 0,
                    "location": 1,
                    "temperature": {"degree_c": chip},
                },
                "board_temp": {"degree_c": board},
                "lowest_inlet_temp": {"degree_c": board - 10},
                "highest_outlet_temp": {"degree_c": board + 2},
                "stats": _work_stats(per_board, nominal),
                "model": "BHB42601",
                "serial_number": f"{d.serial}{i + 1}",
                "board_name": "BHB42601",
                "chip_type": "BM1362",
            }
            for i, (board, chip) in enumerate(zip(d.board_temps_c(), d.chip_temps_c(), strict=True))
        ]
        return web.json_response({"hashboards": hashboards})

    async def _errors(self, _: web.Request) -> web.StreamResponse:
        return web.json_response({"errors": []})

    async def _cooling_state(self, _: web.Request) -> web.StreamResponse:
        d = self.device
        ratio = d.fan_ratio(d.now())
        hottest = max(d.chip_temps_c())
        return web.json_response(
            {
                "fans": [
                    {"position": i, "rpm": round(ratio * FAN_MAX_RPM), "target_speed_ratio": ratio}
                    for i in range(FANS)
                ],
                "highest_temperature": {
                    "id": 0,
                    "location": 1,
                    "temperature": {"degree_c": hottest},
                },
            }
        )

    async def _cooling_mode(self, request: web.Request) -> web.StreamResponse:
        body, problem = await _json_body(request)
        if problem is not None:
            return problem
        result, error = self.device.set_cooling(body)
        if error is not None or result is None:
            return _bad_request(error or "invalid cooling mode")
        return web.json_response(result)

    async def _performance_mode(self, _: web.Request) -> web.StreamResponse:
        watt = self.device.target_w
        return web.json_response({"tunermode": {"target": {"powertarget": _power(watt)}}})

    async def _tuner_state(self, _: web.Request) -> web.StreamResponse:
        d = self.device
        profile = d.physics.profile
        return web.json_response(
            {
                "overall_tuner_state": TUNER_TUNING if d.tuning() else TUNER_STABLE,
                "mode_state": {
                    "powertargetmodestate": {
                        "current_target": {"watt": d.target_w},
                        "profile": {
                            "created": {"seconds": int(d.since), "nanos": 0},
                            "target": {"watt": profile.power_w},
                            "measured_hashrate": {
                                "gigahash_per_second": profile.hashrate_ths * 1000
                            },
                            "estimated_power_consumption": {"watt": profile.power_w},
                        },
                    }
                },
            }
        )

    async def _power_target(self, request: web.Request) -> web.StreamResponse:
        body, problem = await _json_body(request)
        if problem is not None:
            return problem
        watt = body.get("watt") if isinstance(body, dict) else None
        if isinstance(watt, bool) or not isinstance(watt, int) or watt < 0:
            return _bad_request("missing or invalid field `watt`")
        error = self.device.set_power_target(watt)
        if error is not None:
            return web.Response(status=HTTP_PRECONDITION_FAILED, text=error)
        return web.json_response({"watt": watt})

    async def _quick_ramping(self, request: web.Request) -> web.StreamResponse:
        body, problem = await _json_body(request)
        if problem is not None:
            return problem
        up = body.get("up_s") if isinstance(body, dict) else None
        down = body.get("down_s") if isinstance(body, dict) else None
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (up, down)):
            return _bad_request("missing or invalid field `up_s` or `down_s`")
        error = self.device.set_quick_ramping(cast("int", up), cast("int", down))
        if error is not None:
            return web.Response(status=HTTP_PRECONDITION_FAILED, text=error)
        return web.json_response({"up_s": up, "down_s": down})

    async def _quick_default(self, _: web.Request) -> web.StreamResponse:
        self.device.set_quick_ramping(QUICK_UP_S, QUICK_DOWN_S)
        return web.json_response({"up_s": QUICK_UP_S, "down_s": QUICK_DOWN_S})

    async def _configuration(self, _: web.Request) -> web.StreamResponse:
        d = self.device
        return web.json_response(
            {
                "pool_groups": [
                    {
                        "uid": "1",
                        "name": "Default",
                        "load_balance_strategy": {"quota": {"value": 1}},
                        "pools": [
                            {
                                "uid": str(i + 1),
                                "url": pool.url,
                                "user": pool.user,
                                "password": None,
                                "enabled": pool.enabled,
                            }
                            for i, pool in enumerate(d.pools.get())
                        ],
                    }
                ],
                "temperature": {"minimum_required_fans": None, "mode": d.cooling},
                "tuner": {
                    "enabled": True,
                    "tuner_mode": 1,
                    "power_target": {"watt": d.target_w},
                    "hashrate_target": None,
                },
                "dps": {"enabled": False, "shutdown_enabled": False, "mode": 1},
                "hashboard_config": {
                    "global_frequency": None,
                    "global_voltage": None,
                    "hashboards": [
                        {"id": str(i + 1), "enabled": True, "frequency": None, "voltage": None}
                        for i in range(d.physics.model.boards)
                    ],
                    "quick_ramping_time_up_s": d.quick_up_s,
                    "quick_ramping_time_down_s": d.quick_down_s,
                },
            }
        )

    async def _pools(self, _: web.Request) -> web.StreamResponse:
        """GET /api/v1/pools/: the pool groups with each pool's state (PoolService)."""
        d = self.device
        active = None if d.paused else d.pools.active()
        pools = [
            {
                "uid": str(i + 1),
                "url": pool.url,
                "user": pool.user,
                "enabled": pool.enabled,
                "alive": pool.enabled and pool.alive,
                "active": i == active,
                "stats": {
                    "accepted_shares": d.accepted if i == active else 0,
                    "rejected_shares": 0,
                    "stale_shares": 0,
                    "last_difficulty": 0,
                    "best_share": 0,
                    "best_share_str": "0",
                    "generated_work": 0,
                    "last_share_time": None,
                },
            }
            for i, pool in enumerate(d.pools.get())
        ]
        return web.json_response(
            [{"uid": "1", "name": "Default", "strategy": {"quota": {"value": 1}}, "pools": pools}]
        )

    async def _constraints(self, _: web.Request) -> web.StreamResponse:
        d = self.device
        low, high = d.target_range_w()
        rated = d.physics.model.rated_power_w
        ramp_low, ramp_high = QUICK_RAMP_LIMITS_S
        return web.json_response(
            {
                "tuner_constraints": {
                    "power_target": {
                        "default": {"watt": rated},
                        "min": {"watt": low},
                        "max": {"watt": high},
                    },
                    "default_mode": 1,
                    "enabled": {"default": True},
                },
                "cooling_constraints": {
                    "default_cooling_mode": 1,
                    "default_fan_pause_mode": 1,
                    "default_fan_pause_runtime": RUNTIME_INDEFINITE,
                    "fan_pause_runtime_limited_duration_s": LIMITED_FAN_RUNTIME_S,
                    "pause_cooldown_fan_speed_ratio": {"default": 0.3, "min": 0.0, "max": 1.0},
                    "fan_speed_ratio": {"default": 0.6, "min": 0.0, "max": 1.0},
                },
                "hashboards_constraints": {
                    "hashboard_ids": [str(i + 1) for i in range(d.physics.model.boards)],
                    "quick_ramping_time_s": {
                        "default": QUICK_UP_S,
                        "min": ramp_low,
                        "max": ramp_high,
                    },
                },
                "dps_constraints": {"mode": 1},
            }
        )


def _power(watt: int) -> dict[str, Any]:
    return {"power_target": {"watt": watt}}


def _work_stats(ghs: float, nominal_ghs: float) -> dict[str, Any]:
    rate = {"gigahash_per_second": ghs}
    return {
        "real_hashrate": {
            "last_5s": rate,
            "last_15s": rate,
            "last_30s": rate,
            "last_1m": rate,
            "last_5m": rate,
            "last_15m": rate,
            "last_30m": rate,
            "last_1h": rate,
            "last_24h": rate,
            "since_restart": rate,
        },
        "nominal_hashrate": {"gigahash_per_second": round(nominal_ghs, 2)},
        "error_hashrate": {"megahash_per_second": 0.0},
        "found_blocks": 0,
        "best_share": 0,
        "best_share_str": "0",
    }


async def _json_body(request: web.Request) -> tuple[Any, web.Response | None]:
    raw = await request.read()
    try:
        return json.loads(raw), None
    except (ValueError, RecursionError) as err:
        return None, _bad_request(f"Json deserialize error: {err}")


def _bad_request(text: str) -> web.Response:
    # (assumption) the OpenAPI documents 400 for an invalid payload, not its body
    return web.Response(status=400, text=text)


class RestServer(HttpSimServer):
    """The REST endpoint: HttpSimServer's wire faults, and a close that does not wait out
    a stalled reply."""

    def __init__(
        self,
        host: str,
        port: int,
        api: RestApi,
        fault: FaultState,
        *,
        rng: random.Random,
        observer: Callable[[str], None] | None = None,
        missing: Missing | None = None,
    ) -> None:
        app = api.app()
        super().__init__(host, port, app, fault, rng=rng, observer=observer)
        # An endpoint the build lacks is a 404 before any token check, as an unknown path
        # is (the router answers before a handler could ask for the token).
        app.middlewares.append(http_missing(missing or Missing()))
        self._api = api

    async def close(self) -> None:
        self._api.cancel_in_flight()
        await super().close()
