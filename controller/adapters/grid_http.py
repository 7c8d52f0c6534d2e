"""The signed grid-signal endpoint: POST /grid/v1/signals (and GET /healthz).

Answers per the contract: 202 received, 200 duplicate, 400 invalid, 401 bad signature or
timestamp, 409 stale revision, 413 oversized body; errors as application/problem+json.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from aiohttp import ClientError, web
from aiohttp.typedefs import Handler

from controller.intake.inbox import Inbox
from controller.intake.wire import MAX_BODY_BYTES, SIGNATURE_HEADER, TIMESTAMP_HEADER
from controller.tls import ServerTls, is_loopback

log = structlog.get_logger("curtaild.grid_http")

PROBLEM_TITLES = {
    400: "invalid signal",
    401: "unauthenticated signal",
    409: "conflicting revision",
    404: "not found",
    405: "method not allowed",
    413: "body too large",
    500: "internal error",
    503: "journal unavailable",
}
SHUTDOWN_TIMEOUT_S = 5.0


def problem(status: int, detail: str) -> web.Response:
    """An RFC 9457 problem document."""
    title = PROBLEM_TITLES.get(status, "error")
    body = {
        "type": f"urn:curtaild:problem:{title.replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/problem+json"
    )


@web.middleware
async def _contained(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A bug in a handler answers a problem document, never aiohttp's plain-text 500 page
    (the inbox contains and journals the signal's own failures before this)."""
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status < 400:  # noqa: PLR2004 - redirects and the like pass as they are
            raise
        return problem(err.status, err.reason or PROBLEM_TITLES.get(err.status, "error"))
    except Exception as err:  # one request must not take the listener down
        log.exception("grid request failed", path=request.path, error=repr(err))
        return problem(500, f"internal error ({type(err).__name__}); nothing changed")


class GridHttp:
    """Serves the grid endpoint on its own listener."""

    def __init__(self, inbox: Inbox, host: str, port: int, *, tls: ServerTls | None = None) -> None:
        self._inbox = inbox
        self._host = host
        self._port = port
        self._tls = tls
        self.port: int | None = None  # the bound port (config may say 0)
        self.dropped = 0  # requests whose client left mid-body
        self.started = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_contained])
        app.router.add_post("/grid/v1/signals", self._post_signal)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def run(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            context = self._tls.context if self._tls is not None else None
            site = web.TCPSite(runner, self._host, self._port, ssl_context=context)
            await site.start()
            server = site._server  # noqa: SLF001 - aiohttp exposes no public bound address
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1] if sockets else self._port
            log.info(
                "grid endpoint listening", host=self._host, port=self.port, tls=context is not None
            )
            if context is None and not is_loopback(self._host):
                log.warning(
                    "plain HTTP on a non-loopback address (allow_plaintext: true): signals "
                    "and their signatures cross the network unencrypted",
                    listener="signals.http",
                    host=self._host,
                    port=self.port,
                )
            self.started.set()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    async def _post_signal(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            refused = self._inbox.submit_oversized(request.content_length)
            return problem(refused.http_status, refused.detail)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            refused = self._inbox.submit_oversized(None)
            return problem(refused.http_status, refused.detail)
        except (ConnectionError, ClientError, asyncio.IncompleteReadError):
            # The client went away mid-body: there is no one to answer, and anyone can do
            # this, so it is counted, not logged each time.
            self.dropped += 1
            log.debug("grid request dropped mid-body", dropped=self.dropped)
            return problem(400, "the request body was cut off")
        outcome = self._inbox.submit_http(
            body, request.headers.get(TIMESTAMP_HEADER), request.headers.get(SIGNATURE_HEADER)
        )
        if outcome.http_status >= 400:  # noqa: PLR2004
            return problem(outcome.http_status, outcome.detail)
        reply: dict[str, Any] = {
            "id": outcome.signal_id,
            "revision": outcome.revision,
            "status": outcome.status,
            "detail": outcome.detail,
        }
        return web.json_response(reply, status=outcome.http_status)

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})
