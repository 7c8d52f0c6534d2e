"""The signed grid-signal endpoint: POST /grid/v1/signals (and GET /healthz).

Answers per the contract: 202 received, 200 duplicate, 400 invalid, 401 bad signature or
timestamp, 409 stale revision, 413 oversized body; errors as application/problem+json.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import ClientError, web

from controller.adapters import listener
from controller.intake.inbox import Inbox
from controller.intake.wire import MAX_BODY_BYTES, SIGNATURE_HEADER, TIMESTAMP_HEADER
from controller.tls import ServerTls

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


def problem(status: int, detail: str) -> web.Response:
    return listener.problem(status, detail, PROBLEM_TITLES)


class GridHttp:
    """Serves the grid endpoint on its own listener."""

    def __init__(self, inbox: Inbox, host: str, port: int, *, tls: ServerTls | None = None) -> None:
        self._inbox = inbox
        self.listener = listener.Listener(
            "signals.http",
            "grid endpoint",
            host,
            port,
            tls=tls,
            exposed_warning="signals and their signatures",
        )
        self.dropped = 0  # requests whose client left mid-body

    @property
    def port(self) -> int | None:
        return self.listener.port

    @property
    def started(self) -> asyncio.Event:
        return self.listener.started

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[listener.contained(PROBLEM_TITLES)]
        )
        app.router.add_post("/grid/v1/signals", self._post_signal)
        app.router.add_get("/healthz", self._healthz)
        app.on_response_prepare.append(listener.security_headers)
        return app

    async def run(self) -> None:
        await self.listener.serve(self.app())

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
