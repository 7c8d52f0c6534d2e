"""An HTTP API server for one simulated device (Braiins OS+ REST, Antminer CGI), with faults.

Wire faults map onto HTTP the way real firmware fails: refuse (nothing listens), stall
(the request is read, no reply ever comes), slow, garbage (a body that is not what the API
serves), quirks (JSON with the malformations cgminer-family firmware emits), truncate (a
Content-Length the body never reaches), no-close (a chunked reply that never ends).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from aiohttp import web

from sim.cgminer_server import quirk
from sim.faults import Fault, FaultState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STALL_HOLD_S = 60.0


class HttpSimServer:
    """Serves `app` on host:port; `set_fault` changes behaviour live."""

    def __init__(
        self,
        host: str,
        port: int,
        app: web.Application,
        fault: FaultState,
        *,
        rng: random.Random | None = None,
        observer: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.fault = fault
        self.requests = 0
        self._rng = rng or random.Random(f"{host}:{port}")  # noqa: S311 - not crypto
        self._observer = observer
        app.middlewares.append(self._faults)
        # A stalled request must not hold a farm's shutdown for its whole stall.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        self._site: web.TCPSite | None = None
        self._set_up = False

    async def start(self) -> None:
        if self.fault.mode is Fault.REFUSE or self._site is not None:
            return
        if not self._set_up:
            await self._runner.setup()
            self._set_up = True
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()

    async def stop(self) -> None:
        """Stop listening and drop open keep-alive connections: a device that refuses
        connections does not keep answering on old ones."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._runner.server
        if server is not None:
            for connection in list(server.connections):
                connection.force_close()

    async def close(self) -> None:
        await self.stop()
        if self._set_up:
            await self._runner.cleanup()
            self._set_up = False

    async def set_fault(self, mode: Fault, *, slow_s: float | None = None) -> None:
        self.fault.mode = mode
        if slow_s is not None:
            self.fault.slow_s = slow_s
        if mode is Fault.REFUSE:
            await self.stop()
        else:
            await self.start()

    def _refuse_if_dark(self, request: web.Request) -> None:
        """An outlet cut or a unit still booting has no web server to answer."""
        if self.fault.dark():
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests += 1
        if self._observer is not None:
            self._observer(f"{request.method} {request.path}")
        self._refuse_if_dark(request)
        mode = self.fault.mode
        if mode is Fault.STALL:
            await asyncio.sleep(STALL_HOLD_S)
            raise web.HTTPServiceUnavailable
        if mode is Fault.SLOW:
            await asyncio.sleep(self.fault.slow_s)
        if mode is Fault.GARBAGE:
            junk = bytes(self._rng.randrange(1, 256) for _ in range(self._rng.randrange(8, 64)))
            return web.Response(body=junk, content_type="application/json")
        response = await handler(request)
        if mode not in (Fault.QUIRKS, Fault.TRUNCATE, Fault.NO_CLOSE):
            return response
        if not isinstance(response, web.Response) or response.body is None:
            return response
        body = bytes(response.body)  # type: ignore[arg-type]
        if mode is Fault.QUIRKS:
            response.body = quirk(body)
            return response
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        stream = web.StreamResponse(status=response.status, headers=headers)
        if mode is Fault.TRUNCATE:
            stream.content_length = len(body)
            await stream.prepare(request)
            await stream.write(body[: max(1, len(body) // 2)])
            if request.transport is not None:
                request.transport.close()  # the promised rest never comes
            return stream
        stream.enable_chunked_encoding()  # NO_CLOSE: the reply starts and never ends
        await stream.prepare(request)
        await stream.write(body)
        await asyncio.sleep(STALL_HOLD_S)
        return stream
