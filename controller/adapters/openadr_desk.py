"""The VEN's events desk: what each event of a VTN's oadrDistributeEvent does to the
inbox, and the opt response it earns. No wire and no openleadr: the VEN
(controller/adapters/openadr.py) hands it parsed events and sends the answers.

- The same (event, modification, cancelled or not) again is answered as before without
  a second journal row: VTNs re-send every event on every distribution.
- A distribute is the VTN's full list (2.0b): an event held from this VTN that it no
  longer lists is cancelled ("implied cancel"), journaled as such.
- An operator's opt-out is journaled, withdraws the held signal, and only then is optOut
  queued for the VTN; it survives a restart (rebuilt from the journal's rows) and later
  modifications of that event are declined.
- At most MAX_EVENTS_HELD events of one VTN are held; more are refused with a reason.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from controller.clock import Clock
from controller.core.signals import Cancel
from controller.intake.inbox import Inbox, Outcome
from controller.intake.openadr_events import (
    EventKey,
    EventRules,
    Refused,
    Translated,
    event_json,
    opt_out_revision,
    revision,
    signal_id,
    translate,
)

log = structlog.get_logger("curtaild.openadr")

TRANSPORT = "openadr"
OPT_IN, OPT_OUT = "optIn", "optOut"
OK = 200
INVALID_DATA = 454  # OpenADR status codes (openleadr.enums.STATUS_CODES)
SIGNAL_NOT_SUPPORTED = 460
OTHER_ERROR = 469
ANSWERS_KEPT = 1000  # answers remembered to re-send, not re-journal
MAX_EVENTS_HELD = 100  # events of one VTN held at once; a programme sends a handful
_OPERATOR = "opted out by "  # the detail of an operator's opt-out row


class OptOutError(Exception):
    """An operator's opt-out that could not be done: no such event held from this VTN,
    or the journal could not take it (nothing changed, nothing sent)."""

    def __init__(self, detail: str, *, status: int = 409) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status  # the operator API's answer: 404 no such event, 503 retry


@dataclass(frozen=True, slots=True)
class Answer:
    """The opt response to one (event, modification)."""

    key: EventKey
    opt: str
    code: int
    detail: str


class EventDesk:
    def __init__(self, *, inbox: Inbox, clock: Clock, source: str, rules: EventRules) -> None:
        self._inbox = inbox
        self._clock = clock
        self.source = source
        self.rules = rules
        self.opted_out: dict[str, str] = {}  # signal id -> the operator's reason
        self.implied_cancels = 0
        self._answers: OrderedDict[tuple[str, int, bool], Answer] = OrderedDict()
        self._outbox: list[Answer] = []  # opt responses not tied to a distribute (opt-outs)

    # -- the operator's opt-outs --------------------------------------------------------------

    def restore(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Rebuild the operator's opt-outs from the journal's signal rows (oldest first):
        an operator's `opted-out` row followed by the withdrawal it made."""
        pending: dict[str, str] = {}
        prefix = f"{self.source}:"
        for row in rows:
            sid = row.get("signal_id")
            if not isinstance(sid, str) or not sid.startswith(prefix):
                continue
            detail = str(row.get("detail") or "")
            if row.get("verdict") == "opted-out" and detail.startswith(_OPERATOR):
                pending[sid] = detail.removeprefix(_OPERATOR).partition(": ")[2] or detail
            elif row.get("type") == "cancel" and row.get("verdict") == "received":
                reason = pending.pop(sid, None)
                if reason is not None:
                    self.opted_out[sid] = reason
        if self.opted_out:
            log.info("openadr operator opt-outs restored", signals=sorted(self.opted_out))

    def opt_out(self, event_id: str, reason: str, *, by: str) -> Outcome:
        """Stop honouring an event: journaled with the reason, the held signal withdrawn
        (a cancel on the revision between the VTN's modifications), and only then optOut
        queued for the VTN. Later modifications of it are answered optOut too."""
        sid = signal_id(self.source, event_id)
        held = self._inbox.book.held.get(sid)
        if held is None or held.source != self.source:  # only what this VTN sent
            raise OptOutError(f"no event {event_id!r} from the VTN is held", status=404)
        modification = (held.signal.revision - 1) // 2
        body = json.dumps({"opt_out": event_id, "by": by, "reason": reason}).encode()
        noted = self._inbox.note_signal(
            TRANSPORT,
            self.source,
            body,
            signal_id=sid,
            revision=held.signal.revision,
            kind=held.signal.kind,
            verdict="opted-out",
            detail=f"{_OPERATOR}{by}: {reason}",
        )
        if not noted:
            raise OptOutError("the journal is unavailable; nothing changed: retry", status=503)
        cancel = Cancel(sid, opt_out_revision(modification), self._clock.now())
        outcome = self._inbox.submit_signal(TRANSPORT, self.source, cancel, body)
        if outcome.status != "received":
            raise OptOutError(f"the withdrawal was not accepted: {outcome.detail}")
        self.opted_out[sid] = reason
        key = EventKey(event_id, modification, sid, held.signal.revision)
        answer = Answer(key, OPT_OUT, OK, f"opted out: {reason}")
        self._remember((event_id, modification, False), answer)
        self._outbox.append(answer)
        return outcome

    def take_outbox(self) -> list[Answer]:
        """The queued opt responses, the queue emptied before anything is awaited."""
        answers, self._outbox = self._outbox, []
        return answers

    def requeue(self, answers: list[Answer]) -> None:
        """Answers whose sending failed: first in line for the next try."""
        self._outbox[:0] = answers

    @property
    def has_outbox(self) -> bool:
        return bool(self._outbox)

    # -- a distribution -----------------------------------------------------------------------

    def distribute(
        self, events: Sequence[Mapping[str, Any]], refused: Sequence[Mapping[str, Any]]
    ) -> list[Answer]:
        """One full oadrDistributeEvent: the implied cancels first (they make room), then
        each event; the answers the VTN asked for, in order."""
        listed = {_event_id(e) for e in events} | {str(r.get("event_id")) for r in refused}
        self._implied_cancels(listed)
        answers = []
        for event in events:
            answer = self._answer(event)
            if answer.key.response_required:
                answers.append(answer)
        answers.extend(self._unreadable(r) for r in refused)
        return answers

    def _implied_cancels(self, listed: set[str]) -> None:
        prefix = f"{self.source}:"
        for sid, held in list(self._inbox.book.held.items()):
            if held.source != self.source or not sid.startswith(prefix):
                continue
            event_id = sid.removeprefix(prefix)
            if event_id in listed:
                continue
            detail = "absent from the VTN's full oadrDistributeEvent: an implied cancel (2.0b)"
            body = json.dumps({"implied_cancel": event_id, "detail": detail}).encode()
            rev = held.signal.revision + 1
            self._inbox.note_signal(
                TRANSPORT,
                self.source,
                body,
                signal_id=sid,
                revision=rev,
                kind="cancel",
                verdict="implied-cancel",
                detail=detail,
            )
            outcome = self._inbox.submit_signal(
                TRANSPORT, self.source, Cancel(sid, rev, self._clock.now()), body
            )
            self.implied_cancels += 1
            log.info("openadr implied cancel", signal=sid, outcome=outcome.status)

    def _unreadable(self, refused: Mapping[str, Any]) -> Answer:
        """An event the parser could not read: refused alone, once per modification."""
        event_id = str(refused.get("event_id"))[:100]
        raw_mod = refused.get("modification_number")
        modification = int(raw_mod) if isinstance(raw_mod, str) and raw_mod.isdigit() else 0
        modification = min(modification, 2**30 - 2)
        cache = (event_id, modification, False)
        seen = self._answers.get(cache)
        if seen is not None:
            return seen
        sid = signal_id(self.source, event_id)
        key = EventKey(event_id, modification, sid, revision(modification))
        reason = str(refused.get("reason"))
        body = json.dumps({"unreadable_event": event_id, "reason": reason}).encode()
        outcome = self._inbox.refuse_signal(
            TRANSPORT, self.source, body, reason, signal_id=sid, revision=key.revision
        )
        answer = Answer(key, OPT_OUT, INVALID_DATA, reason)
        if outcome.status != "unavailable":
            self._remember(cache, answer)
        return answer

    def _answer(self, event: Mapping[str, Any]) -> Answer:
        """Translate and admit one event, or repeat the answer it earned before."""
        translation = translate(event, self.rules, source=self.source, now=self._clock.now())
        key = translation.key
        cancelled = isinstance(translation, Translated) and isinstance(translation.signal, Cancel)
        cache = (key.event_id, key.modification, cancelled)
        seen = self._answers.get(cache)
        if seen is not None:
            return seen
        answer = self._decide(translation, event_json(event))
        if answer.code != OTHER_ERROR:  # a failed journal: try again next time
            self._remember(cache, answer)
        return answer

    def _remember(self, cache: tuple[str, int, bool], answer: Answer) -> None:
        self._answers[cache] = answer
        self._answers.move_to_end(cache)
        while len(self._answers) > ANSWERS_KEPT:
            self._answers.popitem(last=False)

    def _decide(self, translation: Refused | Translated, body: bytes) -> Answer:
        key = translation.key
        if isinstance(translation, Refused):
            return self._refuse(key, translation.reason, body)
        signal = translation.signal
        if translation.test:
            self._inbox.note_signal(
                TRANSPORT,
                self.source,
                body,
                signal_id=signal.id,
                revision=signal.revision,
                kind=signal.kind,
                verdict="test",
                detail="test event: journaled, not acted on",
            )
            return Answer(key, OPT_IN, OK, "test event: not acted on")
        if isinstance(signal, Cancel):
            return self._cancel(key, signal, translation.completed, body)
        reason = self.opted_out.get(signal.id) or translation.opt_out
        if reason is not None:
            return self._decline(key, signal.id, signal.kind, reason, body)
        if signal.id not in self._inbox.book.held and self._held_count() >= MAX_EVENTS_HELD:
            return self._refuse(
                key,
                f"the VEN already holds {MAX_EVENTS_HELD} events of this VTN, its limit; "
                "a later modification can be admitted once some have ended",
                body,
            )
        outcome = self._inbox.submit_signal(TRANSPORT, self.source, signal, body)
        return self._from_outcome(key, outcome)

    def _cancel(self, key: EventKey, signal: Cancel, completed: bool, body: bytes) -> Answer:
        held = self._inbox.book.held.get(signal.id)
        if completed and held is None:
            return Answer(key, OPT_IN, OK, "event completed: nothing to do")
        self.opted_out.pop(signal.id, None)
        # A cancel under the modification of the event it cancels (or after our own
        # withdrawal) still needs a revision above what the book has seen.
        seen = self._inbox.book.revisions.get(signal.id)
        if seen is not None and seen[0] >= signal.revision:
            signal = Cancel(signal.id, seen[0] + 1, signal.issued_at)
        outcome = self._inbox.submit_signal(TRANSPORT, self.source, signal, body)
        return self._from_outcome(key, outcome)

    def _refuse(self, key: EventKey, reason: str, body: bytes) -> Answer:
        outcome = self._inbox.refuse_signal(
            TRANSPORT, self.source, body, reason, signal_id=key.signal_id, revision=key.revision
        )
        if outcome.status == "unavailable":
            return Answer(key, OPT_OUT, OTHER_ERROR, outcome.detail)
        code = SIGNAL_NOT_SUPPORTED if "acts on" in reason else INVALID_DATA
        return Answer(key, OPT_OUT, code, reason)

    def _held_count(self) -> int:
        return sum(1 for h in self._inbox.book.held.values() if h.source == self.source)

    def _decline(self, key: EventKey, sid: str, kind: str, reason: str, body: bytes) -> Answer:
        """Opted out (a config rule, or the operator earlier): journaled with the reason;
        a modification of an event held so far withdraws it."""
        noted = self._inbox.note_signal(
            TRANSPORT,
            self.source,
            body,
            signal_id=sid,
            revision=key.revision,
            kind=kind,
            verdict="opted-out",
            detail=f"opted out: {reason}",
        )
        if not noted:
            return Answer(key, OPT_OUT, OTHER_ERROR, "journal unavailable; answered again later")
        if sid in self._inbox.book.held:
            cancel = Cancel(sid, opt_out_revision(key.modification), self._clock.now())
            outcome = self._inbox.submit_signal(TRANSPORT, self.source, cancel, body)
            if outcome.status == "unavailable":
                return Answer(key, OPT_OUT, OTHER_ERROR, outcome.detail)
        return Answer(key, OPT_OUT, OK, f"opted out: {reason}")

    @staticmethod
    def _from_outcome(key: EventKey, outcome: Outcome) -> Answer:
        if outcome.status in ("received", "duplicate"):
            return Answer(key, OPT_IN, OK, outcome.detail)
        if outcome.status == "unavailable":
            return Answer(key, OPT_OUT, OTHER_ERROR, outcome.detail)
        return Answer(key, OPT_OUT, INVALID_DATA, outcome.detail)


def _event_id(event: Mapping[str, Any]) -> str:
    descriptor = event.get("event_descriptor")
    return str(descriptor.get("event_id")) if isinstance(descriptor, Mapping) else ""
