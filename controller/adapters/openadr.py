"""The site as an OpenADR 2.0b VEN (`grid.openadr`): registers with its VTN, polls it,
turns its events into signals through the inbox (the same door, journal, deadlines and
meter verification as every other source), answers each event with an opt response, and
reports the site's telemetry back at the interval the VTN asks for.

One named task in the daemon's TaskGroup. A VTN that goes away is retried with backoff
and registered with again when it answers (a restarted VTN has forgotten us); a VTN that
asks for re-registration gets it at once. Every reply from the VTN counts as the source's
heartbeat, so its configured stale policy applies when the VTN falls silent.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from openleadr import objects

from controller.adapters.openadr_link import (
    STATUS_SPECIFIER,
    USAGE_SPECIFIER,
    OpenAdrError,
    Signing,
    VtnLink,
    VtnReplyError,
    report_catalogue,
    telemetry_values,
    xml_text,
)
from controller.clock import Clock
from controller.config import Loaded
from controller.core.signals import Cancel
from controller.intake.inbox import Inbox, Outcome
from controller.intake.openadr_events import (
    EventKey,
    EventRules,
    OptOutRule,
    Refused,
    Translated,
    event_json,
    opt_out_revision,
    signal_id,
    translate,
)
from controller.record.publish import Ack, Fanout
from controller.record.site import SiteFeed
from controller.tls import TlsFiles, client_context

log = structlog.get_logger("curtaild.openadr")

TRANSPORT = "openadr"
OPT_IN, OPT_OUT = "optIn", "optOut"
OK = 200
INVALID_DATA = 454  # OpenADR status codes (openleadr.enums.STATUS_CODES)
SIGNAL_NOT_SUPPORTED = 460
NOT_REGISTERED = 463
OTHER_ERROR = 469
ANSWERS_KEPT = 1000  # (event, modification) answers remembered to re-send, not re-journal
BACKOFF_FIRST_S = 1.0


class OptOutError(Exception):
    """An operator's opt-out that names no event held from this VTN."""


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


@dataclass(frozen=True, slots=True)
class Answer:
    """The opt response to one (event, modification)."""

    key: EventKey
    opt: str
    code: int
    detail: str

    def as_payload(self, request_id: str | None) -> dict[str, Any]:
        return {
            "response_code": self.code,
            "response_description": xml_text(self.detail),
            "request_id": xml_text(request_id or ""),
            "event_id": xml_text(self.key.event_id),
            "modification_number": self.key.modification,
            "opt_type": self.opt,
        }


class _ReregisterError(Exception):
    """The VTN asked us to register again (or cancelled our registration)."""


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
        self.ven_id = settings.ven_id
        self.registration_id: str | None = None
        self.poll_s = settings.poll_interval_s
        self.registered = asyncio.Event()
        self.registrations = 0
        self.polls = 0
        self.reports_sent = 0
        self.requests: dict[str, ReportRequest] = {}
        self.opted_out: dict[str, str] = {}  # signal id -> the operator's reason
        self.outcomes: dict[str, str] = {}  # signal id -> reached | missed, from the acks
        self._answers: OrderedDict[tuple[str, int], Answer] = OrderedDict()
        self._outbox: list[Answer] = []  # opt responses not tied to a distribute (opt-outs)
        self._wake = asyncio.Event()
        self._failing: str | None = None
        inbox.heard(settings.source)  # silent from start-up on, as a keyed source is

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
        """Stop honouring an event: journaled with the reason, the held signal withdrawn
        (a cancel on the revision between the VTN's modifications), and optOut sent to
        the VTN on the next poll. Later modifications of it are answered optOut too."""
        sid = signal_id(self.settings.source, event_id)
        held = self._inbox.book.held.get(sid)
        if held is None:
            raise OptOutError(f"no event {event_id!r} from the VTN is held")
        modification = (held.signal.revision - 1) // 2
        body = json.dumps({"opt_out": event_id, "by": by, "reason": reason}).encode()
        self._inbox.note_signal(
            TRANSPORT,
            self.settings.source,
            body,
            signal_id=sid,
            revision=held.signal.revision,
            kind=held.signal.kind,
            verdict="opted-out",
            detail=f"opted out by {by}: {reason}",
        )
        cancel = Cancel(sid, opt_out_revision(modification), self._clock.now())
        outcome = self._inbox.submit_signal(TRANSPORT, self.settings.source, cancel, body)
        self.opted_out[sid] = reason
        key = EventKey(event_id, modification, sid, held.signal.revision)
        self._outbox.append(Answer(key, OPT_OUT, OK, f"opted out: {reason}"))
        self._wake.set()
        return outcome

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Register, poll and report until cancelled; a VTN that fails is retried with
        backoff, and registered with again once it answers."""
        backoff = BACKOFF_FIRST_S
        try:
            while True:
                try:
                    await self._register()
                    backoff = BACKOFF_FIRST_S
                    await self._serve()
                except _ReregisterError as err:
                    log.info("openadr re-registering", why=str(err))
                except OpenAdrError as err:
                    self.registered.clear()
                    self._note_failure(str(err))
                    await self._clock.sleep(backoff)
                    backoff = min(backoff * 2, self.settings.reregister_max_s)
        finally:
            await self._link.close()

    def _note_failure(self, problem: str) -> None:
        # Logged on the transition; the retries after it at DEBUG.
        if self._failing is None:
            log.warning("openadr VTN unavailable; retrying with backoff", problem=problem)
        else:
            log.debug("openadr VTN still unavailable", problem=problem)
        self._failing = problem

    async def _register(self) -> None:
        self.registered.clear()
        try:
            await self._create_registration()
        except VtnReplyError as err:
            if err.code != NOT_REGISTERED or self.ven_id == self.settings.ven_id:
                raise
            # A restarted VTN forgot the venID it gave us: register as a new VEN.
            log.info("openadr VTN does not know our venID; registering afresh", was=self.ven_id)
            self.ven_id, self.registration_id = self.settings.ven_id, None
            await self._create_registration()
        self._inbox.heard(self.settings.source)
        self.requests.clear()
        await self._register_reports()
        kind, reply = await self._link.request(
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
        await self._link.request(
            "EiRegisterParty", "oadrQueryRegistration", request_id=_request_id()
        )
        kind, reply = await self._link.request(
            "EiRegisterParty",
            "oadrCreatePartyRegistration",
            request_id=_request_id(),
            ven_name=self.settings.ven_name,
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
        self.ven_id = str(reply["ven_id"])
        self.registration_id = str(reply["registration_id"])
        asked = reply.get("requested_oadr_poll_freq")
        self.poll_s = self.settings.poll_interval_s
        if isinstance(asked, timedelta) and asked.total_seconds() > 0:
            self.poll_s = min(self.poll_s, asked.total_seconds())

    async def _serve(self) -> None:
        """Poll, answer and report until the VTN fails or asks for re-registration."""
        next_poll = self._clock.now()
        while True:
            now = self._clock.now()
            if self._outbox:
                await self._send_answers(self._outbox[:], None)
                self._outbox.clear()
            if now >= next_poll:
                await self._poll()
                next_poll = now + timedelta(seconds=self.poll_s)
            await self._send_due_reports(self._clock.now())
            dues = [next_poll, *(r.due for r in self.requests.values())]
            wait_s = max(0.0, (min(dues) - self._clock.now()).total_seconds())
            self._wake.clear()
            if wait_s > 0 and not self._outbox:
                await self._clock.wait(self._wake, wait_s)

    async def _poll(self) -> None:
        kind, reply = await self._link.request("OadrPoll", "oadrPoll", ven_id=self.ven_id)
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
            await self._link.request(
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
        answers = []
        for event in reply.get("events") or []:
            answer = self._answer(event)
            if answer is not None and answer.key.response_required:
                answers.append(answer)
        if answers:
            await self._send_answers(answers, reply.get("request_id"))

    def _answer(self, event: dict[str, Any]) -> Answer | None:
        """Translate and admit one event; the same (event, modification) again is
        answered as before without a second journal row (VTNs re-send every event)."""
        translation = translate(
            event, self.settings.rules, source=self.settings.source, now=self._clock.now()
        )
        key = translation.key
        seen = self._answers.get((key.event_id, key.modification))
        if seen is not None:
            return seen
        answer = self._decide(translation, event_json(event))
        if answer is not None and answer.code != OTHER_ERROR:  # a failed journal: try again
            self._answers[(key.event_id, key.modification)] = answer
            while len(self._answers) > ANSWERS_KEPT:
                self._answers.popitem(last=False)
        return answer

    def _decide(self, translation: Refused | Translated, body: bytes) -> Answer | None:
        source = self.settings.source
        key = translation.key
        if isinstance(translation, Refused):
            self._inbox.refuse_signal(
                TRANSPORT,
                source,
                body,
                translation.reason,
                signal_id=key.signal_id,
                revision=key.revision,
            )
            code = SIGNAL_NOT_SUPPORTED if "acts on" in translation.reason else INVALID_DATA
            return Answer(key, OPT_OUT, code, translation.reason)
        signal = translation.signal
        if translation.test:
            self._inbox.note_signal(
                TRANSPORT,
                source,
                body,
                signal_id=signal.id,
                revision=signal.revision,
                kind=signal.kind,
                verdict="test",
                detail="test event: journaled, not acted on",
            )
            return Answer(key, OPT_IN, OK, "test event: not acted on")
        if isinstance(signal, Cancel):
            self.opted_out.pop(signal.id, None)
            outcome = self._inbox.submit_signal(TRANSPORT, source, signal, body)
            return self._from_outcome(key, outcome, OPT_IN)
        reason = self.opted_out.get(signal.id) or translation.opt_out
        if reason is not None:
            return self._decline(key, signal.id, signal.kind, reason, body)
        outcome = self._inbox.submit_signal(TRANSPORT, source, signal, body)
        return self._from_outcome(key, outcome, OPT_IN)

    def _decline(self, key: EventKey, sid: str, kind: str, reason: str, body: bytes) -> Answer:
        """Opted out (a config rule, or the operator earlier): journaled with the reason;
        a modification of an event held so far withdraws it."""
        source = self.settings.source
        self._inbox.note_signal(
            TRANSPORT,
            source,
            body,
            signal_id=sid,
            revision=key.revision,
            kind=kind,
            verdict="opted-out",
            detail=f"opted out: {reason}",
        )
        if sid in self._inbox.book.held:
            cancel = Cancel(sid, opt_out_revision(key.modification), self._clock.now())
            self._inbox.submit_signal(TRANSPORT, source, cancel, body)
        return Answer(key, OPT_OUT, OK, f"opted out: {reason}")

    @staticmethod
    def _from_outcome(key: EventKey, outcome: Outcome, opt: str) -> Answer:
        if outcome.status in ("received", "duplicate"):
            return Answer(key, opt, OK, outcome.detail)
        if outcome.status == "unavailable":
            return Answer(key, OPT_OUT, OTHER_ERROR, outcome.detail)
        return Answer(key, OPT_OUT, INVALID_DATA, outcome.detail)

    async def _send_answers(self, answers: list[Answer], request_id: object) -> None:
        rid = str(request_id) if request_id else None
        await self._link.request(
            "EiEvent",
            "oadrCreatedEvent",
            response={"response_code": OK, "response_description": "OK", "request_id": rid},
            event_responses=[a.as_payload(rid) for a in answers],
            ven_id=self.ven_id,
        )

    # -- reports ----------------------------------------------------------------------------

    async def _register_reports(self) -> None:
        catalogue = report_catalogue(self.settings.resource, 1.0, self._clock.now())
        kind, reply = await self._link.request(
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
            r_ids = tuple(str(p.get("r_id")) for p in spec.get("specifier_payloads") or [])
            rid = str(request.get("report_request_id"))
            seconds = every.total_seconds() if isinstance(every, timedelta) else 0.0
            self.requests[rid] = ReportRequest(
                rid, str(specifier), r_ids, seconds if seconds > 0 else None, now
            )
            accepted.append(rid)
        if not accepted:
            return
        await self._link.request(
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
            await self._link.request(
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
    publisher.add(ven)
    return ven
