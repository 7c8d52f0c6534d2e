"""The operator API, the dashboard and /metrics, on one aiohttp listener.

Every route is declared once in ROUTES, with the role it needs and the pydantic models it
reads and answers with; the router and /openapi.json are both built from that table, so the
document cannot drift from the handlers. Bearer tokens are looked up by their SHA-256 (the
config holds nothing else). Errors are RFC 9457 problem documents; an auth failure says no
more than that it failed. The API never touches hardware: changes go to the operator's desk,
which journals them and nudges the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema

from controller.adapters import api_models as m
from controller.core.model import MinerView, estimate_w, fleet_mode, tally
from controller.core.operator import Hold, HoldMode
from controller.core.signals import Curtailment, Grant, ObligationStatus, curtailment_active
from controller.intake.desk import (
    Desk,
    OperatorError,
    Principal,
    Role,
)
from controller.loop.supervisor import HISTORY_INTERVAL
from controller.record.journal import JournalError
from controller.record.report import ReportError, render, signal_history
from controller.tls import ServerTls

if TYPE_CHECKING:
    from controller.app import Daemon
    from controller.config import ApiCfg

log = structlog.get_logger("curtaild.api")

MAX_BODY_BYTES = 16 * 1024
SHUTDOWN_TIMEOUT_S = 5.0
STREAM_INTERVAL_S = 1.0  # a status message a second: the dashboard's live view
STREAM_WRITE_TIMEOUT_S = 5.0  # a reader that stops reading is dropped, not waited on
MAX_PAGE = 1000
MAX_STREAMS = 16  # live dashboards at once: each costs the loop a fleet walk a second
MAX_OFFSET = 10**9
MAX_SEQ = 2**62  # SQLite's rowid is a signed 64-bit integer
STATIC = Path(__file__).parent / "dashboard"
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# The page loads only its own files and talks only to this listener; the docs page has
# no script at all.
DASHBOARD_CSP = (
    "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
DOCS_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
VERSION = "1.0.0"

_M = TypeVar("_M", bound=BaseModel)
REASON: TypeAdapter[str] = TypeAdapter(m.Reason)
Answer = type[BaseModel] | str | tuple[type[BaseModel] | str, ...] | None
Handler = Callable[["OperatorApi", web.Request], Awaitable[web.StreamResponse]]


# -- problems ------------------------------------------------------------------------------

TITLES = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "body too large",
    415: "unsupported media type",
    422: "refused",
    503: "unavailable",
}


def problem(status: int, detail: str, field_name: str | None = None) -> web.Response:
    title = TITLES.get(status, "error")
    body = m.Problem(
        type=f"urn:curtaild:problem:{title.replace(' ', '-')}",
        title=title,
        status=status,
        detail=detail,
        field=field_name,
    )
    response = web.Response(
        status=status,
        text=body.model_dump_json(exclude_none=True),
        content_type="application/problem+json",
    )
    if status == 401:  # noqa: PLR2004
        response.headers["WWW-Authenticate"] = 'Bearer realm="curtaild"'
    return response


class ProblemError(Exception):
    def __init__(self, status: int, detail: str, field_name: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field = status, detail, field_name


def _field(error: Mapping[str, Any]) -> str:
    return ".".join(str(p) for p in error.get("loc", ())) or "body"


def _invalid(err: ValidationError) -> ProblemError:
    first = err.errors()[0]
    where = _field(first)
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return ProblemError(400, f"{where}: {first['msg']}{more}", where)


# -- the route table ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    description: str
    schema: dict[str, Any]
    required: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    role: Role | None  # None: no token needed
    body: type[BaseModel] | None = None
    # Per status: a model (JSON), a media type, both, or None (no body).
    answers: Mapping[int, Answer] = field(default_factory=dict)
    query: Sequence[Query] = ()
    tag: str = "status"


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _kw(watts: int | None) -> float | None:
    return None if watts is None else round(watts / 1000, 3)


class OperatorApi:
    """Serves the operator API for one daemon."""

    def __init__(
        self, daemon: Daemon, desk: Desk, cfg: ApiCfg, *, tls: ServerTls | None = None
    ) -> None:
        self._daemon = daemon
        self._desk = desk
        self._cfg = cfg
        self._tls = tls
        self._tokens = {t.sha256: Principal(t.name, Role.named(t.role)) for t in cfg.tokens}
        self.port: int | None = None
        self.started = asyncio.Event()
        self._streams: set[web.StreamResponse] = set()
        self._message: tuple[float, bytes] | None = None  # (loop time, the SSE message)
        self._stale_after = daemon.loaded.plan_rules().stale_after
        # A loop that has not finished a cycle in this long is stuck (the watchdog's view).
        self._stall_after_s = max(10.0, 10 * daemon.loaded.config.control.tick_s)
        self.openapi = openapi_document(
            ROUTES, frozenset({"/metrics"}) if cfg.metrics_public else frozenset()
        )

    # -- serving ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[self._errors, self._authenticate]
        )
        for route in ROUTES:
            app.router.add_route(route.method, route.path, self._bind(route))
        app.on_response_prepare.append(_security_headers)
        return app

    def _bind(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await route.handler(self, request)

        handle.route = route  # type: ignore[attr-defined]  # read by _authenticate
        return handle

    async def run(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            context = self._tls.context if self._tls is not None else None
            site = web.TCPSite(runner, self._cfg.host, self._cfg.port, ssl_context=context)
            await site.start()
            server = site._server  # noqa: SLF001 - aiohttp exposes no public bound address
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1] if sockets else self._cfg.port
            log.info(
                "operator API listening",
                host=self._cfg.host,
                port=self.port,
                tls=context is not None,
            )
            if context is None and self._cfg.plaintext_exposed:
                log.warning(
                    "plain HTTP on a non-loopback address (allow_plaintext: true): tokens "
                    "and site data cross the network unencrypted",
                    listener="api",
                    host=self._cfg.host,
                    port=self.port,
                )
            self.started.set()
            await asyncio.Event().wait()
        finally:
            for stream in list(self._streams):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(stream.write_eof(), STREAM_WRITE_TIMEOUT_S)
            await runner.cleanup()

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ProblemError as err:
            return problem(err.status, err.detail, err.field)
        except OperatorError as err:
            return problem(err.status, err.detail, err.field)
        except JournalError as err:
            log.exception("journal write failed; change refused", error=str(err))
            return problem(503, "the journal cannot be written; nothing was changed")
        except web.HTTPRequestEntityTooLarge:
            return problem(413, f"the body exceeds {MAX_BODY_BYTES} bytes")
        except web.HTTPException as err:
            if err.status >= 400:  # noqa: PLR2004
                return problem(err.status, err.reason or TITLES.get(err.status, "error"))
            raise

    @web.middleware
    async def _authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
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

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    async def _body(request: web.Request, model: type[_M]) -> _M:
        raw = await request.read()
        if not raw:
            raise ProblemError(400, "a JSON body is required", "body")
        try:
            return model.model_validate_json(raw)
        except ValidationError as err:
            raise _invalid(err) from None

    @staticmethod
    def _json(model: BaseModel, status: int = 200) -> web.Response:
        return web.Response(
            status=status, text=model.model_dump_json(), content_type="application/json"
        )

    def _now(self) -> datetime:
        return self._daemon.clock.now()

    # -- views -----------------------------------------------------------------------------

    def status(self) -> m.StatusOut:
        daemon, desk = self._daemon, self._desk
        sup = daemon.supervisor
        now = self._now()
        views = daemon.readings.views()
        stale_after = self._stale_after
        counts: dict[str, dict[str, int]] = {}
        draws: dict[str, int] = {}
        hottest: dict[str, float] = {}
        total = _counts()
        for view in views:
            container = view.spec.container
            bucket = counts.get(container)
            if bucket is None:
                bucket = counts[container] = _counts()
            tally(view, now, stale_after, bucket)
            tally(view, now, stale_after, total)
            bucket["total"] += 1
            total["total"] += 1
            draws[container] = draws.get(container, 0) + estimate_w(view, now, stale_after)
            if view.reading is not None and view.fresh(now, stale_after):
                temps = view.reading.board_temps_c
                if temps:
                    hottest[container] = max(hottest.get(container, -273.0), *temps)
        ambient = daemon.measurements.ambient
        containers = [
            m.ContainerOut(
                name=name,
                ambient_c=ambient[name][0] if name in ambient else None,
                ambient_age_s=round((now - ambient[name][1]).total_seconds(), 1)
                if name in ambient
                else None,
                board_temp_max_c=hottest.get(name),
                draw_kw=round(draws.get(name, 0) / 1000, 3),
                miners=m.ModeCounts(**counts[name]),
            )
            for name in sorted(counts)
        ]
        limit = sup.limit
        grid = sup.grid_limit(now)
        return m.StatusOut(
            site=sup.site_id,
            at=now,
            automation=self._automation(),
            limit=None
            if limit is None
            else m.LimitOut(
                limit_kw=limit.limit_w / 1000,
                reasons=list(limit.reasons),
                due=limit.due_at,
                emergency=limit.emergency,
            ),
            grid_limit_kw=grid.limit_w / 1000,
            measured_kw=_kw(sup.measured_w),
            measured_by="meter" if sup.measured_by == "meter" else "firmware",
            expected_kw=_kw(sup.plan.expected_w) if sup.plan else None,
            miners=m.ModeCounts(**total),
            containers=containers,
            signals=self._signals(now),
            deadlines=[
                m.DeadlineOut(
                    signal_id=o.signal_id,
                    revision=o.revision,
                    kind=o.kind,
                    limit_kw=o.limit_w / 1000,
                    starts_at=o.starts_at,
                    due_at=o.due_at,
                    status=o.status.value,
                    time_to_target_s=o.time_to_target_s,
                    measured_kw=_kw(o.measured_w),
                )
                for o in [*list(sup.finished)[-10:], *sup.obligations]
                if o.status is not ObligationStatus.WITHDRAWN
            ],
            overrides=self._overrides(),
            holds=[_hold(h) for h in desk.holds.values()],
            alarms=[
                m.AlarmOut(kind=kind, subject=subject, since=at, detail=detail)
                for (kind, subject), (at, detail) in sorted(sup.alarms.items())
            ],
            lying=sorted(sup.lying_detected),
        )

    def _signals(self, now: datetime) -> list[m.SignalOut]:
        out = []
        for held in sorted(self._daemon.inbox.book.held.values(), key=lambda h: h.signal.id):
            s = held.signal
            active = held.starts_at <= now and (s.end is None or now < s.end)
            out.append(
                m.SignalOut(
                    id=s.id,
                    revision=s.revision,
                    type=s.kind,
                    source=held.source,
                    received_at=held.received_at,
                    start=s.start,
                    end=s.end,
                    limit_kw=s.limit_w / 1000 if isinstance(s, Curtailment) else None,
                    granted_kw=s.granted_w / 1000 if isinstance(s, Grant) else None,
                    deadline_s=s.deadline_s if isinstance(s, Curtailment) else None,
                    emergency=isinstance(s, Curtailment) and s.emergency,
                    active=curtailment_active(held, now) if isinstance(s, Curtailment) else active,
                )
            )
        return out

    def _overrides(self) -> list[m.OverrideOut]:
        desk = self._desk
        return [
            m.OverrideOut(
                id=o.id,
                limit_kw=o.limit_w / 1000,
                reason=o.reason,
                by=o.by,
                created_at=desk.created.get(o.id),
                expires_at=o.expires_at,
            )
            for o in desk.overrides.values()
        ]

    def _automation(self) -> m.AutomationOut:
        a = self._desk.automation
        if not a.paused:
            return m.AutomationOut(paused=False)
        return m.AutomationOut(paused=True, by=a.by, reason=a.reason, since=a.since)

    def miner(self, view: MinerView, now: datetime) -> m.MinerOut:
        stale_after = self._stale_after
        spec, reading = view.spec, view.reading
        fresh = reading is not None and view.fresh(now, stale_after)
        mode = fleet_mode(view, now, stale_after)
        hold = self._desk.holds.get(spec.id)
        return m.MinerOut(
            id=spec.id,
            family=spec.driver,
            container=spec.container,
            rated_kw=spec.rated_power_w / 1000,
            efficiency_j_th=spec.efficiency_j_th,
            outlet=spec.outlet,
            mode=mode,
            health=_health(view, now, stale_after),
            health_reason=view.health_reason,
            power_kw=_kw(reading.power_w) if reading is not None and fresh else None,
            hashrate_ths=reading.hashrate_ths if reading is not None and fresh else None,
            board_temps_c=list(reading.board_temps_c) if reading is not None and fresh else [],
            read_age_s=None
            if view.read_at is None
            else round((now - view.read_at).total_seconds(), 3),
            pending=None if view.pending is None else view.pending.value,
            lowered=view.lowered_at is not None,
            warming_until=view.warming_until,
            lying=view.lying,
            hold=None if hold is None else _hold(hold),
        )

    # -- handlers: reads -------------------------------------------------------------------

    async def get_status(self, _: web.Request) -> web.StreamResponse:
        return self._json(self.status())

    async def get_miners(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        mode, health, container = q.get("mode"), q.get("health"), q.get("container")
        _choice("mode", mode, ("mining", "sleeping", "unknown", "cut"))
        _choice("health", health, ("ok", "unhealthy", "stale"))
        limit = _int_query(q, "limit", 100, 1, MAX_PAGE)
        offset = _int_query(q, "offset", 0, 0, MAX_OFFSET)
        now, stale_after = self._now(), self._stale_after
        # Filter on the views and build answers only for the page: a 10,000-miner site.
        matching = [
            view
            for view in self._daemon.readings.views()
            if (container is None or view.spec.container == container)
            and (mode is None or fleet_mode(view, now, stale_after) == mode)
            and (health is None or _health(view, now, stale_after) == health)
        ]
        page = [self.miner(v, now) for v in matching[offset : offset + limit]]
        return self._json(m.MinersOut(miners=page, total=len(matching)))

    async def get_miner(self, request: web.Request) -> web.StreamResponse:
        miner_id = request.match_info["id"]
        if miner_id not in self._daemon.specs:
            raise ProblemError(404, f"no miner {miner_id!r} at this site", "id")
        return self._json(self.miner(self._daemon.readings.view(miner_id), self._now()))

    async def get_overrides(self, _: web.Request) -> web.StreamResponse:
        return self._json(m.OverridesOut(overrides=self._overrides()))

    async def get_automation(self, _: web.Request) -> web.StreamResponse:
        return self._json(self._automation())

    async def get_events(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        after = _int_query(q, "after", 0, 0, MAX_SEQ)
        limit = _int_query(q, "limit", 500, 1, MAX_PAGE)
        since = _time_query(q, "since")
        rows = self._daemon.journal.events(after=after, since=since, limit=limit)
        events = [
            m.EventOut(seq=seq, at=datetime.fromisoformat(at), kind=kind, subject=subject,
                       detail=_detail(detail))
            for seq, at, kind, subject, detail in rows
        ]  # fmt: skip
        return self._json(m.EventsOut(events=events, next=rows[-1][0] if rows else after))

    async def get_history(self, _: web.Request) -> web.StreamResponse:
        points = [
            m.HistoryPoint(at=at, measured_kw=_kw(measured), limit_kw=_kw(limit))
            for at, measured, limit in self._daemon.supervisor.history
        ]
        interval = HISTORY_INTERVAL.total_seconds()
        return self._json(m.HistoryOut(interval_s=interval, points=points))

    async def get_signal_report(self, request: web.Request) -> web.StreamResponse:
        fmt = request.query.get("format", "json")
        _choice("format", fmt, ("json", "csv"))
        since = _time_query(request.query, "since")
        try:
            history = signal_history(self._daemon.journal.path, since)
        except ReportError as err:
            log.exception("signal report failed", error=str(err))
            raise ProblemError(503, "the journal cannot be read") from None
        if fmt == "csv":
            return web.Response(
                text=render(history, "csv"),
                content_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="signals.csv"'},
            )
        rows = [m.SignalReportRow(**row) for row in history]
        return self._json(m.SignalReportOut(signals=rows))

    async def get_health(self, _: web.Request) -> web.StreamResponse:
        sup = self._daemon.supervisor
        now = self._now()
        age = None if sup.last_cycle_at is None else (now - sup.last_cycle_at).total_seconds()
        faults = self._daemon.measurements.health.faults
        devices = {d: d not in faults for d in self._daemon.device_ids()}
        ready = sup.ready.is_set()
        stalled = ready and (age is None or age > self._stall_after_s)
        status: Literal["ok", "starting", "degraded", "stalled"] = (
            "starting"
            if not ready
            else "stalled"
            if stalled
            else "ok"
            if all(devices.values())
            else "degraded"
        )
        body = m.HealthOut(
            status=status,
            ready=ready,
            cycles=sup.cycles,
            last_cycle_age_s=None if age is None else round(age, 3),
            devices=devices,
        )
        return self._json(body, 200 if ready and not stalled else 503)

    async def get_metrics(self, _: web.Request) -> web.StreamResponse:
        metrics = self._daemon.metrics
        if metrics is None:
            raise ProblemError(404, "metrics are not enabled")
        payload, content_type = metrics.exposition()
        response = web.Response(body=payload)
        response.headers["Content-Type"] = content_type
        return response

    async def get_stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        if len(self._streams) >= MAX_STREAMS:
            raise ProblemError(503, f"at most {MAX_STREAMS} live views at once")
        await response.prepare(request)
        self._streams.add(response)
        try:
            while True:
                message = self._status_message()
                await asyncio.wait_for(response.write(message), STREAM_WRITE_TIMEOUT_S)
                await asyncio.sleep(STREAM_INTERVAL_S)
        except (ConnectionResetError, TimeoutError, RuntimeError):
            pass  # the reader went away, or the server is closing
        finally:
            self._streams.discard(response)
        return response

    def _status_message(self) -> bytes:
        """One status as an SSE message, built at most once a second for every reader:
        building it walks the whole fleet."""
        at = asyncio.get_running_loop().time()
        if self._message is None or at - self._message[0] >= STREAM_INTERVAL_S:
            data = self.status().model_dump_json()
            self._message = (at, f"event: status\ndata: {data}\n\n: keepalive\n\n".encode())
        return self._message[1]

    async def get_openapi(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self.openapi)

    async def get_docs(self, _: web.Request) -> web.StreamResponse:
        return web.Response(
            text=docs_page(self.openapi),
            content_type="text/html",
            headers={"Content-Security-Policy": DOCS_CSP},
        )

    async def get_dashboard(self, _: web.Request) -> web.StreamResponse:
        return self._static("index.html")

    async def get_static(self, request: web.Request) -> web.StreamResponse:
        return self._static(request.match_info["name"])

    def _static(self, name: str) -> web.StreamResponse:
        path = STATIC / name
        kind = STATIC_TYPES.get(path.suffix)
        # Only plain file names from the dashboard's own folder: no traversal.
        if kind is None or "/" in name or name.startswith(".") or not path.is_file():
            raise ProblemError(404, f"no such file: {name}")
        return web.Response(
            body=path.read_bytes(),
            content_type=kind,
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": DASHBOARD_CSP},
        )

    # -- handlers: changes -----------------------------------------------------------------

    async def post_override(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, m.OverrideIn)
        now = self._now()
        grid = self._daemon.supervisor.grid_limit(now)
        override = self._desk.add_override(
            limit_w=round(body.limit_kw * 1000),
            expires_at=body.expires_at,
            reason=body.reason,
            by=request[PRINCIPAL],
            now=now,
            grid_limit_w=grid.limit_w,
            grid_reasons=grid.reasons,
        )
        [out] = [o for o in self._overrides() if o.id == override.id]
        response = self._json(out, 201)
        response.headers["Location"] = f"/api/v1/overrides/{override.id}"
        return response

    async def delete_override(self, request: web.Request) -> web.StreamResponse:
        try:
            reason = REASON.validate_python(request.query.get("reason", ""))
        except ValidationError as err:
            raise ProblemError(400, f"reason: {err.errors()[0]['msg']}", "reason") from None
        self._desk.remove_override(
            request.match_info["id"],
            reason=reason,
            by=request[PRINCIPAL],
            now=self._now(),
        )
        return web.Response(status=204)

    async def post_mode(self, request: web.Request) -> web.StreamResponse:
        miner_id = request.match_info["id"]
        if miner_id not in self._daemon.specs:
            raise ProblemError(404, f"no miner {miner_id!r} at this site", "id")
        body = await self._body(request, m.HoldIn)
        now = self._now()
        self._desk.hold(
            miner_id,
            None if body.mode == "auto" else HoldMode(body.mode),
            expires_at=body.until,
            reason=body.reason,
            by=request[PRINCIPAL],
            now=now,
        )
        return self._json(self.miner(self._daemon.readings.view(miner_id), now))

    async def put_automation(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, m.AutomationIn)
        self._desk.set_automation(
            paused=body.paused,
            reason=body.reason,
            by=request[PRINCIPAL],
            now=self._now(),
        )
        return self._json(self._automation())


# -- small pieces --------------------------------------------------------------------------


async def _security_headers(_: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Content-Type-Options"] = "nosniff"  # a problem is never run as HTML
    response.headers.setdefault("Referrer-Policy", "no-referrer")


def _counts() -> dict[str, int]:
    return dict.fromkeys(m.ModeCounts.model_fields, 0)


def _health(view: MinerView, now: datetime, stale_after: timedelta) -> m.Health:
    if not view.healthy:
        return "unhealthy"
    return "ok" if view.reading is not None and view.fresh(now, stale_after) else "stale"


def _hold(h: Hold) -> m.HoldOut:
    return m.HoldOut(
        miner=h.miner_id,
        mode=h.mode.value,
        reason=h.reason,
        by=h.by,
        since=h.since,
        until=h.expires_at,
    )


def _detail(text: str | None) -> str | dict[str, object] | None:
    if text is None or not text.startswith("{"):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def _choice(name: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise ProblemError(400, f"{name}: must be one of {', '.join(allowed)}", name)


def _int_query(q: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = q.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ProblemError(400, f"{name}: not an integer", name) from None
    if not low <= value <= high:
        raise ProblemError(400, f"{name}: must be between {low} and {high}", name)
    return value


def _time_query(q: Mapping[str, str], name: str) -> datetime | None:
    raw = q.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ProblemError(400, f"{name}: not an ISO 8601 time", name) from None
    if value.tzinfo is None:
        raise ProblemError(400, f"{name}: needs a UTC offset (e.g. Z or +05:00)", name)
    return value


def _q(name: str, description: str, schema: dict[str, Any], *, required: bool = False) -> Query:
    return Query(name, description, schema, required)


ISO = {"type": "string", "format": "date-time"}
ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/v1/status", OperatorApi.get_status, "The site now: limit with its "
          "reasons, draw, miners per mode and container, signals, overrides, holds, "
          "automation", Role.VIEWER, answers={200: m.StatusOut}),
    Route("GET", "/api/v1/miners", OperatorApi.get_miners, "Miners, filtered",
          Role.VIEWER, answers={200: m.MinersOut}, tag="miners", query=(
              _q("mode", "mining, sleeping, unknown or cut",
                 {"type": "string", "enum": ["mining", "sleeping", "unknown", "cut"]}),
              _q("health", "ok, unhealthy or stale",
                 {"type": "string", "enum": ["ok", "unhealthy", "stale"]}),
              _q("container", "Only this container's miners", {"type": "string"}),
              _q("limit", "Page size", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),
              _q("offset", "Skip this many", {"type": "integer", "minimum": 0,
                                                "maximum": MAX_OFFSET}),
          )),
    Route("GET", "/api/v1/miners/{id}", OperatorApi.get_miner, "One miner", Role.VIEWER,
          answers={200: m.MinerOut, 404: m.Problem}, tag="miners"),
    Route("POST", "/api/v1/miners/{id}/mode", OperatorApi.post_mode, "Hold a miner asleep "
          "or running until a time, or hand it back (auto)", Role.OPERATOR, body=m.HoldIn,
          answers={200: m.MinerOut, 404: m.Problem, 422: m.Problem}, tag="miners"),
    Route("GET", "/api/v1/overrides", OperatorApi.get_overrides, "Overrides in force",
          Role.VIEWER, answers={200: m.OverridesOut}, tag="overrides"),
    Route("POST", "/api/v1/overrides", OperatorApi.post_override, "Tighten the limit until "
          "a time; refused (422) above what the grid allows", Role.OPERATOR,
          body=m.OverrideIn, answers={201: m.OverrideOut, 422: m.Problem}, tag="overrides"),
    Route("DELETE", "/api/v1/overrides/{id}", OperatorApi.delete_override, "Withdraw an "
          "override", Role.OPERATOR, answers={204: None, 404: m.Problem}, tag="overrides",
          query=(_q("reason", "Why (journaled)", REASON.json_schema(), required=True),)),
    Route("GET", "/api/v1/automation", OperatorApi.get_automation, "Automation state",
          Role.VIEWER, answers={200: m.AutomationOut}, tag="automation"),
    Route("PUT", "/api/v1/automation", OperatorApi.put_automation, "Pause or resume: "
          "paused, nothing comes back on; grid limits are still enforced", Role.OPERATOR,
          body=m.AutomationIn, answers={200: m.AutomationOut}, tag="automation"),
    Route("GET", "/api/v1/events", OperatorApi.get_events, "The journal's events (operator "
          "changes with who and why, alarms, lies, frequency trips), oldest first",
          Role.VIEWER, answers={200: m.EventsOut}, tag="journal", query=(
              _q("after", "Only events after this seq", {"type": "integer", "minimum": 0,
                                                          "maximum": MAX_SEQ}),
              _q("since", "Only events from this time", ISO),
              _q("limit", "At most this many", {"type": "integer", "minimum": 1,
                                                 "maximum": MAX_PAGE}),
          )),
    Route("GET", "/api/v1/reports/signals", OperatorApi.get_signal_report, "Every signal "
          "and deadline, as evidence (JSON or CSV)", Role.VIEWER,
          answers={200: (m.SignalReportOut, "text/csv"), 503: m.Problem}, tag="journal",
          query=(
              _q("format", "json or csv", {"type": "string", "enum": ["json", "csv"]}),
              _q("since", "From this time", ISO),
          )),
    Route("GET", "/api/v1/history", OperatorApi.get_history, "Site draw against the limit "
          "over the last hour", Role.VIEWER, answers={200: m.HistoryOut}),
    Route("GET", "/api/v1/stream", OperatorApi.get_stream, "Server-sent events: a status "
          "message each second", Role.VIEWER, answers={200: "text/event-stream"}),
    Route("GET", "/healthz", OperatorApi.get_health, "Liveness and readiness", None,
          answers={200: m.HealthOut, 503: m.HealthOut}, tag="service"),
    Route("GET", "/metrics", OperatorApi.get_metrics, "Prometheus metrics", Role.VIEWER,
          answers={200: "text/plain"}, tag="service"),
    Route("GET", "/openapi.json", OperatorApi.get_openapi, "This document", None,
          answers={200: "application/json"}, tag="service"),
    Route("GET", "/docs", OperatorApi.get_docs, "This document, readable", None,
          answers={200: "text/html"}, tag="service"),
    Route("GET", "/", OperatorApi.get_dashboard, "The dashboard", None,
          answers={200: "text/html"}, tag="service"),
    Route("GET", "/static/{name}", OperatorApi.get_static, "The dashboard's files", None,
          answers={200: ("text/html", "text/javascript", "text/css"), 404: m.Problem},
          tag="service"),
)  # fmt: skip


# -- OpenAPI 3.1 from the route table -----------------------------------------------------


def openapi_document(
    routes: Sequence[Route], public: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """OpenAPI 3.1 (JSON Schema 2020-12, which pydantic writes) for `routes`; the paths in
    `public` need no token here (this site's choice, e.g. /metrics for Prometheus)."""
    models: set[type[BaseModel]] = {m.Problem}
    for route in routes:
        if route.body is not None:
            models.add(route.body)
        for answer in route.answers.values():
            for part in answer if isinstance(answer, tuple) else (answer,):
                if isinstance(part, type):
                    models.add(part)
    keyed = sorted(models, key=lambda c: c.__name__)
    _, schema = models_json_schema(
        [(c, "validation") for c in keyed], ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, public)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "curtaild operator API",
            "version": VERSION,
            "description": "Roles: viewer < operator < admin. Every change is journaled "
            "with who, what and why. Overrides only tighten: grid limits always win.",
        },
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(route: Route, public: frozenset[str]) -> dict[str, Any]:
    """One route's OpenAPI operation."""
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "tags": [route.tag],
        "responses": {},
    }
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_names(route.path)
    ]
    params += [
        {"name": q.name, "in": "query", "required": q.required,
         "description": q.description, "schema": q.schema}
        for q in route.query
    ]  # fmt: skip
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.body)}},
        }
    for status, answer in route.answers.items():
        op["responses"][str(status)] = _response(status, answer)
    if route.body is not None or route.query or _path_names(route.path):
        op["responses"].setdefault("400", _response(400, m.Problem))
    if route.role is not None and route.path not in public:
        op["security"] = [{"bearer": []}]
        op["responses"]["401"] = _response(401, m.Problem)
        op["responses"]["403"] = _response(403, m.Problem)
        op["description"] = f"Needs the {route.role.name.lower()} role."
    if route.body is not None:
        op["responses"]["413"] = _response(413, m.Problem)
    if route.role is not None and route.role >= Role.OPERATOR:
        op["responses"]["503"] = _response(503, m.Problem)  # the journal cannot be written
    return op


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _response(status: int, answer: Answer) -> dict[str, Any]:
    description = TITLES.get(status, "ok") if status >= 400 else "ok"  # noqa: PLR2004
    if answer is None:
        return {"description": description}
    content: dict[str, Any] = {}
    for part in answer if isinstance(answer, tuple) else (answer,):
        if isinstance(part, str):
            shape = "object" if part.endswith("json") else "string"
            content[part] = {"schema": {"type": shape}}
        else:
            kind = "application/problem+json" if part is m.Problem else "application/json"
            content[kind] = {"schema": _ref(part)}
    return {"description": description, "content": content}


def docs_page(doc: Mapping[str, Any]) -> str:
    """The OpenAPI document as one self-contained HTML page: no script, no CDN."""
    e = html.escape
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8>",
        f"<title>{e(doc['info']['title'])}</title>",
        (
            "<style>body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
            "padding:0 1rem;color:#111}code,pre{font:13px ui-monospace,monospace}"
            "pre{background:#f3f3f3;padding:.6rem;overflow:auto}h2{margin-top:2rem;"
            "border-top:1px solid #ccc;padding-top:1rem}.m{font-weight:700;margin-right:.5rem}"
            "</style>"
        ),
        f"<h1>{e(doc['info']['title'])} <small>{e(doc['info']['version'])}</small></h1>",
        f"<p>{e(doc['info']['description'])}</p>",
        (
            "<p>Send <code>Authorization: Bearer &lt;token&gt;</code>. Machine-readable: "
            "<a href=/openapi.json>/openapi.json</a>.</p>"
        ),
    ]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            parts.append(f"<h2><span class=m>{e(method.upper())}</span><code>{e(path)}</code></h2>")
            parts.append(
                f"<p>{e(op['summary'])}. {e(op.get('description', 'No token needed.'))}</p>"
            )
            for p in op.get("parameters", []):
                req = " (required)" if p.get("required") else ""
                parts.append(
                    f"<p><code>{e(p['name'])}</code> in {e(p['in'])}{req}: "
                    f"{e(p.get('description', ''))}</p>"
                )
            body = op.get("requestBody")
            if body is not None:
                ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                parts.append(f"<p>Body: <code>{e(ref)}</code></p>")
            answers = ", ".join(f"{code} {_schema_name(r)}" for code, r in op["responses"].items())
            parts.append(f"<p>Answers: {e(answers)}</p>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        text = json.dumps(schema, indent=2)
        parts.append(f"<h3 id={e(name)}>{e(name)}</h3><pre>{e(text)}</pre>")
    return "\n".join(parts)


def _schema_name(response: Mapping[str, Any]) -> str:
    for kind, content in response.get("content", {}).items():
        ref = content.get("schema", {}).get("$ref")
        return str(ref).rsplit("/", 1)[1] if ref else str(kind)
    return ""
