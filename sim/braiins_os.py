"""A simulated Braiins OS+ miner: REST API v1, the gRPC API pyasic drives, and 4028.

REST (spec.port, 80 on a real miner) follows the public OpenAPI document "Braiins OS Public
REST API" (1.7.0): snake_case JSON, enums as integers, oneofs as objects keyed by variant.
Login gives a token sent raw in `Authorization`; it expires after `timeout_s` without use
(each request refreshes it) and a missing or expired one answers HTTP 401 with no body.

gRPC (spec.web_port, else 50051; plaintext HTTP/2) serves exactly the calls pyasic 0.79.0
makes for stop_mining, resume_mining, set_power_limit and get_data. Messages are encoded by
hand from the field numbers in braiins/bos-plus-api (read through pyasic's bindings); we do
not vendor the .proto files (GPL-3.0 headers). Login sends the token in the response's
initial metadata `authorization`, where pyasic reads it.

4028 is the BOSminer CGMiner-style API pyasic reads is_mining, uptime and errors from, and
its factory identifies the firmware and model by.

Numbers no public source gives are marked (assumption) where they are set.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import string
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, cast

from aiohttp import web
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from drivers.types import Mode
from sim.cgminer_server import CODE_INVALID_COMMAND, CgminerServer, Reply
from sim.families import BuildContext, Built, Family, SimMinerSpec
from sim.faults import Fault, FaultState
from sim.http_server import HttpSimServer
from sim.missing import Missing, http_missing
from sim.physics import MinerModel, MinerPhysics, Profile

GRPC_PORT = 50051  # bos-plus-api README
CGMINER_PORT = 4028
USERNAME = "root"
DEFAULT_PASSWORD = "root"  # noqa: S105 - the well-known default pyasic and asic-rs send
TOKEN_TIMEOUT_S = 3600  # LoginResponse.timeout_s; pyasic re-logs in after 3540 s
MAX_TOKENS = 64  # pyasic logs in once per concurrent call; keep the newest
API_VERSION = (1, 7, 0)  # quick ramping and fan pause modes need >= 1.7.0 (BOS 25.07)
BOS_VERSION = "2025-07-24-0-3c4b8a5f-25.07-plus"  # pyasic takes split("-")[5] as fw_ver
BOSMINER_VERSION = "0.9.0-3c4b8a5f"

# Quick ramping: the OpenAPI example {"down_s": 2, "up_s": 5}; defaults unpublished (assumption).
QUICK_UP_S = 5
QUICK_DOWN_S = 2
QUICK_RAMP_LIMITS_S = (0, 300)  # (assumption) per-device from hashboards_constraints
# The tuner walks to a new power target through intermediate profiles; users report tens
# of seconds to minutes. A full-rated-span move takes this long here (assumption).
RETUNE_S = 120.0
SLEEP_POWER_W = 30  # paused: control board, PSU standby, fans at pause speed (assumption)
TARGET_MIN_FRACTION = 0.4  # power target range per model (assumption); rejected outside
TARGET_MAX_FRACTION = 1.3
HASHRATE_EXPONENT = 0.8  # hashrate ~ power^0.8: lower clocks are more efficient (assumption)
AUTO_FAN_DECAY_S = 300.0  # auto pause mode: last mining speed "slowly" down to 0 (assumption)
LIMITED_FAN_RUNTIME_S = 600  # fan_pause_runtime_limited_duration_s (assumption)
FAN_MAX_RPM = 6000
FANS = 4

STATUS_NORMAL = 2  # MinerStatus (miner.proto)
STATUS_PAUSED = 3
TUNER_STABLE = 2  # TunerState
TUNER_TUNING = 3
RUNTIME_LIMITED = 1  # FanPauseRuntime
RUNTIME_INDEFINITE = 2
HTTP_PRECONDITION_FAILED = 412  # constraint violations (a secondary source; assumption)

PAUSE_AUTO: dict[str, Any] = {"mode": {"auto": {}}}
TEMPERATURES: dict[str, Any] = {
    "target_temperature": {"degree_c": 75.0},
    "hot_temperature": {"degree_c": 90.0},
    "dangerous_temperature": {"degree_c": 100.0},
}
COOLING_DEFAULTS: dict[str, dict[str, Any]] = {
    "auto": {
        **TEMPERATURES,
        "min_fan_speed": None,
        "max_fan_speed": None,
        "minimum_required_fans": 1,
        "pause_mode": PAUSE_AUTO,
    },
    "manual": {
        **TEMPERATURES,
        "fan_speed_ratio": 0.6,
        "minimum_required_fans": 1,
        "pause_mode": PAUSE_AUTO,
    },
    "immersion": dict(TEMPERATURES),
    "hydro": dict(TEMPERATURES),
}


class BraiinsDevice:
    """One BOS+ miner's state over its physics, shared by its REST, gRPC and 4028 APIs."""

    def __init__(
        self,
        physics: MinerPhysics,
        fault: FaultState,
        *,
        time_fn: Callable[[], float],
        rng: random.Random,
        serial: str,
        mac: str,
        password: str,
    ) -> None:
        self.physics = physics
        self.fault = fault
        self._now = time_fn
        self._rng = rng
        self.serial = serial
        self.mac = mac
        self.password = password
        self.commands: deque[str] = deque(maxlen=256)  # writes carried out, for tests
        self.tokens: dict[str, float] = {}  # token -> last use
        self.timeout_s = TOKEN_TIMEOUT_S
        now = time_fn()
        self._started = now
        self._since = now  # when the current status began
        self._paused_at: float | None = None if physics.mode is Mode.MINING else now
        self._fan_at_pause = 0.0
        self.quick_up_s = QUICK_UP_S
        self.quick_down_s = QUICK_DOWN_S
        # The farm spreads ramp times per unit; keep that spread when the ramping changes.
        self._spread = (
            physics.model.ramp_up_s / QUICK_UP_S,
            physics.model.ramp_down_s / QUICK_DOWN_S,
        )
        self.cooling: dict[str, dict[str, Any]] = {"auto": copy.deepcopy(COOLING_DEFAULTS["auto"])}
        self.target_w = physics.profile.power_w
        self.in_flight = 0  # REST requests being served right now
        self.peak_in_flight = 0
        self.accepted = 0

    def reset(self, mode: Mode) -> None:
        """Simulator control: drop every token and put the miner in `mode` at once."""
        now = self._now()
        self.physics.force(mode, now)
        self.tokens.clear()
        self._since = now
        self._paused_at = None if mode is Mode.MINING else now

    def now(self) -> float:
        return self._now()

    @property
    def since(self) -> float:
        """When the current status (mining or paused) began."""
        return self._since

    # -- authentication --------------------------------------------------------------------

    def login(self, username: object, password: object) -> str | None:
        """A new token, or None for bad credentials."""
        if username != USERNAME or password != self.password:
            return None
        now = self._now()
        for token, used in list(self.tokens.items()):
            if now - used > self.timeout_s:
                del self.tokens[token]
        while len(self.tokens) >= MAX_TOKENS:
            del self.tokens[next(iter(self.tokens))]
        alphabet = string.ascii_letters + string.digits
        token = "".join(self._rng.choice(alphabet) for _ in range(16))
        self.tokens[token] = now
        return token

    def authorised(self, token: str | None) -> bool:
        """Check a token and slide its expiry; `expire-sessions` expires all of them."""
        if self.fault.expiring:
            self.tokens.clear()
            return False
        if not token:
            return False
        used = self.tokens.get(token)
        now = self._now()
        if used is None:
            return False
        if now - used > self.timeout_s:
            del self.tokens[token]
            return False
        self.tokens[token] = now
        return True

    # -- actions ---------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self.physics.mode is Mode.SLEEPING

    def pause(self) -> bool:
        """Pause mining; True if it already was (the API's `already_paused`)."""
        already = self.paused
        if not already and not self.fault.lying:
            now = self._now()
            self._fan_at_pause = self.fan_ratio(now)
            self.physics.sleep(now)
            self._paused_at = self._since = now
            self.commands.append("pause")
        return already

    def resume(self) -> bool:
        """Resume mining; True if it already was (`already_mining`)."""
        already = not self.paused
        if not already and not self.fault.lying:
            now = self._now()
            self.physics.wake(now)
            self._paused_at = None
            self._since = now
            self.commands.append("resume")
        return already

    def target_range_w(self) -> tuple[int, int]:
        rated = self.physics.model.rated_power_w
        return round(rated * TARGET_MIN_FRACTION), round(rated * TARGET_MAX_FRACTION)

    def set_power_target(self, watt: int) -> str | None:
        """Retune to `watt`; the firmware's error message if it is out of range."""
        low, high = self.target_range_w()
        if not low <= watt <= high:
            return f"power target [{watt}W] is not in allowed range [Some({low}), Some({high})]"
        if self.fault.lying:
            return None
        now = self._now()
        model = self.physics.model
        self.physics.model = replace(model, ramp_down_s=RETUNE_S, ramp_up_s=RETUNE_S)
        try:
            self.physics.set_profile(self._profile(watt), now)
        finally:
            self.physics.model = model
        self.target_w = watt
        self.commands.append(f"power-target {watt}")
        return None

    def set_quick_ramping(self, up_s: int, down_s: int) -> str | None:
        low, high = QUICK_RAMP_LIMITS_S
        for name, value in (("up_s", up_s), ("down_s", down_s)):
            if not low <= value <= high:
                return f"quick ramping {name} [{value}s] is not in allowed range [{low}, {high}]"
        if self.fault.lying:
            return None
        self.quick_up_s, self.quick_down_s = up_s, down_s
        up, down = self._spread
        self.physics.model = replace(
            self.physics.model, ramp_up_s=up_s * up, ramp_down_s=down_s * down
        )
        self.commands.append(f"quick-ramping {up_s}/{down_s}")
        return None

    def set_cooling(self, request: object) -> tuple[dict[str, Any] | None, str | None]:
        """Apply a SetCoolingModeRequest: (the resulting mode, or an error message)."""
        if not isinstance(request, dict) or len(request) != 1:
            return None, "expected exactly one of auto, manual, immersion, hydro"
        kind, fields = next(iter(request.items()))
        if kind not in COOLING_DEFAULTS or not isinstance(fields, dict):
            return None, f"unknown cooling mode {kind!r}"
        current_kind, current = next(iter(self.cooling.items()))
        # Another mode starts from its defaults; the same mode is updated in place.
        result = copy.deepcopy(current if kind == current_kind else COOLING_DEFAULTS[kind])
        for key, value in fields.items():
            if key not in COOLING_DEFAULTS[kind]:
                return None, f"unknown field `{key}` for {kind} cooling"
            if value is None:
                continue
            if key == "pause_mode":
                problem = _pause_mode_problem(value)
                if problem is not None:
                    return None, problem
            result[key] = value
        if not self.fault.lying:
            self.cooling = {kind: result}
            self.commands.append(f"cooling {kind}")
        return {kind: result}, None

    # -- what the firmware reports ---------------------------------------------------------

    def status(self) -> int:
        return STATUS_PAUSED if self.paused else STATUS_NORMAL

    def power_w(self) -> int:
        return round(self.physics.power_w(self._now()))

    def hashrate_ghs(self) -> float:
        return round(self.physics.hashrate_ths(self._now()) * 1000, 2)

    def board_temps_c(self) -> list[float]:
        self.physics.advance(self._now())
        return [round(t, 1) for t in self.physics.board_temps_c]

    def chip_temps_c(self) -> list[float]:
        rise = 12.0 if not self.paused else 0.0
        return [round(t + rise, 1) for t in self.board_temps_c()]

    def tuning(self) -> bool:
        """True while the draw is still walking toward the target."""
        return not self.paused and abs(self.power_w() - self.physics.target_w) > 1

    def fan_ratio(self, now: float) -> float:
        """Fan PWM as a ratio: by temperature while mining, by the pause mode when paused."""
        kind, mode = next(iter(self.cooling.items()))
        if not self.paused or self._paused_at is None:
            if kind == "manual":
                return float(mode.get("fan_speed_ratio") or 0.0)
            if kind in ("immersion", "hydro"):
                return 0.0
            load = self.physics.power_w(now) / max(self.physics.model.rated_power_w, 1)
            return round(min(1.0, 0.3 + 0.4 * load), 3)
        paused_for = now - self._paused_at
        pause = (mode.get("pause_mode") or PAUSE_AUTO).get("mode") or {}
        manual = pause.get("manual")
        if isinstance(manual, dict):
            limited = manual.get("fan_pause_runtime") == RUNTIME_LIMITED
            if limited and paused_for >= LIMITED_FAN_RUNTIME_S:
                return 0.0
            return float(manual.get("pause_cooldown_fan_speed_ratio") or 0.0)
        return round(max(0.0, self._fan_at_pause * (1 - paused_for / AUTO_FAN_DECAY_S)), 3)

    def uptime_s(self) -> int:
        return int(self._now() - self._started)

    def model_name(self) -> str:
        return self.physics.model.name

    def _profile(self, watt: int) -> Profile:
        return target_profile(self.physics.model, watt)


def target_profile(model: MinerModel, watt: int) -> Profile:
    """The steady state the tuner settles at for a power target."""
    scale = watt / max(model.rated_power_w, 1)
    return Profile(f"{watt}W", watt, round(model.hashrate_ths * scale**HASHRATE_EXPONENT, 1))


def _pause_mode_problem(value: object) -> str | None:
    mode = value.get("mode") if isinstance(value, dict) else None
    if not isinstance(mode, dict) or len(mode) != 1:
        return "pause_mode.mode must be one of auto, manual"
    if "auto" in mode:
        return None
    manual = mode.get("manual")
    if not isinstance(manual, dict):
        return "pause_mode.mode must be one of auto, manual"
    ratio = manual.get("pause_cooldown_fan_speed_ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        # cooling.proto says the ratio is required in a request; unset is an error
        return "pause_cooldown_fan_speed_ratio must be a number in 0.0..1.0"
    runtime = manual.get("fan_pause_runtime")
    if runtime is None:
        manual["fan_pause_runtime"] = RUNTIME_INDEFINITE  # default_fan_pause_runtime
    elif runtime not in (RUNTIME_LIMITED, RUNTIME_INDEFINITE):
        return "fan_pause_runtime must be 1 (limited) or 2 (indefinite)"
    return None


# -- REST API v1 ---------------------------------------------------------------------------

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
                                "uid": "1",
                                "url": "stratum+tcp://pool.example:3333",
                                "user": f"farm.{d.serial[-4:]}",
                                "password": None,
                                "enabled": True,
                            }
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


# -- gRPC ----------------------------------------------------------------------------------

STALL_HOLD_S = 60.0


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative ints go out as two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def pb_uint(field: int, value: int) -> bytes:
    """A varint field; proto3 leaves out zeros."""
    return _varint(field << 3) + _varint(value) if value else b""


def pb_bool(field: int, value: bool) -> bytes:
    return pb_uint(field, int(value))


def pb_true(field: int) -> bytes:
    return pb_uint(field, 1)


def pb_double(field: int, value: float) -> bytes:
    return _varint(field << 3 | 1) + struct.pack("<d", value) if value else b""


def pb_bytes(field: int, data: bytes) -> bytes:
    """A length-delimited field; sub-messages always go out, as presence matters."""
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def pb_str(field: int, text: str) -> bytes:
    return pb_bytes(field, text.encode()) if text else b""


PbFields = dict[int, list[int | bytes]]


def pb_decode(data: bytes) -> PbFields:
    """Fields by number: varints as ints, everything else as bytes; ValueError if broken."""
    fields: PbFields = {}
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = data[i : i + size], i + size
        elif wire == 2:  # noqa: PLR2004 - protobuf wire type LEN
            size, i = _read_varint(data, i)
            value, i = data[i : i + size], i + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > len(data):
            raise ValueError("truncated field")
        fields.setdefault(number, []).append(value)
    return fields


def pb_int(fields: PbFields, number: int) -> int:
    values = fields.get(number)
    if not values:
        return 0
    value = values[-1]  # proto3: the last occurrence wins
    if not isinstance(value, int):
        raise ValueError(f"field {number} is not a varint")  # noqa: TRY004 - ValueError is the codec's
    return value


def pb_message(fields: PbFields, number: int) -> bytes:
    values = fields.get(number)
    if not values:
        return b""
    value = values[-1]
    if not isinstance(value, bytes):
        raise ValueError(f"field {number} is not length-delimited")  # noqa: TRY004
    return value


def pb_string(fields: PbFields, number: int) -> str:
    return pb_message(fields, number).decode()


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:  # noqa: PLR2004 - a varint has at most 10 bytes
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


class RawCodec(CodecBase):
    """Messages pass through as bytes; this module encodes and decodes them by hand."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:  # noqa: ANN401 - codec API
        del message_type
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:  # noqa: ANN401 - codec API
        del message_type
        return data


GrpcReply = Callable[[bytes], bytes]
V1 = "/braiins.bos.v1."


class GrpcSimServer:
    """The BOS+ gRPC endpoint pyasic drives, with refuse/stall/slow/garbage/lie/expiry."""

    def __init__(
        self,
        host: str,
        port: int,
        device: BraiinsDevice,
        fault: FaultState,
        *,
        rng: random.Random,
        observer: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.device = device
        self.fault = fault
        self.requests = 0
        self._rng = rng
        self._observer = observer
        self._server: Server | None = None
        private: dict[str, GrpcReply] = {
            "ActionsService/PauseMining": self._pause,
            "ActionsService/ResumeMining": self._resume,
            "ActionsService/GetLocateDeviceStatus": lambda _: b"",
            "PerformanceService/SetPowerTarget": self._set_power_target,
            "PerformanceService/GetActivePerformanceMode": self._performance_mode,
            "MinerService/GetMinerStats": self._stats,
            "MinerService/GetMinerDetails": self._details,
            "MinerService/GetHashboards": self._hashboards,
            "CoolingService/GetCoolingState": self._cooling_state,
            "ConfigurationService/GetMinerConfiguration": self._configuration,
            "PoolService/GetPoolGroups": self._pool_groups,
        }
        self._mapping: dict[str, Handler] = {
            "/braiins.bos.ApiVersionService/GetApiVersion": self._handler(
                "GetApiVersion", self._api_version, private=False
            ),
            f"{V1}AuthenticationService/Login": Handler(
                self._login, Cardinality.UNARY_UNARY, bytes, bytes
            ),
        }
        for path, reply in private.items():
            self._mapping[V1 + path] = self._handler(path.split("/")[1], reply, private=True)

    def __mapping__(self) -> dict[str, Handler]:
        return self._mapping

    async def start(self) -> None:
        if self._server is not None or self.fault.mode is Fault.REFUSE:
            return
        server = Server([self], codec=RawCodec())
        await server.start(self.host, self.port, reuse_address=True)
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def set_fault(self, mode: Fault, *, slow_s: float | None = None) -> None:
        self.fault.mode = mode
        if slow_s is not None:
            self.fault.slow_s = slow_s
        if mode is Fault.REFUSE:
            await self.stop()
        else:
            await self.start()

    # -- plumbing --------------------------------------------------------------------------

    def _handler(self, name: str, reply: GrpcReply, *, private: bool) -> Handler:
        async def handle(stream: Stream[bytes, bytes]) -> None:
            request = await self._receive(stream, name)
            if private:
                token = stream.metadata.get("authorization") if stream.metadata else None
                if not self.device.authorised(token if isinstance(token, str) else None):
                    raise GRPCError(
                        Status.UNAUTHENTICATED, "Missing or invalid authentication token"
                    )
            try:
                body = reply(request)
            except (ValueError, UnicodeDecodeError) as err:
                raise GRPCError(Status.INVALID_ARGUMENT, f"invalid request: {err}") from None
            await stream.send_message(self._garble(body))

        return Handler(handle, Cardinality.UNARY_UNARY, bytes, bytes)

    async def _receive(self, stream: Stream[bytes, bytes], name: str) -> bytes:
        self.requests += 1
        if self._observer is not None:
            self._observer(f"grpc {name}")
        request = await stream.recv_message() or b""
        if self.fault.mode is Fault.STALL:
            await asyncio.sleep(STALL_HOLD_S)
            raise GRPCError(Status.UNAVAILABLE, "stalled")
        if self.fault.mode is Fault.SLOW:
            await asyncio.sleep(self.fault.slow_s)
        return request

    def _garble(self, body: bytes) -> bytes:
        if self.fault.mode is not Fault.GARBAGE:
            return body
        # Valid gRPC framing around bytes that are no protobuf message (0xff: field 31, wire 7).
        return b"\xff" + bytes(
            self._rng.randrange(0, 256) for _ in range(self._rng.randrange(8, 40))
        )

    async def _login(self, stream: Stream[bytes, bytes]) -> None:
        request = await self._receive(stream, "Login")
        try:
            fields = pb_decode(request)
            username, password = pb_string(fields, 1), pb_string(fields, 2)
        except (ValueError, UnicodeDecodeError) as err:
            raise GRPCError(Status.INVALID_ARGUMENT, f"invalid request: {err}") from None
        token = self.device.login(username, password)
        if token is None:
            raise GRPCError(Status.UNAUTHENTICATED, "Bad credentials")
        # pyasic reads the token from here only, not from LoginResponse.token.
        await stream.send_initial_metadata(metadata={"authorization": token})
        body = pb_str(1, token) + pb_uint(2, self.device.timeout_s)
        await stream.send_message(self._garble(body))

    # -- messages (field numbers: bos-plus-api proto/bos/v1/*.proto) ------------------------

    def _api_version(self, _: bytes) -> bytes:
        major, minor, patch = API_VERSION
        return pb_uint(1, major) + pb_uint(2, minor) + pb_uint(3, patch)

    def _pause(self, _: bytes) -> bytes:
        return pb_bool(1, self.device.pause())  # PauseMiningResponse.already_paused

    def _resume(self, _: bytes) -> bytes:
        return pb_bool(1, self.device.resume())  # ResumeMiningResponse.already_mining

    def _set_power_target(self, request: bytes) -> bytes:
        fields = pb_decode(request)  # save_action=1 is accepted and ignored: always applied
        watt = pb_int(pb_decode(pb_message(fields, 2)), 1)
        error = self.device.set_power_target(watt)
        if error is not None:
            raise GRPCError(Status.INVALID_ARGUMENT, error)
        return pb_bytes(1, pb_uint(1, watt))  # SetPowerTargetResponse.power_target

    def _performance_mode(self, _: bytes) -> bytes:
        power = pb_bytes(1, pb_uint(1, self.device.target_w))  # PowerTargetMode.power_target
        return pb_bytes(2, pb_bytes(1, power))  # PerformanceMode.tuner_mode.power_target

    def _stats(self, _: bytes) -> bytes:
        d = self.device
        power = pb_bytes(1, pb_uint(1, d.power_w()))
        ghs = d.hashrate_ghs()
        efficiency = pb_bytes(2, pb_double(1, d.power_w() / (ghs / 1000) if ghs else 0.0))
        return (
            pb_bytes(1, pb_uint(1, d.accepted))  # pool_stats.accepted_shares
            + pb_bytes(2, _pb_work_stats(ghs, d.physics.profile.hashrate_ths * 1000))
            + pb_bytes(3, power + efficiency)  # power_stats
        )

    def _details(self, _: bytes) -> bytes:
        d = self.device
        name = d.model_name()
        identity = pb_uint(1, 1) + pb_str(3, name) + pb_str(4, name)  # brand ANTMINER
        version = pb_str(1, BOS_VERSION) + pb_str(2, "25.07") + pb_true(3)
        uptime = d.uptime_s()
        return b"".join(
            (
                pb_str(1, d.serial),
                pb_bytes(2, identity),
                pb_uint(3, 3),  # platform AM3_BBB
                pb_uint(4, 4),  # bos_mode NAND
                pb_bytes(5, version),
                pb_str(6, f"bos-{d.serial[-6:].lower()}"),
                pb_str(7, d.mac),
                pb_uint(8, uptime),
                pb_bytes(9, pb_double(1, d.physics.model.hashrate_ths * 1000)),
                pb_uint(10, uptime),
                pb_uint(11, uptime),
                pb_uint(12, d.status()),
                pb_str(13, "5.10.0"),
                pb_str(16, d.serial),
            )
        )

    def _hashboards(self, _: bytes) -> bytes:
        d = self.device
        boards = d.physics.model.boards
        per_board = d.hashrate_ghs() / boards
        nominal = d.physics.profile.hashrate_ths * 1000 / boards
        out = b""
        for i, (board, chip) in enumerate(zip(d.board_temps_c(), d.chip_temps_c(), strict=True)):
            sensor = pb_uint(2, 1) + pb_bytes(3, pb_double(1, chip))  # location CHIP
            out += pb_bytes(
                1,
                pb_str(1, str(i + 1))
                + pb_true(2)
                + pb_bytes(3, pb_uint(1, 126))  # chips_count: UInt32Value
                + pb_bytes(6, sensor)
                + pb_bytes(7, pb_double(1, board))
                + pb_bytes(8, _pb_work_stats(per_board, nominal)),
            )
        return out

    def _cooling_state(self, _: bytes) -> bytes:
        d = self.device
        ratio = d.fan_ratio(d.now())
        fans = b"".join(
            pb_bytes(
                1,
                _varint(1 << 3)
                + _varint(i)  # position is `optional`: sent even when 0
                + pb_uint(2, round(ratio * FAN_MAX_RPM))
                + pb_double(3, ratio),
            )
            for i in range(FANS)
        )
        hottest = pb_uint(2, 1) + pb_bytes(3, pb_double(1, max(d.chip_temps_c())))
        return fans + pb_bytes(2, hottest)

    def _configuration(self, _: bytes) -> bytes:
        d = self.device
        pool = (
            pb_str(1, "1")
            + pb_str(2, "stratum+tcp://pool.example:3333")
            + pb_str(3, f"farm.{d.serial[-4:]}")
            + pb_bytes(4, b"")  # password: optional, present and empty
            + pb_true(5)
        )
        group = (
            pb_str(1, "1") + pb_str(2, "Default") + pb_bytes(3, pb_uint(1, 1)) + pb_bytes(5, pool)
        )
        temps = b"".join(
            pb_bytes(n, pb_double(1, TEMPERATURES[key]["degree_c"]))
            for n, key in (
                (1, "target_temperature"),
                (2, "hot_temperature"),
                (3, "dangerous_temperature"),
            )
        )
        tuner = pb_true(1) + pb_uint(2, 1) + pb_bytes(3, pb_uint(1, d.target_w))
        ramping = pb_uint(4, d.quick_up_s) + pb_uint(5, d.quick_down_s)
        return (
            pb_bytes(1, group)
            + pb_bytes(2, pb_bytes(2, temps))  # temperature.auto
            + pb_bytes(3, tuner)
            + pb_bytes(5, ramping)  # hashboard_config quick ramping (API >= 1.7.0)
        )

    def _pool_groups(self, _: bytes) -> bytes:
        d = self.device
        stats = pb_uint(1, d.accepted)
        pool = (
            pb_str(1, "1")
            + pb_str(2, "stratum+tcp://pool.example:3333")
            + pb_str(3, f"farm.{d.serial[-4:]}")
            + pb_true(4)
            + pb_true(5)
            + pb_bool(6, not d.paused)
            + pb_bytes(7, stats)
        )
        group = pb_str(1, "Default") + pb_bytes(2, pb_uint(1, 1)) + pb_bytes(4, pool)
        return pb_bytes(1, group)


def _pb_work_stats(ghs: float, nominal_ghs: float) -> bytes:
    rate = pb_double(1, ghs)
    # RealHashrate last_5_s..last_1_m, since_restart: present even at 0 (pyasic needs last_5_s)
    real = b"".join(pb_bytes(n, rate) for n in (1, 2, 3, 4, 10))
    return pb_bytes(1, real) + pb_bytes(2, pb_double(1, nominal_ghs))


# -- 4028 (BOSminer CGMiner-style API) -----------------------------------------------------

CODE_VERSION = 22  # cgminer api.c message codes
CODE_SUMMARY = 11
CODE_DEVS = 9
CODE_DEVDETAILS = 69
CODE_FANS = 202  # (inferred) as LuxOS numbers its extensions
CODE_TEMPS = 201
CODE_TUNERSTATUS = 200  # (inferred)
CODE_PAUSE = 203  # (inferred)
CODE_RESUME = 204  # (inferred)


class BosminerApi:
    """The 4028 replies pyasic reads; pause/resume as legacy BOSminer offers them."""

    joinable = frozenset(
        {"version", "summary", "devs", "devdetails", "tunerstatus", "fans", "temps"}
    )

    def __init__(self, device: BraiinsDevice) -> None:
        self.device = device

    def handle(self, command: str, parameter: str | None) -> Reply:
        del parameter
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None or command.startswith("_"):
            return self.error(CODE_INVALID_COMMAND, "Invalid command")
        result: Reply = handler()
        return result

    def error(self, code: int, msg: str) -> Reply:
        return {"STATUS": [self._status(code, msg, "E")], "id": 1}

    def _cmd_version(self) -> Reply:
        return self._ok(
            CODE_VERSION,
            "BOSminer versions",
            "VERSION",
            [{"BOSminer": BOSMINER_VERSION, "API": "3.7"}],
        )

    def _cmd_devdetails(self) -> Reply:
        model = f"Bitmain {self.device.model_name()}"  # the factory strips "Bitmain "
        details = [
            {
                "DEVDETAILS": i,
                "Name": "BC5",
                "ID": i,
                "Driver": "bosminer",
                "Model": model,
                "Chips": 126,
            }
            for i in range(self.device.physics.model.boards)
        ]
        return self._ok(CODE_DEVDETAILS, "Device Details", "DEVDETAILS", details)

    def _cmd_summary(self) -> Reply:
        mhs = self.device.hashrate_ghs() * 1000
        summary = {
            "Elapsed": self.device.uptime_s(),
            "MHS 1m": mhs,
            "MHS 5s": mhs,
            "MHS 5m": mhs,
            "MHS av": mhs,
            "Accepted": self.device.accepted,
            "Rejected": 0,
            "Hardware Errors": 0,
        }
        return self._ok(CODE_SUMMARY, "Summary", "SUMMARY", [summary])

    def _cmd_devs(self) -> Reply:
        d = self.device
        mhs = d.hashrate_ghs() * 1000 / d.physics.model.boards
        devs = [
            {
                "ASC": i,
                "Name": "BC5",
                "ID": i,
                "Enabled": "Y",
                "Status": "Alive",
                "Temperature": temp,
                "MHS 5s": mhs,
                "MHS 1m": mhs,
                "MHS av": mhs,
            }
            for i, temp in enumerate(d.board_temps_c())
        ]
        return self._ok(CODE_DEVS, f"{len(devs)} ASC(s)", "DEVS", devs)

    def _cmd_tunerstatus(self) -> Reply:
        d = self.device
        chains = [
            {
                "HashchainIndex": i,
                "Status": "Stable" if not d.tuning() else "Tuning individual chips",
            }
            for i in range(d.physics.model.boards)
        ]
        status = {
            "PowerLimit": d.target_w,
            "ApproximateMinerPowerConsumption": d.power_w(),
            "TunerChainStatus": chains,
        }
        return self._ok(CODE_TUNERSTATUS, "Tuner Status", "TUNERSTATUS", [status])

    def _cmd_fans(self) -> Reply:
        ratio = self.device.fan_ratio(self.device.now())
        fans = [
            {"FAN": i, "ID": i, "RPM": round(ratio * FAN_MAX_RPM), "Speed": round(ratio * 100)}
            for i in range(FANS)
        ]
        return self._ok(CODE_FANS, f"{FANS} Fan(s)", "FANS", fans)

    def _cmd_temps(self) -> Reply:
        d = self.device
        temps = [
            {"TEMP": i, "ID": i, "Board": board, "Chip": chip}
            for i, (board, chip) in enumerate(zip(d.board_temps_c(), d.chip_temps_c(), strict=True))
        ]
        return self._ok(CODE_TEMPS, f"{len(temps)} Temp(s)", "TEMPS", temps)

    def _cmd_pause(self) -> Reply:
        self.device.pause()
        return self._ok(CODE_PAUSE, "Pause", "PAUSE", [{"PAUSE": True}])

    def _cmd_resume(self) -> Reply:
        self.device.resume()
        return self._ok(CODE_RESUME, "Resume", "RESUME", [{"RESUME": True}])

    def _status(self, code: int, msg: str, status: str = "S") -> dict[str, Any]:
        return {
            "STATUS": status,
            "When": int(self.device.now()),
            "Code": code,
            "Msg": msg,
            "Description": f"BOSminer bosminer-plus-tuner {BOSMINER_VERSION}",
        }

    def _ok(self, code: int, msg: str, section: str, data: list[dict[str, Any]]) -> Reply:
        return {"STATUS": [self._status(code, msg)], section: data, "id": 1}


# -- the family ----------------------------------------------------------------------------


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
