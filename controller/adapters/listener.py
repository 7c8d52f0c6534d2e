"""What curtaild's two HTTP listeners share: serving (TLS or plain, the bound port, the
warning for plain HTTP off loopback), RFC 9457 problem documents, and a last net that
turns a handler's bug into one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from controller.tls import ServerTls, is_loopback

log = structlog.get_logger("curtaild.listener")

SHUTDOWN_TIMEOUT_S = 5.0


def problem(
    status: int,
    detail: str,
    titles: Mapping[int, str],
    field_name: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> web.Response:
    """An RFC 9457 problem document; `titles` by status are the listener's own words;
    `extra`: extension members (a schedule's row)."""
    title = titles.get(status, "error")
    body: dict[str, object] = {
        **(extra or {}),
        "type": f"urn:curtaild:problem:{title.replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if field_name is not None:
        body["field"] = field_name
    response = web.Response(
        status=status, text=json.dumps(body), content_type="application/problem+json"
    )
    if status == 401:  # noqa: PLR2004
        response.headers["WWW-Authenticate"] = 'Bearer realm="curtaild"'
    return response


def contained(
    titles: Mapping[int, str], known: Callable[[Exception], web.Response | None] | None = None
) -> Middleware:
    """Middleware: aiohttp's own errors (404, 405, 413) and any bug in a handler answer a
    problem document, never a plain-text page; `known` answers the listener's own errors
    (None: not one of them)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as err:
            if err.status < 400:  # noqa: PLR2004 - redirects and the like pass as they are
                raise
            return problem(err.status, err.reason or titles.get(err.status, "error"), titles)
        except Exception as err:  # one request must not take the listener down
            answer = known(err) if known is not None else None
            if answer is not None:
                return answer
            log.exception("request failed", path=request.path, error=repr(err))
            return problem(500, f"internal error ({type(err).__name__}); nothing changed", titles)

    return middleware


async def security_headers(_: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Content-Type-Options"] = "nosniff"  # a problem is never run as HTML
    response.headers.setdefault("Referrer-Policy", "no-referrer")


class Listener:
    """One aiohttp application on its own host:port, TLS where configured."""

    def __init__(
        self,
        name: str,
        title: str,
        host: str,
        port: int,
        *,
        tls: ServerTls | None,
        exposed_warning: str,
    ) -> None:
        """`name`: the config's (signals.http, api); `title`: what logs call it."""
        self._name = name
        self._title = title
        self._listening = f"{title} listening"  # the event name operators grep for
        self._host = host
        self._port = port
        self._tls = tls
        self._exposed_warning = exposed_warning
        self.port: int | None = None  # the bound port (config may say 0)
        self.started = asyncio.Event()

    async def serve(
        self, app: web.Application, on_close: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Until cancelled. `on_close` runs before the listener closes (streams end)."""
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            context = self._tls.context if self._tls is not None else None
            site = web.TCPSite(runner, self._host, self._port, ssl_context=context)
            await site.start()
            server = site._server  # noqa: SLF001 - aiohttp exposes no public bound address
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1] if sockets else self._port
            log.info(
                self._listening,
                host=self._host,
                port=self.port,
                tls=context is not None,
            )
            if context is None and not is_loopback(self._host):
                log.warning(
                    "plain HTTP on a non-loopback address (allow_plaintext: true): what it "
                    "carries crosses the network unencrypted",
                    carries=self._exposed_warning,
                    listener=self._name,
                    host=self._host,
                    port=self.port,
                )
            self.started.set()
            await asyncio.Event().wait()
        finally:
            if on_close is not None:
                await on_close()
            await runner.cleanup()
