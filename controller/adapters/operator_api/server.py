"""The operator API, the dashboard and /metrics, on one aiohttp listener.

Bearer tokens are looked up by their SHA-256 (the config holds nothing else). Errors are
RFC 9457 problem documents; an auth failure says no more than that it failed. The API
never touches hardware and never reaches into the loop: it reads the site's read model
(SiteFeed) and the readings, and hands changes to the operator's desk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from controller.adapters import listener
from controller.adapters.metrics import Metrics
from controller.adapters.operator_api import models as m
from controller.adapters.operator_api import views
from controller.adapters.operator_api.common import TITLES, ProblemError, problem
from controller.adapters.operator_api.openapi import docs_page, openapi_document
from controller.adapters.operator_api.routes import ROUTES, Route
from controller.clock import Clock
from controller.config import ApiCfg
from controller.core.model import Limit
from controller.intake.desk import Desk, OperatorError, Principal, Role
from controller.intake.inbox import Inbox, Outcome
from controller.intake.schedule import ScheduleError
from controller.record.compliance import ComplianceSource
from controller.record.journal import Journal, JournalError
from controller.record.site import MinerViews, SiteFeed, SiteView
from controller.tls import ServerTls

log = structlog.get_logger("curtaild.api")


class OptOutDoor(Protocol):
    """The VEN's opt-out, as the API needs it (raises openadr_desk.OptOutError)."""

    def opt_out(self, event_id: str, reason: str, *, by: str) -> Outcome: ...


MAX_BODY_BYTES = 16 * 1024
STREAM_WRITE_TIMEOUT_S = 5.0
BODY_TIMEOUT_S = 30.0  # 64 KiB on the slowest link a farm has is seconds; this is a stall
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)

_M = TypeVar("_M", bound=BaseModel)
NextHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OperatorApi:
    """Serves the operator API for one daemon."""

    def __init__(
        self,
        *,
        feed: SiteFeed,
        desk: Desk,
        readings: MinerViews,
        journal: Journal,
        clock: Clock,
        cfg: ApiCfg,
        grid_limit: Callable[[datetime], Limit],
        metrics: Metrics | None = None,
        stale_after: timedelta,
        stall_after_s: float,
        history_interval_s: float,
        tls: ServerTls | None = None,
        compliance: ComplianceSource | None = None,
        openadr: OptOutDoor | None = None,
        inbox: Inbox | None = None,
        site_cap_w: int | None = None,
    ) -> None:
        """`compliance`: the energy account's figures for /api/v1/compliance (None: that
        endpoint answers 503). A plain attribute, so the daemon can set it once built."""
        self.feed = feed
        self.inbox = inbox  # auction schedules go in here (None: uploads are refused)
        self.site_cap_w = site_cap_w
        self.desk = desk
        self.readings = readings
        self.miners = frozenset(v.spec.id for v in readings.views())
        self.journal = journal
        self.metrics = metrics
        self.stale_after = stale_after  # a reading older than this is unknown
        self.stall_after_s = stall_after_s  # no cycle finished this long: the loop is stuck
        self.history_interval_s = history_interval_s
        self.compliance = compliance
        self.openadr = openadr  # the OpenADR VEN, for an operator's opt-out (None: not a VEN)
        self.compliance_lock = asyncio.Lock()
        self.compliance_stuck: asyncio.Future[Any] | None = None  # a read that timed out
        self._clock = clock
        self._grid_limit = grid_limit
        self._cfg = cfg
        self._tokens = {t.sha256: Principal(t.name, Role.named(t.role)) for t in cfg.tokens}
        self.streams: set[web.StreamResponse] = set()
        self._status: tuple[SiteView, bytes] | None = None  # the latest view, serialized
        self.openapi = openapi_document(
            ROUTES, frozenset({"/metrics"}) if cfg.metrics_public else frozenset()
        )
        self.docs = docs_page(self.openapi)
        self.listener = listener.Listener(
            "api",
            "operator API",
            cfg.host,
            cfg.port,
            tls=tls,
            exposed_warning="tokens and site data",
        )

    @property
    def port(self) -> int | None:
        return self.listener.port

    @property
    def started(self) -> asyncio.Event:
        return self.listener.started

    # -- serving ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_BODY_BYTES,
            middlewares=[listener.contained(TITLES, _known), self._authenticate],
        )
        for route in ROUTES:
            app.router.add_route(route.method, route.path, self._bind(route))
        app.on_response_prepare.append(listener.security_headers)
        return app

    def _bind(self, route: Route) -> NextHandler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await route.handler(self, request)

        handle.route = route  # type: ignore[attr-defined]  # read by _authenticate
        return handle

    async def run(self) -> None:
        await self.listener.serve(self.app(), self._close_streams)

    async def _close_streams(self) -> None:
        for stream in list(self.streams):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.write_eof(), STREAM_WRITE_TIMEOUT_S)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: NextHandler) -> web.StreamResponse:
        route: Route | None = getattr(handler, "route", None)
        role = route.role if route is not None else None
        if route is not None and route.path == "/metrics" and self._cfg.metrics_public:
            role = None
        if role is None:
            return await handler(request)
        principal = self._principal(request.headers.get("Authorization", ""))
        if principal is None:
            # The same answer for a missing, malformed or unknown token: nothing to probe.
            return problem(401, "a valid bearer token is required")
        if principal.role < role:
            return problem(403, f"this needs the {role.name.lower()} role")
        request[PRINCIPAL] = principal
        return await handler(request)

    def _principal(self, header: str) -> Principal | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            digest = hashlib.sha256(token.strip().encode()).hexdigest()
        except UnicodeEncodeError:  # bytes that are no text cannot be one of our tokens
            return None
        found = None
        for known, principal in self._tokens.items():  # every entry: no timing hint
            if hmac.compare_digest(known, digest):
                found = principal
        return found

    # -- what handlers use -----------------------------------------------------------------

    def now(self) -> datetime:
        return self._clock.now()

    def grid_limit(self) -> Limit:
        return self._grid_limit(self.now())

    @staticmethod
    def principal(request: web.Request) -> Principal:
        return request[PRINCIPAL]

    def view(self) -> SiteView:
        view = self.feed.latest
        if view is None:
            raise ProblemError(503, "starting: the first telemetry is not in yet")
        return view

    def status_json(self) -> bytes:
        """The status, serialized once per view however many read it."""
        view = self.view()
        if self._status is None or self._status[0] is not view:
            self._status = (view, views.status(view).model_dump_json().encode())
        return self._status[1]

    def miner(self, miner_id: str) -> m.MinerOut:
        view = self.readings.view(miner_id)
        return views.miner(
            view, self.desk.holds.get(miner_id), self.now(), self.stale_after, self.view().pools
        )

    @staticmethod
    async def body(request: web.Request, model: type[_M]) -> _M:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ProblemError(413, f"the body exceeds {MAX_BODY_BYTES} bytes") from None
        if not raw:
            raise ProblemError(400, "a JSON body is required", "body")
        try:
            return model.model_validate_json(raw)
        except ValidationError as err:
            raise _invalid(err) from None

    @staticmethod
    async def raw(request: web.Request, limit: int) -> bytes:
        """The body as it came, up to `limit` bytes (above the API's own limit for JSON
        bodies: a month's schedule); 413 beyond it, read no further."""
        size = request.content_length
        if size is not None and size > limit:
            raise ProblemError(413, f"the body is {size} bytes; the limit is {limit}", "body")
        chunks: list[bytes] = []
        total = 0
        try:
            # A client that stops sending is dropped, not waited on (a slowloris).
            async with asyncio.timeout(BODY_TIMEOUT_S):
                async for chunk in request.content.iter_any():
                    total += len(chunk)
                    if total > limit:
                        raise ProblemError(413, f"the body exceeds {limit} bytes", "body")
                    chunks.append(chunk)
        except TimeoutError:
            raise ProblemError(
                408, f"the body did not arrive within {BODY_TIMEOUT_S:g} s", "body"
            ) from None
        return b"".join(chunks)

    @staticmethod
    def json(model: BaseModel, status: int = 200) -> web.Response:
        return web.Response(
            status=status, text=model.model_dump_json(), content_type="application/json"
        )


def _known(err: Exception) -> web.Response | None:
    """The API's own errors, as problem documents."""
    if isinstance(err, ProblemError):
        return problem(err.status, err.detail, err.field)
    if isinstance(err, OperatorError):
        return problem(err.status, err.detail, err.field)
    if isinstance(err, ScheduleError):
        return problem(err.status, err.detail, err.field, err.extra())
    if isinstance(err, JournalError):
        log.warning("journal write failed; change refused", error=str(err))
        return problem(503, "the journal cannot be written; nothing was changed")
    return None


def _invalid(err: ValidationError) -> ProblemError:
    first = err.errors()[0]
    where = _field(first)
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return ProblemError(400, f"{where}: {first['msg']}{more}", where)


def _field(error: Mapping[str, object]) -> str:
    loc = error.get("loc", ())
    return ".".join(str(p) for p in loc) if isinstance(loc, tuple) and loc else "body"
