"""Every route of the operator API, declared once: method, path, role, and the models it
reads and answers with. The router and /openapi.json are both built from this table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel

from controller.adapters.operator_api import handlers as h
from controller.adapters.operator_api import models as m
from controller.adapters.operator_api.common import ISO, MAX_OFFSET, MAX_PAGE, MAX_SEQ, REASON
from controller.intake.desk import Role

if TYPE_CHECKING:
    from controller.adapters.operator_api.server import OperatorApi

Answer = type[BaseModel] | str | tuple[type[BaseModel] | str, ...] | None
Handler = Callable[["OperatorApi", web.Request], Awaitable[web.StreamResponse]]


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
    also: tuple[str, ...] = ()  # other media types the body may come as (text)
    # Per status: a model (JSON), a media type, both, or None (no body).
    answers: Mapping[int, Answer] = field(default_factory=dict)
    query: Sequence[Query] = ()
    tag: str = "status"


def _q(name: str, description: str, schema: dict[str, Any], *, required: bool = False) -> Query:
    return Query(name, description, schema, required)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/v1/status", h.get_status, "The site now: limit with its "
          "reasons, draw, miners per mode and container, signals, overrides, holds, "
          "automation", Role.VIEWER, answers={200: m.StatusOut}),
    Route("GET", "/api/v1/miners", h.get_miners, "Miners, filtered",
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
    Route("GET", "/api/v1/miners/{id}", h.get_miner, "One miner", Role.VIEWER,
          answers={200: m.MinerOut, 404: m.Problem}, tag="miners"),
    Route("POST", "/api/v1/miners/{id}/mode", h.post_mode, "Hold a miner asleep "
          "or running until a time, or hand it back (auto)", Role.OPERATOR, body=m.HoldIn,
          answers={200: m.MinerOut, 404: m.Problem, 422: m.Problem}, tag="miners"),
    Route("GET", "/api/v1/overrides", h.get_overrides, "Overrides in force",
          Role.VIEWER, answers={200: m.OverridesOut}, tag="overrides"),
    Route("POST", "/api/v1/overrides", h.post_override, "Tighten the limit until "
          "a time; refused (422) above what the grid allows", Role.OPERATOR,
          body=m.OverrideIn, answers={201: m.OverrideOut, 422: m.Problem}, tag="overrides"),
    Route("DELETE", "/api/v1/overrides/{id}", h.delete_override, "Withdraw an "
          "override", Role.OPERATOR, answers={204: None, 404: m.Problem}, tag="overrides",
          query=(_q("reason", "Why (journaled)", REASON.json_schema(), required=True),)),
    Route("POST", "/api/v1/grants/schedule", h.post_schedule, "Upload an auction "
          "schedule (CSV or JSON): each row becomes a grant, as if the grid had pushed it, "
          "as auction:<reference> (a grid cancel names it); all rows or none. 400 "
          "names the row and field, 409 a reference already used, 422 overlapping hours",
          Role.OPERATOR, body=m.ScheduleIn, also=("text/csv",),
          answers={201: m.ScheduleOut, 409: m.Problem, 415: m.Problem, 422: m.Problem},
          tag="grants"),
    Route("POST", "/api/v1/openadr/events/{id}/opt-out", h.post_opt_out, "Opt out of "
          "an OpenADR event: journaled with the reason, the event's limit withdrawn, optOut "
          "sent to the VTN (later modifications are declined too)", Role.OPERATOR,
          body=m.OptOutIn, answers={202: m.OptOutOut, 404: m.Problem, 409: m.Problem,
                                    503: m.Problem}, tag="grants"),
    Route("GET", "/api/v1/automation", h.get_automation, "Automation state",
          Role.VIEWER, answers={200: m.AutomationOut}, tag="automation"),
    Route("PUT", "/api/v1/automation", h.put_automation, "Pause or resume: "
          "paused, nothing comes back on; grid limits are still enforced", Role.OPERATOR,
          body=m.AutomationIn, answers={200: m.AutomationOut}, tag="automation"),
    Route("GET", "/api/v1/events", h.get_events, "The journal's events (operator "
          "changes with who and why, alarms, lies, frequency trips), oldest first",
          Role.VIEWER, answers={200: m.EventsOut}, tag="journal", query=(
              _q("after", "Only events after this seq", {"type": "integer", "minimum": 0,
                                                          "maximum": MAX_SEQ}),
              _q("since", "Only events from this time", ISO),
              _q("limit", "At most this many", {"type": "integer", "minimum": 1,
                                                 "maximum": MAX_PAGE}),
          )),
    Route("GET", "/api/v1/reports/signals", h.get_signal_report, "Every signal "
          "and deadline, as evidence (JSON or CSV)", Role.VIEWER,
          answers={200: (m.SignalReportOut, "text/csv"), 503: m.Problem}, tag="journal",
          query=(
              _q("format", "json or csv", {"type": "string", "enum": ["json", "csv"]}),
              _q("since", "From this time", ISO),
          )),
    Route("GET", "/api/v1/compliance", h.get_compliance, "Today and this month: kWh "
          "inside grants, in the base allowance and in excess; grant utilisation; excess "
          "events; miners on unapproved pools; whether the journal's chain verified",
          Role.VIEWER, answers={200: m.ComplianceOut, 503: m.Problem}, tag="journal"),
    Route("GET", "/api/v1/history", h.get_history, "Site draw against the limit "
          "over the last hour", Role.VIEWER, answers={200: m.HistoryOut}),
    Route("GET", "/api/v1/stream", h.get_stream, "Server-sent events: a status "
          "message each second", Role.VIEWER, answers={200: "text/event-stream"}),
    Route("GET", "/healthz", h.get_health, "Liveness and readiness", None,
          answers={200: m.HealthOut, 503: m.HealthOut}, tag="service"),
    Route("GET", "/metrics", h.get_metrics, "Prometheus metrics", Role.VIEWER,
          answers={200: "text/plain"}, tag="service"),
    Route("GET", "/openapi.json", h.get_openapi, "This document", None,
          answers={200: "application/json"}, tag="service"),
    Route("GET", "/docs", h.get_docs, "This document, readable", None,
          answers={200: "text/html"}, tag="service"),
    Route("GET", "/", h.get_dashboard, "The dashboard", None,
          answers={200: "text/html"}, tag="service"),
    Route("GET", "/static/{name}", h.get_static, "The dashboard's files", None,
          answers={200: ("text/html", "text/javascript", "text/css"), 404: m.Problem},
          tag="service"),
)  # fmt: skip
