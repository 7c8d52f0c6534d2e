"""A stock Antminer's web CGI, behind lighttpd's HTTP Digest (sim.antminer_stock.digest).
`set_miner_conf.cgi` takes the browser's JSON and restarts bmminer; it answers only after
the restart, 20-30 s on real units, here after `conf_reply_delay_s` of wall time, short by
default so tests stay fast.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sim.antminer_stock.firmware import BAD_DATA_REPLY, StockFirmware
from sim.faults import FaultState
from sim.http_server import Handler, HttpSimServer


class CgiApi(StockFirmware):
    """The web CGI's routes over the firmware state, every one behind Digest auth."""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.track])
        app.router.add_get("/", self._index)
        app.router.add_get("/cgi-bin/get_miner_conf.cgi", self._get_miner_conf)
        app.router.add_post("/cgi-bin/set_miner_conf.cgi", self._set_miner_conf)
        app.router.add_get("/cgi-bin/stats.cgi", self._stats_cgi)
        app.router.add_get("/cgi-bin/summary.cgi", self._summary_cgi)
        app.router.add_get("/cgi-bin/get_system_info.cgi", self._system_info)
        app.router.add_get("/cgi-bin/get_blink_status.cgi", self._blink_status)
        return app

    @web.middleware
    async def track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Outermost: count requests in flight and keep their tasks for cancel_serving."""
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1
            self._serving.discard(task)

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every path is behind Digest auth (lighttpd protects `/` too)."""
        refusal = self.auth.check(request)
        if refusal is not None:
            return refusal
        return await handler(request)

    def cancel_serving(self) -> list[asyncio.Task[Any]]:
        """End requests still being served: a stalled reply holds its handler for a
        minute, and aiohttp's shutdown would wait that long for it."""
        tasks = list(self._serving)
        for task in tasks:
            task.cancel()
        return tasks

    async def _index(self, _: web.Request) -> web.Response:
        return web.Response(text="<html><body>Antminer</body></html>", content_type="text/html")

    async def _get_miner_conf(self, _: web.Request) -> web.Response:
        if self.conf_error_status is not None:
            return web.Response(status=self.conf_error_status, text="")
        return _json(self.conf)

    async def _set_miner_conf(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        reply = self._apply(body) if isinstance(body, dict) else BAD_DATA_REPLY
        # The real CGI restarts bmminer, then sleeps before answering; the write stands
        # even if the client has given up by then.
        await asyncio.sleep(self.conf_reply_delay_s)
        return _json(reply)

    async def _stats_cgi(self, _: web.Request) -> web.Response:
        now = self._now()
        stats: list[dict[str, Any]] = []
        if not self.restarting():
            chains = self._chains(now)
            ghs = sum(c["rate"] for c in chains)
            ideal = self.physics.profile.hashrate_ths * 1000
            stats.append(
                {
                    **self._rates(now, ghs, ideal),
                    "chain_num": len(chains),
                    "fan_num": 4,
                    "fan": [self._fan_rpm()] * 4,
                    "hwp_total": 0.0,
                    "miner-mode": self.runtime_mode,  # the runtime mode (asic-rs #245)
                    "chain": [
                        {
                            "index": i,
                            "freq_avg": c["freq"],
                            "rate_ideal": round(ideal / len(chains), 2),
                            "rate_real": round(c["rate"], 2),
                            "asic_num": c["acn"],
                            "temp_pic": c["pic"],
                            "temp_pcb": c["pcb"],
                            "temp_chip": c["chip"],
                            "hw": 0,
                            "sn": f"{self.serial}{i:02d}",
                            "hwp": 0.0,
                        }
                        for i, c in enumerate(chains)
                    ],
                }
            )
        # While bmminer restarts the CGI has nothing to relay (inferred; Tether's mock
        # answers an empty STATS while asleep).
        return _json({"STATUS": self._web_status("stats"), "INFO": self._info(), "STATS": stats})

    async def _summary_cgi(self, _: web.Request) -> web.Response:
        now = self._now()
        summary: list[dict[str, Any]] = []
        if not self.restarting():
            ghs = self.physics.hashrate_ths(now) * 1000
            ideal = self.physics.profile.hashrate_ths * 1000
            ok = [
                {"type": kind, "status": "s", "code": 0, "msg": ""}
                for kind in ("rate", "network", "fans", "temp")
            ]
            summary.append(
                {
                    **self._rates(now, ghs, ideal),
                    "hw_all": 0,
                    "bestshare": 0,
                    "status": ok,
                }
            )
        return _json(
            {"STATUS": self._web_status("summary"), "INFO": self._info(), "SUMMARY": summary}
        )

    async def _system_info(self, _: web.Request) -> web.Response:
        return _json(
            {
                "minertype": self.physics.model.name,
                "nettype": "DHCP",
                "netdevice": "eth0",
                "macaddr": self.mac,
                "hostname": "Antminer",
                "ipaddress": "",
                "netmask": "255.255.255.0",
                "gateway": "",
                "dnsservers": "",
                "system_mode": "GNU/Linux",
                "system_kernel_version": "Linux 4.6.0-xilinx-g03c746f7 #2 SMP PREEMPT",
                "system_filesystem_version": self.build.compile_time,
                "firmware_type": "Release",
                "serinum": self.serial,
            }
        )

    async def _blink_status(self, _: web.Request) -> web.Response:
        return _json({"blink": False})

    def _rates(self, now: float, ghs: float, ideal: float) -> dict[str, Any]:
        """The head of a stats.cgi or summary.cgi entry: uptime and hashrates."""
        return {
            "elapsed": int(now - self._started),
            "rate_5s": round(ghs, 2),
            "rate_30m": round(ghs, 2),
            "rate_avg": round(ghs, 2),
            "rate_ideal": round(ideal, 2),
            "rate_unit": "GH/s",
        }

    def _info(self) -> dict[str, str]:
        return {
            "miner_version": self.build.miner,
            "CompileTime": self.build.compile_time,
            "type": self.physics.model.name,
        }

    def _web_status(self, msg: str) -> dict[str, Any]:
        return {"STATUS": "S", "when": int(self._now()), "Msg": msg, "api_version": "1.0.0"}


class StockCgiServer(HttpSimServer):
    """The CGI endpoint: HttpSimServer's wire faults, and a stop that does not wait out a
    stalled reply."""

    def __init__(
        self,
        host: str,
        port: int,
        app: web.Application,
        fault: FaultState,
        *,
        device: CgiApi,
        rng: random.Random | None = None,
        observer: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(host, port, app, fault, rng=rng, observer=observer)
        self._device = device

    async def stop(self) -> None:
        cancelled = self._device.cancel_serving()
        if cancelled:
            await asyncio.wait(cancelled, timeout=1.0)
        await super().stop()


def _json(data: object) -> web.Response:
    return web.Response(text=json.dumps(data, separators=(",", ":")), content_type="text/plain")
