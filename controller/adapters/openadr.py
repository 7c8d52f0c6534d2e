"""The site as an OpenADR 2.0b VEN (`grid.openadr`): registers with its VTN, polls it,
turns its events into signals through the inbox (the same door, journal, deadlines and
meter verification as every other source; the events desk, openadr_desk.py, decides what
each event does), answers each event with an opt response, and reports the site's
telemetry back at the interval the VTN asks for.

One named task in the daemon's TaskGroup. A VTN that fails, refuses (any responseCode
other than 200) or asks for re-registration is retried with doubling backoff up to
`reregister_max_s`, which resets only after a successful poll; 452/463 (the VTN no longer
knows our venID) and oadrRequestReregistration / oadrCancelPartyRegistration register
again. A bug of ours met in one cycle is logged loudly and backed off from, never
propagated: nothing a VTN sends may stop the daemon. Every poll answered counts as the
source's heartbeat, so its configured stale policy applies when the VTN falls silent.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from openleadr import objects

from controller.adapters.openadr_desk import (
    OK,
    OPT_OUT,
    Answer,
    EventDesk,
    OptOutError,
)
from controller.adapters.openadr_link import (
    STATUS_SPECIFIER,
    USAGE_SPECIFIER,
    OpenAdrError,
    Signing,
    VtnLink,
    VtnReplyError,
    VtnUnreachableError,
    plain_id,
    report_catalogue,
    telemetry_values,
    xml_text,
)
from controller.clock import Clock
from controller.config import Loaded
from controller.intake.inbox import Inbox, Outcome
from controller.intake.openadr_events import EventRules, OptOutRule
from controller.record.publish import Ack, Fanout
from controller.record.report import ReportError, signal_history
from controller.record.site import SiteFeed
from controller.tls import TlsFiles, client_context

log = structlog.get_logger("curtaild.openadr")

__all__ = ["OPT_OUT", "OpenAdrVen", "OptOutError", "VenSettings", "openadr_ven"]

INVALID_ID = 452  # OpenADR status codes (openleadr.enums.STATUS_CODES)
NOT_REGISTERED = 463
REGISTER_AGAIN = (INVALID_ID, NOT_REGISTERED)  # the VTN does not know this venID
BACKOFF_FIRST_S = 1.0
MIN_REPORT_S = 1.0  # a report request asks for no faster than this (1 signature each)
OPT_OUTS_LOOKBACK = timedelta(days=30)  # operator opt-outs older than this are not restored


@dataclass(frozen=True, slots=True)
class VenSettings:
    source: str
    ven_name: str
    ven_id: str | None
    poll_interval_s: float
    reregister_max_s: float
    rules: EventRules
    resource: str  # the site id: the resource the reports are about


@dataclass(slots=True)
class ReportRequest:
    """One of the VTN's oadrReportRequests: which r_ids, how often, when next."""

    request_id: str
    specifier: str
    r_ids: tuple[str, ...]
    every_s: float | None  # None: once
    due: datetime


class _ReregisterError(Exception):
    """The VTN asked us to register again, cancelled our registration, or no longer
    knows our venID."""


class OpenAdrVen:
    """The VEN. A Publisher too: it hears the inbox's acks for its own signals."""

    def __init__(
        self, *, inbox: Inbox, feed: SiteFeed, clock: Clock, link: VtnLink, settings: VenSettings
    ) -> None:
        self._inbox = inbox
        self._feed = feed
        self._clock = clock
        self._link = link
        self.settings = settings
        self.desk = EventDesk(
            inbox=inbox, clock=clock, source=settings.source, rules=settings.rules
        )
        self.ven_id = settings.ven_id
        self.registration_id: str | None = None
        self.poll_s = settings.poll_interval_s
        self.registered = asyncio.Event()
        self.registrations = 0
        self.polls = 0
        self.reports_sent = 0
        self.internal_errors = 0  # cycles that met a bug of ours (logged at ERROR)
        self.backoff_s = BACKOFF_FIRST_S
        self.requests: dict[str, ReportRequest] = {}
        self.outcomes: dict[str, str] = {}  # signal id -> reached | missed, from the acks
        self._wake = asyncio.Event()
        self._failing: str | None = None
        inbox.heard(settings.source)  # silent from start-up on, as a keyed source is

    @property
    def opted_out(self) -> dict[str, str]:
        return self.desk.opted_out

    # -- Publisher: the inbox's and the deadlines' acks ------------------------------------

    def ack(self, ack: Ack) -> None:
        """reached / missed have no 2.0b message: kept for TELEMETRY_STATUS and the log
        (the journal already holds them as deadline rows)."""
        ours = ack.signal_id is not None and ack.signal_id.startswith(f"{self.settings.source}:")
        if ours and ack.signal_id is not None and ack.status in ("reached", "missed"):
            self.outcomes[ack.signal_id] = ack.status
            log.info("openadr event deadline", signal=ack.signal_id, status=ack.status)

    def status(self, status: dict[str, Any]) -> None:
        del status  # the VTN hears the status through TELEMETRY_STATUS, at its interval

    # -- the operator's opt-out -------------------------------------------------------------

    def opt_out(self, event_id: str, reason: str, *, by: str) -> Outcome:
        """Stop honouring an event (see EventDesk.opt_out): optOut goes to the VTN on the
        next turn, once the withdrawal is journaled. Raises OptOutError."""
        outcome = self.desk.opt_out(event_id, reason, by=by)
        self._wake.set()
        return outcome

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Register, poll and report until cancelled. Whatever ends a cycle (the VTN
        failing or refusing, a request to re-register, a bug of ours) is followed by the
        backoff; nothing but cancellation leaves this loop."""
        try:
            while True:
                try:
                    await self._register()
                    await self._serve()
                except _ReregisterError as err:
                    self.registered.clear()
                    log.info("openadr re-registering", why=str(err), after_s=self.backoff_s)
                except OpenAdrError as err:
                    self.registered.clear()
                    self._note_failure(str(err))
                except Exception:  # a bug of ours must not stop the daemon
                    self.registered.clear()
                    self.internal_errors += 1
                    log.exception(
                        "openadr VEN: internal error in one cycle; backing off and "
                        "registering again (a bug: please report it)",
                        after_s=self.backoff_s,
                    )
                await self._clock.sleep(self.backoff_s)
                self.backoff_s = min(self.backoff_s * 2, self.settings.reregister_max_s)
        finally:
            await self._link.close()

    def _note_failure(self, problem: str) -> None:
        # Logged on the transition; the retries after it at DEBUG.
        if self._failing is None:
            log.warning("openadr VTN unavailable; retrying with backoff", problem=problem)
        else:
            log.debug("openadr VTN still unavailable", problem=problem)
        self._failing = problem

    async def _request(
        self, service: str, message_type: str, **payload: object
    ) -> tuple[str, dict[str, Any]]:
        """One exchange whose reply's responseCode must be 200: 452/463 mean register
        again, any other is the VTN refusing."""
        kind, reply = await self._link.request(service, message_type, **payload)
        response = reply.get("response")
        code = response.get("response_code") if isinstance(response, dict) else None
        if code is None or code == OK or str(code).strip() == str(OK):
            return kind, reply
        description = str((response or {}).get("response_description"))[:200]
        if str(code).strip() in {str(c) for c in REGISTER_AGAIN}:
            raise _ReregisterError(f"{message_type}: the VTN answered {code} {description}")
        raise VtnReplyError(
            f"{message_type}: the VTN answered {kind} {code} {description}",
            code=code if isinstance(code, int) else None,
        )

    async def _register(self) -> None:
        self.registered.clear()
        try:
            await self._create_registration()
        except VtnReplyError as err:
            if err.code not in REGISTER_AGAIN or self.ven_id == self.settings.ven_id:
                raise
            # A restarted VTN forgot the venID it gave us: register as a new VEN.
            log.info("openadr VTN does not know our venID; registering afresh", was=self.ven_id)
            self.ven_id, self.registration_id = self.settings.ven_id, None
            await self._create_registration()
        self._inbox.heard(self.settings.source)
        self.requests.clear()
        await self._register_reports()
        kind, reply = await self._request(
            "EiEvent", "oadrRequestEvent", request_id=_request_id(), ven_id=self.ven_id
        )
        if kind == "oadrDistributeEvent":
            await self._on_events(reply)
        self.registrations += 1
        self.registered.set()
        if self._failing is not None:
            log.info("openadr VTN back", was=self._failing)
        self._failing = None
        log.info(
            "openadr registered",
            ven_id=self.ven_id,
            registration_id=self.registration_id,
            poll_s=self.poll_s,
        )

    async def _create_registration(self) -> None:
        await self._request("EiRegisterParty", "oadrQueryRegistration", request_id=_request_id())
        kind, reply = await self._link.request(
            "EiRegisterParty",
            "oadrCreatePartyRegistration",
            request_id=_request_id(),
            ven_name=xml_text(self.settings.ven_name),
            ven_id=self.ven_id,
            http_pull_model=True,
            xml_signature=True,
            report_only=False,
            profile_name="2.0b",
            transport_name="simpleHttp",
            transport_address=None,
            registration_id=self.registration_id,
        )
        code = (reply.get("response") or {}).get("response_code")
        if kind != "oadrCreatedPartyRegistration" or code != OK or not reply.get("ven_id"):
            description = (reply.get("response") or {}).get("response_description")
            raise VtnReplyError(
                f"registration refused: {kind} {code} {description}",
                code=code if isinstance(code, int) else None,
            )
        if not reply.get("registration_id"):
            raise VtnReplyError("registration refused: the VTN gave no registrationID")
        self.ven_id = plain_id(reply["ven_id"], "venID")
        self.registration_id = plain_id(reply["registration_id"], "registrationID")
        asked = reply.get("requested_oadr_poll_freq")
        self.poll_s = self.settings.poll_interval_s
        if isinstance(asked, timedelta) and asked.total_seconds() > 0:
            self.poll_s = min(self.poll_s, asked.total_seconds())

    async def _serve(self) -> None:
        """Poll, answer and report until the VTN fails or asks for re-registration."""
        next_poll = self._clock.now()
        while True:
            now = self._clock.now()
            if self.desk.has_outbox:
                answers = self.desk.take_outbox()  # swapped before the await: none lost
                try:
                    await self._send_answers(answers, None)
                except VtnUnreachableError:
                    self.desk.requeue(answers)  # the wire failed: the same answers again
                    raise
                except OpenAdrError as err:
                    # They cannot be built, or the VTN refused them: sent again they would
                    # fail again and stop every poll behind them. Dropped, said loudly.
                    log.exception("openadr answers dropped", error=str(err), count=len(answers))
                except BaseException:
                    self.desk.requeue(answers)
                    raise
            if now >= next_poll:
                await self._poll()
                self.backoff_s = BACKOFF_FIRST_S  # the VTN answers us as a registered VEN
                next_poll = now + timedelta(seconds=self.poll_s)
            await self._send_due_reports(self._clock.now())
            dues = [next_poll, *(r.due for r in self.requests.values())]
            wait_s = max(0.0, (min(dues) - self._clock.now()).total_seconds())
            self._wake.clear()
            if wait_s > 0 and not self.desk.has_outbox:
                await self._clock.wait(self._wake, wait_s)

    async def _poll(self) -> None:
        kind, reply = await self._request("OadrPoll", "oadrPoll", ven_id=self.ven_id)
        self.polls += 1
        self._inbox.heard(self.settings.source)
        if kind in ("", "oadrResponse"):
            return
        if kind == "oadrDistributeEvent":
            await self._on_events(reply)
        elif kind in ("oadrCreateReport", "oadrRegisteredReport"):
            await self._accept_report_requests(reply)
        elif kind == "oadrCancelReport":
            self.requests.pop(str(reply.get("report_request_id")), None)
            await self._request(
                "EiReport",
                "oadrCanceledReport",
                response=_ok(reply.get("request_id")),
                ven_id=self.ven_id,
                report_request_id=xml_text(reply.get("report_request_id")),
            )
        elif kind == "oadrRequestReregistration":
            await self._link.request(
                "EiRegisterParty", "oadrResponse", response=_ok(None), ven_id=self.ven_id
            )
            raise _ReregisterError("the VTN asked for re-registration")
        elif kind == "oadrCancelPartyRegistration":
            await self._link.request(
                "EiRegisterParty",
                "oadrCanceledPartyRegistration",
                response=_ok(reply.get("request_id")),
                ven_id=self.ven_id,
                registration_id=self.registration_id,
            )
            self.registration_id = None
            raise _ReregisterError("the VTN cancelled our registration")
        else:
            log.warning("openadr: no handler for a VTN message; ignored", message=kind)

    # -- events -----------------------------------------------------------------------------

    async def _on_events(self, reply: dict[str, Any]) -> None:
        """A full distribute (the poll's, or the oadrRequestEvent reply at registration)."""
        events = [e for e in reply.get("events") or [] if isinstance(e, dict)]
        refused = [r for r in reply.get("refused_events") or [] if isinstance(r, dict)]
        answers = self.desk.distribute(events, refused)
        if answers:
            await self._send_answers(answers, reply.get("request_id"))

    async def _send_answers(self, answers: list[Answer], request_id: object) -> None:
        rid = xml_text(request_id) if request_id else None
        await self._request(
            "EiEvent",
            "oadrCreatedEvent",
            response={"response_code": OK, "response_description": "OK", "request_id": rid},
            event_responses=[_as_payload(a, rid) for a in answers],
            ven_id=self.ven_id,
        )

    # -- reports ----------------------------------------------------------------------------

    async def _register_reports(self) -> None:
        catalogue = report_catalogue(self.settings.resource, 1.0, self._clock.now())
        kind, reply = await self._request(
            "EiReport",
            "oadrRegisterReport",
            request_id=_request_id(),
            ven_id=self.ven_id,
            reports=catalogue,
            report_request_id=0,
        )
        if kind == "oadrRegisteredReport":
            await self._accept_report_requests(reply)

    async def _accept_report_requests(self, reply: dict[str, Any]) -> None:
        accepted = []
        now = self._clock.now()
        for request in reply.get("report_requests") or []:
            spec = request.get("report_specifier") or {}
            specifier = spec.get("report_specifier_id")
            if specifier not in (USAGE_SPECIFIER, STATUS_SPECIFIER):
                log.warning("openadr: the VTN asked for a report we do not offer", id=specifier)
                continue
            granularity = spec.get("granularity") or timedelta(0)
            back = spec.get("report_back_duration") or timedelta(0)
            every = back if back > timedelta(0) else granularity
            payloads = spec.get("specifier_payloads") or []
            if isinstance(payloads, dict):  # one payload parses as a mapping
                payloads = [payloads]
            r_ids = tuple(str(p.get("r_id")) for p in payloads if isinstance(p, dict))
            rid = str(request.get("report_request_id"))[:100]
            seconds = every.total_seconds() if isinstance(every, timedelta) else 0.0
            # One request per report: a newer one replaces the older (each report costs a
            # signature, so neither their number nor their rate is the VTN's to choose).
            for old in [r for r in self.requests.values() if r.specifier == specifier]:
                del self.requests[old.request_id]
            self.requests[rid] = ReportRequest(
                rid, str(specifier), r_ids, max(seconds, MIN_REPORT_S) if seconds > 0 else None, now
            )
            accepted.append(rid)
        accepted = [r for r in accepted if r in self.requests]
        if not accepted:
            return
        await self._request(
            "EiReport",
            "oadrCreatedReport",
            response=_ok(reply.get("request_id")),
            ven_id=self.ven_id,
            pending_reports=[{"report_request_id": xml_text(r)} for r in accepted],
        )
        log.info("openadr reports requested", requests=accepted)

    async def _send_due_reports(self, now: datetime) -> None:
        for request in list(self.requests.values()):
            if request.due > now:
                continue
            if request.every_s is None:
                del self.requests[request.request_id]
            else:
                request.due = now + timedelta(seconds=request.every_s)
            report = self._report(request, now)
            if report is None:
                continue
            await self._request(
                "EiReport",
                "oadrUpdateReport",
                request_id=_request_id(),
                ven_id=self.ven_id,
                reports=[report],
            )
            self.reports_sent += 1

    def _report(self, request: ReportRequest, now: datetime) -> objects.Report | None:
        view = self._feed.latest
        if view is None:
            return None
        values = telemetry_values(view)
        intervals = [
            objects.ReportInterval(
                dtstart=now, report_payload=objects.ReportPayload(r_id=r, value=values[r])
            )
            for r in request.r_ids
            if r in values
        ]
        if not intervals:
            return None  # e.g. usage while the meter is stale and nothing else is known
        name = "TELEMETRY_USAGE" if request.specifier == USAGE_SPECIFIER else "TELEMETRY_STATUS"
        return objects.Report(
            report_specifier_id=request.specifier,
            report_name=name,
            report_request_id=xml_text(request.request_id),
            intervals=intervals,
            created_date_time=now,
            dtstart=now,
        )


def _as_payload(answer: Answer, request_id: str | None) -> dict[str, Any]:
    return {
        "response_code": answer.code,
        "response_description": xml_text(answer.detail),
        "request_id": request_id or "",
        "event_id": xml_text(answer.key.event_id),
        "modification_number": answer.key.modification,
        "opt_type": answer.opt,
    }


def _request_id() -> str:
    return uuid.uuid4().hex


def _ok(request_id: object) -> dict[str, Any]:
    return {
        "response_code": OK,
        "response_description": "OK",
        "request_id": xml_text(request_id or ""),
    }


def openadr_ven(
    loaded: Loaded, inbox: Inbox, feed: SiteFeed, clock: Clock, publisher: Fanout
) -> OpenAdrVen | None:
    """The VEN `grid.openadr` describes, added to `publisher` to hear the acks of its
    events; None when the site is not enrolled."""
    cfg = loaded.config.grid.openadr
    if cfg is None:
        return None
    password = cfg.key_password.resolve() if cfg.key_password is not None else None
    files = TlsFiles(cfg.cert, cfg.key, (lambda: password) if password is not None else None)
    context, info = client_context(files, cfg.vtn_ca, check_hostname=cfg.check_hostname)
    log.info("openadr VEN certificate", vtn=cfg.vtn_url, **info.fields())
    signing = Signing(cfg.cert.read_bytes(), cfg.key.read_bytes(), password)
    cap_w = loaded.grid_policy().cap_w
    rules = EventRules(
        level_w={level: limit.watts(cap_w) for level, limit in cfg.levels.items()},
        cap_w=cap_w,
        deadline_s=cfg.deadline_s,
        opt_out=tuple(
            OptOutRule(
                r.reason,
                r.market_context,
                r.signal_name,
                r.min_level,
                timedelta(seconds=r.notice_below_s) if r.notice_below_s is not None else None,
            )
            for r in cfg.opt_out
        ),
    )
    settings = VenSettings(
        source=cfg.source,
        ven_name=cfg.ven_name,
        ven_id=cfg.ven_id,
        poll_interval_s=cfg.poll_interval_s,
        reregister_max_s=cfg.reregister_max_s,
        rules=rules,
        resource=loaded.config.site.id,
    )
    link = VtnLink(cfg.vtn_url, context, timeout_s=cfg.request_timeout_s, signing=signing)
    ven = OpenAdrVen(inbox=inbox, feed=feed, clock=clock, link=link, settings=settings)
    try:  # the operator's opt-outs outlive a restart
        since = clock.now() - OPT_OUTS_LOOKBACK
        ven.desk.restore(signal_history(loaded.config.journal.path, since))
    except ReportError as err:
        log.info("openadr: no opt-outs to restore", why=str(err))
    publisher.add(ven)
    return ven
