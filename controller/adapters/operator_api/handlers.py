"""The operator API's handlers: reads answer from the read model, changes go to the
operator's desk (which journals them and nudges the loop). Each takes the server and the
request; the route table (routes.py) says who may call it and what it reads and answers."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog
from aiohttp import web
from pydantic import ValidationError

from controller.adapters.openadr_desk import OptOutError
from controller.adapters.operator_api import models as m
from controller.adapters.operator_api import views
from controller.adapters.operator_api.common import (
    MAX_OFFSET,
    MAX_PAGE,
    MAX_SEQ,
    REASON,
    ProblemError,
)
from controller.core.model import fleet_mode
from controller.core.operator import HoldMode
from controller.intake import schedule
from controller.record.compliance import ComplianceError
from controller.record.report import ReportError, render, signal_history

MAX_EVENT_ID = 128  # an OpenADR eventID, as a signal id holds it

if TYPE_CHECKING:
    from controller.adapters.operator_api.server import OperatorApi

log = structlog.get_logger("curtaild.api")

STREAM_INTERVAL_S = 1.0  # a status message a second: the dashboard's live view
STREAM_WRITE_TIMEOUT_S = 5.0  # a reader that stops reading is dropped, not waited on
MAX_STREAMS = 16  # live dashboards at once
COMPLIANCE_TIMEOUT_S = 10.0  # a month of rollups is a small read; longer is a stuck journal
STATIC = Path(__file__).parent.parent / "dashboard"
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# The page loads only its own files and talks only to this listener; the docs page has
# no script at all.
DASHBOARD_CSP = (
    "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
DOCS_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


# -- reads ---------------------------------------------------------------------------------


async def get_status(api: OperatorApi, _: web.Request) -> web.StreamResponse:
    return web.Response(body=api.status_json(), content_type="application/json")


async def get_miners(api: OperatorApi, request: web.Request) -> web.StreamResponse:
    q = request.query
    mode, health, container = q.get("mode"), q.get("health"), q.get("container")
    _choice("mode", mode, ("mining", "sleeping", "unknown", "cut"))
    _choice("health", health, ("ok", "unhealthy", "stale"))
    limit = _int_query(q, "limit", 100, 1, MAX_PAGE)
    offset = _int_query(q, "offset", 0, 0, MAX_OFFSET)
    now, stale_after = api.now(), api.stale_after
    # Filter on the views and build answers only for the page: a 10,000-miner site.
    matching = [
        view
        for view in api.readings.views()
        if (container is None or view.spec.container == container)
        and (mode is None or fleet_mode(view, now, stale_after) == mode)
        and (health is None or views.health(view, now, stale_after) == health)
    ]
    holds, pools = api.desk.holds, api.view().pools
    page = [
        views.miner(v, holds.get(v.spec.id), now, stale_after, pools)
        for v in matching[offset : offset + limit]
    ]
    return api.json(m.MinersOut(miners=page, total=len(matching)))


async def get_miner(api: OperatorApi, request: web.Request) -> web.StreamResponse:
    return api.json(api.miner(_miner_id(api, request)))


async def get_overrides(api: OperatorApi, _: web.Request) -> web.StreamResponse:
    # From the desk, as /automation is: an override just made or withdrawn shows at once.
    desk = api.desk
    items = views.overrides(desk.overrides.values(), desk.created)
    return api.json(m.OverridesOut(overrides=items))


async def get_automation(api: OperatorApi, _: web.Request) -> web.StreamResponse:
    return api.json(views.automation(api.desk.automation))


async def get_events(api: OperatorApi, request: web.Request) -> web.StreamResponse:
    q = request.query
    after = _int_query(q, "after", 0, 0, MAX_SEQ)
    limit = _int_query(q, "limit", 500, 1, MAX_PAGE)
    since = _time_query(q, "since")
    rows = api.journal.events(after=after, since=since, limit=limit)
    events = [
        m.EventOut(seq=seq, at=datetime.fromisoformat(at), kind=kind, subject=subject,
                   detail=_detail(detail))
        for seq, at, kind, subject, detail in rows
    ]  # fmt: skip
    return api.json(m.EventsOut(events=events, next=rows[-1][0] if rows else after))


async def get_history(api: OperatorApi, _: web.Request) -> web.StreamResponse:
    points = [
        m.HistoryPoint(at=at, measured_kw=views.kw(measured), limit_kw=views.kw(limit))
        for at, measured, limit in api.feed.history
    ]
    return api.json(m.HistoryOut(interval_s=api.history_interval_s, points=points))


async def get_signal_report(api: OperatorApi, request: web.Request) -> web.StreamResponse:
    fmt = request.query.get("format", "json")
    _choice("format", fmt, ("json", "csv"))
    since = _time_query(request.query, "since")
    try:
        history = signal_history(api.journal.path, since)
    except ReportError as err:
        log.warning("signal report failed", error=str(err))
        raise ProblemError(503, "the journal cannot be read") from err
    if fmt == "csv":
        return web.Response(
            text=render(history, "csv"),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="signals.csv"'},
        )
    rows = [m.SignalReportRow(**row) for row in history]
    return api.json(m.SignalReportOut(signals=rows))


async def get_compliance(api: OperatorApi, _: web.Request) -> web.StreamResponse:
    source = api.compliance
    if source is None:
        raise ProblemError(503, "compliance not available")
    now = api.now()
    stuck = api.compliance_stuck
    if stuck is not None and not stuck.done():
        # A thread cannot be cancelled: while one that timed out still reads, no other
        # starts, so a stuck journal holds one worker thread, not one per request.
        raise ProblemError(503, "compliance not available: an earlier read is still running")
    try:
        # In a worker thread, one at a time: a slow journal read never holds up the loop,
        # and many dashboards do not pile reads up.
        async with asyncio.timeout(COMPLIANCE_TIMEOUT_S), api.compliance_lock:
            reading = asyncio.ensure_future(asyncio.to_thread(source.compliance, now))
            try:
                raw = await asyncio.shield(reading)
            except asyncio.CancelledError:
                api.compliance_stuck = reading
                reading.add_done_callback(_retrieved)
                raise
    except TimeoutError:
        log.warning("compliance figures timed out", timeout_s=COMPLIANCE_TIMEOUT_S)
        raise ProblemError(503, "compliance not available: the energy account is slow") from None
    except (ComplianceError, OSError, sqlite3.Error) as err:
        log.warning("compliance figures failed", error=str(err))
        raise ProblemError(503, "compliance not available: the account cannot be read") from err
    try:
        body = m.ComplianceOut.model_validate(raw)
    except ValidationError as err:  # the account's bug, named so the merge finds it
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        log.exception("compliance figures malformed", field=where, error=first["msg"])
        raise ProblemError(500, f"the energy account's figures are malformed at {where}") from None
    return api.json(body)


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A read nobody waits for any more: its outcome is taken, so none is reported lost."""
    if not future.cancelled():
        future.exception()


async def get_health(api: OperatorApi, _: web.Request) -> web.StreamResponse:
    feed, view = api.feed, api.feed.latest
    now = api.now()
    ready = feed.ready
    last = feed.last_cycle_at
    age = None if last is None else (now - last).total_seconds()
    # As before the read model: a device is up until a read of it fails.
    devices = {d.name: not d.failing for d in view.devices} if view is not None else {}
    stalled = ready and (age is None or age > api.stall_after_s)
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
        cycles=feed.cycles,
        last_cycle_age_s=None if age is None else round(age, 3),
        devices=devices,
    )
    return api.json(body, 200 if ready and not stalled else 503)


async def get_metrics(api: OperatorApi, _: web.Request) -> web.StreamResponse:
    if api.metrics is None:
        raise ProblemError(404, "metrics are not enabled")
    payload, content_type = api.metrics.exposition()
    response = web.Response(body=payload)
    response.headers["Content-Type"] = content_type
    return response


async def get_stream(api: OperatorApi, request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    if len(api.streams) >= MAX_STREAMS:
        raise ProblemError(503, f"at most {MAX_STREAMS} live views at once")
    await response.prepare(request)
    api.streams.add(response)
    try:
        while True:
            data = api.status_json().decode()
            message = f"event: status\ndata: {data}\n\n: keepalive\n\n".encode()
            await asyncio.wait_for(response.write(message), STREAM_WRITE_TIMEOUT_S)
            await asyncio.sleep(STREAM_INTERVAL_S)
    except (ConnectionResetError, TimeoutError, RuntimeError):
        pass  # the reader went away, or the server is closing
    finally:
        api.streams.discard(response)
    return response


async def get_openapi(api: OperatorApi, _: web.Request) -> web.StreamResponse:
    return web.json_response(api.openapi)


async def get_docs(api: OperatorApi, _: web.Request) -> web.StreamResponse:
    return web.Response(
        text=api.docs, content_type="text/html", headers={"Content-Security-Policy": DOCS_CSP}
    )


async def get_dashboard(_: OperatorApi, __: web.Request) -> web.StreamResponse:
    return _static("index.html")


async def get_static(_: OperatorApi, request: web.Request) -> web.StreamResponse:
    return _static(request.match_info["name"])


def _static(name: str) -> web.StreamResponse:
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


# -- changes -------------------------------------------------------------------------------


async def post_override(api: OperatorApi, request: web.Request) -> web.StreamResponse:
    body = await api.body(request, m.OverrideIn)
    now = api.now()
    grid = api.grid_limit()
    override = api.desk.add_override(
        limit_w=round(body.limit_kw * 1000),
        expires_at=body.expires_at,
        reason=body.reason,
        by=api.principal(request),
        now=now,
        grid_limit_w=grid.limit_w,
        grid_reasons=grid.reasons,
    )
    out = m.OverrideOut(
        id=override.id,
        limit_kw=override.limit_w / 1000,
        reason=override.reason,
        by=override.by,
        created_at=api.desk.created.get(override.id),
        expires_at=override.expires_at,
    )
    response = api.json(out, 201)
    response.headers["Location"] = f"/api/v1/overrides/{override.id}"
    return response


async def delete_override(api: OperatorApi, request: web.Request) -> web.StreamResponse:
    try:
        reason = REASON.validate_python(request.query.get("reason", ""))
    except ValidationError as err:
        raise ProblemError(400, f"reason: {err.errors()[0]['msg']}", "reason") from None
    api.desk.remove_override(
        request.match_info["id"], reason=reason, by=api.principal(request), now=api.now()
    )
    return web.Response(status=204)


async def post_mode(api: OperatorApi, request: web.Request) -> web.StreamResponse:
    miner_id = _miner_id(api, request)
    body = await api.body(request, m.HoldIn)
    api.desk.hold(
        miner_id,
        None if body.mode == "auto" else HoldMode(body.mode),
        expires_at=body.until,
        reason=body.reason,
        by=api.principal(request),
        now=api.now(),
    )
    return api.json(api.miner(miner_id))


async def post_opt_out(api: OperatorApi, request: web.Request) -> web.StreamResponse:
    """An operator's opt-out of an event the site's VTN sent (the VEN journals it)."""
    event_id = request.match_info["id"]
    if api.openadr is None:
        # No VTN: no event of it can be held (a 404, like any event not held).
        raise ProblemError(404, "no OpenADR VTN is configured (grid.openadr)")
    if not 0 < len(event_id) <= MAX_EVENT_ID:
        raise ProblemError(404, f"no event of that id (1-{MAX_EVENT_ID} characters)")
    body = await api.body(request, m.OptOutIn)
    try:
        outcome = api.openadr.opt_out(event_id, body.reason, by=api.principal(request).name)
    except OptOutError as err:
        raise ProblemError(err.status, err.detail) from None
    out = m.OptOutOut(
        event_id=event_id, signal_id=outcome.signal_id, status=outcome.status,
        detail=outcome.detail,
    )  # fmt: skip
    return api.json(out, status=202)


async def put_automation(api: OperatorApi, request: web.Request) -> web.StreamResponse:
    body = await api.body(request, m.AutomationIn)
    api.desk.set_automation(
        paused=body.paused, reason=body.reason, by=api.principal(request), now=api.now()
    )
    return api.json(views.automation(api.desk.automation))


async def post_schedule(api: OperatorApi, request: web.Request) -> web.StreamResponse:
    inbox, cap_w = api.inbox, api.site_cap_w
    if inbox is None or cap_w is None:
        raise ProblemError(503, "this daemon takes no schedules")
    by = api.principal(request)
    try:
        data = await api.raw(request, schedule.MAX_BYTES)
    except ProblemError as err:  # too large, or too slow: refused unread, and journaled
        too_large = err.status == schedule.ScheduleTooLargeError.status
        kind = schedule.ScheduleTooLargeError if too_large else schedule.ScheduleError
        inbox.refuse_schedule(b"", by.name, kind(err.detail, field="body"))
        raise
    uploaded = inbox.upload_schedule(
        data,
        request.headers.get("Content-Type"),
        by=by.name,
        role=by.role.name.lower(),
        cap_w=cap_w,
    )
    now = api.now()
    out = m.ScheduleOut(
        sha256=uploaded.sha256,
        uploaded_by=uploaded.by,
        grants=[views.signal(h, now) for h in uploaded.held],
    )
    return api.json(out, 201)


# -- small pieces --------------------------------------------------------------------------


def _miner_id(api: OperatorApi, request: web.Request) -> str:
    miner_id = request.match_info["id"]
    if miner_id not in api.miners:
        raise ProblemError(404, f"no miner {miner_id!r} at this site", "id")
    return miner_id


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
