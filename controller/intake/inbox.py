"""The inbox: adapters hand signals in here; it never touches hardware.

It authenticates, validates, decides duplicate / stale / new against the signal book,
journals the outcome durably, acknowledges, and wakes the supervisor. The book changes
only after the journal write succeeded, so a failed write changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog

from controller.clock import Clock
from controller.core.signals import (
    Admission,
    Cancel,
    Curtailment,
    Grant,
    Heartbeat,
    Held,
    Override,
    SignalBook,
    Verdict,
    schedule_source,
)
from controller.intake.schedule import (
    Schedule,
    ScheduleError,
    ScheduleIdTakenError,
    check_held,
    parse,
    sha256,
    shown,
)
from controller.intake.wire import (
    AUCTION,
    MAX_BODY_BYTES,
    InvalidSignalError,
    TooLargeError,
    WireError,
    authenticate,
    open_envelope,
    parse_signal,
)
from controller.record.journal import Journal, JournalError
from controller.record.publish import Ack, Publisher

log = structlog.get_logger("curtaild.inbox")

QUIET = timedelta(seconds=1)  # at most one unauthenticated rejection journaled per second

HTTP_STATUS = {
    Verdict.RECEIVED: 202,
    Verdict.DUPLICATE: 200,
    Verdict.STALE: 409,
    Verdict.REJECTED: 409,  # conflicts with what is held (e.g. a type change)
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one submitted signal."""

    status: str  # received | duplicate | stale | rejected | unavailable
    detail: str
    http_status: int
    signal_id: str | None = None
    revision: int | None = None
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class Admitted:
    """A signal that changed the book, for the supervisor to turn into deadlines."""

    signal: Curtailment | Grant | Cancel
    admission: Admission
    source: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Uploaded:
    """An auction schedule admitted: its grants, as held."""

    sha256: str
    by: str
    held: tuple[Held, ...]


def bare_cancel(book: SignalBook, cancel: Cancel) -> Cancel | None:
    """A grid cancel naming an uploaded grant by its bare auction reference, aimed at the
    grant (`auction:<reference>`); None when it names a grid signal. The grid knows the
    award by its reference, so a cancel of it must reach the grant; but a grid signal
    holding that id always comes first. Safe either way: a cancel only lowers what may be
    drawn, and the grid namespace is left untouched, so a later grid curtailment with that
    id is still admitted."""
    # An id the grid has ever used is the grid's, held or not (a repeated cancel of a
    # grid signal must not reach an award uploaded under the same reference).
    if cancel.id.startswith(AUCTION) or cancel.id in book.revisions:
        return None
    target = AUCTION + cancel.id
    known = book.revisions.get(target)
    if known is None or known[1] != "grant":  # never uploaded (a cancel alone names none)
        return None
    return replace(cancel, id=target)


class Inbox:
    """The single door for grid signals, whatever transport carried them."""

    def __init__(
        self,
        *,
        journal: Journal,
        clock: Clock,
        keys: Mapping[str, bytes],
        replay_window_s: float,
        book: SignalBook,
        publisher: Publisher,
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._keys = dict(keys)
        self._window_s = replay_window_s
        self._publisher = publisher
        self.book = book
        started = clock.now()
        self.last_heard: dict[str, datetime] = dict.fromkeys(keys, started)
        self.overrides: Sequence[Override] = ()
        self.admitted: list[Admitted] = []
        self.wake = asyncio.Event()
        self._unauthenticated_at: datetime | None = None
        self._suppressed = 0
        self.unjournaled = 0  # unauthenticated rejections counted but not journaled
        self.internal_errors = 0  # signals whose handling met a bug (see _contain)
        self.heartbeats = 0

    def submit_http(self, body: bytes, ts: str | None, signature: str | None) -> Outcome:
        """POST /grid/v1/signals: headers carry the signature."""
        source = None
        try:
            try:
                source = authenticate(
                    self._keys,
                    ts,
                    signature,
                    body,
                    now=self._clock.wall_time(),
                    window_s=self._window_s,
                )
            except WireError as err:
                return self._refuse("http", None, body, err)
            return self._accept("http", source, body)
        except Exception as err:  # noqa: BLE001 - no input may stop the daemon
            return self._contain("http", source, body, err)

    def submit_mqtt(self, payload: bytes) -> Outcome:
        """A message on the signals topic: an envelope carries the signature."""
        source = None
        try:
            try:
                source, body = open_envelope(
                    payload, self._keys, now=self._clock.wall_time(), window_s=self._window_s
                )
            except WireError as err:
                return self._refuse("mqtt", None, payload, err)
            return self._accept("mqtt", source, body)
        except Exception as err:  # noqa: BLE001 - no input may stop the daemon
            return self._contain("mqtt", source, payload, err)

    def submit_signal(
        self, transport: str, source: str, signal: Curtailment | Cancel, body: bytes
    ) -> Outcome:
        """A signal an adapter has already authenticated and translated from its own
        protocol (OpenADR: the VTN over mutual TLS): admitted, journaled with `body` as it
        arrived, acknowledged and woken on like every other signal. Liveness is the
        adapter's to report (`heard`): an operator's opt-out is not the VTN speaking."""
        try:
            return self._admit(transport, source, body, signal, self._clock.now())
        except Exception as err:  # noqa: BLE001 - no input may stop the daemon
            return self._contain(transport, source, body, err)

    def refuse_signal(
        self,
        transport: str,
        source: str,
        body: bytes,
        reason: str,
        *,
        signal_id: str | None = None,
        revision: int | None = None,
    ) -> Outcome:
        """Input an adapter could not translate: journaled and acknowledged `rejected`
        with `reason`, as the wire's refusals are; nothing held changes."""
        err = InvalidSignalError(reason, signal_id=signal_id, revision=revision)
        return self._refuse(transport, source, body, err)

    def note_signal(
        self,
        transport: str,
        source: str,
        body: bytes,
        *,
        signal_id: str | None,
        revision: int | None,
        kind: str | None,
        verdict: str,
        detail: str,
    ) -> bool:
        """A signal kept as evidence but not admitted (a test event, an opt-out): one
        journal row with `verdict`; False if the journal could not take it."""
        try:
            self._journal.record_signal(
                at=self._clock.now(),
                transport=transport,
                source=source,
                signal_id=signal_id,
                revision=revision,
                kind=kind,
                verdict=verdict,
                detail=detail,
                body=body[:4096],
            )
        except JournalError as err:
            log.warning("journal unavailable; signal not noted", signal=signal_id, error=str(err))
            return False
        log.info("signal noted", signal=signal_id, verdict=verdict, detail=detail)
        return True

    def heard(self, source: str) -> None:
        """Proof of life from a source that has no heartbeat signal (an OpenADR poll)."""
        self.last_heard[source] = self._clock.now()

    def submit_oversized(self, size: int | None) -> Outcome:
        """An HTTP body refused for its size before it was read: answered, and journaled
        or counted like any unauthenticated refusal."""
        detail = (
            f"body is {size} bytes; the limit is {MAX_BODY_BYTES}"
            if size is not None
            else f"body exceeds {MAX_BODY_BYTES} bytes"
        )
        return self._refuse("http", None, b"", TooLargeError(detail))

    def upload_schedule(
        self, data: bytes, content_type: str | None, *, by: str, role: str, cap_w: int
    ) -> Uploaded:
        """An operator's auction schedule (the API's upload): read, judged against the
        book, admitted whole. A refusal is journaled and raised (ScheduleError); a journal
        that cannot be written raises JournalError. Either way nothing held changed."""
        now = self._clock.now()
        try:
            schedule = parse(data, content_type, now=now, cap_w=cap_w)
            return self.submit_schedule(schedule, by=by, role=role)
        except ScheduleError as err:
            self.refuse_schedule(data, by, err)
            raise

    def submit_schedule(self, schedule: Schedule, *, by: str, role: str) -> Uploaded:
        """Every row of `schedule` as a grant with a pushed grant's semantics, or none:
        journaled in one transaction before the book changes, then the loop is woken."""
        now = self._clock.now()
        check_held(schedule, self.book)
        source = schedule_source(by)
        book = self.book
        admitted: list[tuple[Grant, Admission, bytes, str]] = []
        for row in schedule.rows:
            grant = row.grant(now)
            admission = book.admit(grant, source, now)
            if admission.verdict is not Verdict.RECEIVED:  # check_held saw every id
                raise ScheduleIdTakenError(
                    f"{row.where}: {admission.detail}",
                    row=row.number,
                    field=row.reference_field,
                    signal_id=grant.id,
                )
            book = admission.book
            body = {
                **row.as_json(),
                "type": grant.kind,
                "id": grant.id,
                "revision": grant.revision,
                "granted_kw": grant.granted_w / 1000,
                "uploaded_by": by,
                "role": role,
                "file_sha256": schedule.sha256,
            }
            detail = (
                f"new; row {row.number} of a {schedule.format} schedule uploaded by {by}, "
                f"sha256 {schedule.sha256}"
            )
            admitted.append((grant, admission, json.dumps(body).encode(), detail))
        ids = [grant.id for grant, *_ in admitted]
        event = {
            "by": by,
            "role": role,
            "what": "schedule uploaded",
            "why": f"{len(ids)} auction grant(s) from a {schedule.format} file",
            "sha256": schedule.sha256,
            "grants": ids,
        }
        self._journal.record_schedule(
            now,
            [(book.held[g.id], detail, body) for g, _, body, detail in admitted],
            (f"schedule:{schedule.sha256[:16]}", event),
        )
        self.book = book
        # Each with the whole schedule's book: a row's deadline sees its neighbours.
        self.admitted.extend(
            Admitted(grant, replace(admission, book=book), source, now)
            for grant, admission, _, _ in admitted
        )
        self.wake.set()
        log.info("schedule admitted", by=by, sha256=schedule.sha256, grants=ids)
        return Uploaded(schedule.sha256, by, tuple(book.held[i] for i in ids))

    def refuse_schedule(self, data: bytes, by: str, err: ScheduleError) -> None:
        """A refused upload, journaled as any refused signal is (an operator's: each one;
        the caller answers it). `data`: what was read of it."""
        digest = sha256(data)
        reason = shown(err.detail)  # parse escapes what it echoes; this is the backstop
        log.warning("schedule refused", by=by, sha256=digest, reason=reason)
        try:
            self._journal.record_signal(
                at=self._clock.now(),
                transport="schedule",
                source=schedule_source(by),
                signal_id=err.signal_id,
                revision=None,
                kind=None,
                verdict="rejected",
                detail=f"{reason} (file sha256 {digest}, {len(data)} bytes)",
                body=data[:4096],
            )
        except JournalError as jerr:
            log.debug("journal unavailable; refused schedule not journaled", error=str(jerr))

    def prune(self, now: datetime) -> None:
        """Forget signals that ended a while ago (their revisions stay known)."""
        pruned = self.book.prune(now)
        if pruned is not self.book:
            gone = [k for k in self.book.held if k not in pruned.held]
            self._journal.prune_held(gone)
            self.book = pruned

    def _accept(self, transport: str, source: str, body: bytes) -> Outcome:
        now = self._clock.now()
        self.last_heard[source] = now
        try:
            signal = parse_signal(body)
        except WireError as err:
            return self._refuse(transport, source, body, err)
        if isinstance(signal, Heartbeat):
            self.heartbeats += 1  # liveness, not evidence: counted, not journaled
            return Outcome("received", "heartbeat", 202, kind="heartbeat")
        return self._admit(transport, source, body, signal, now)

    def _admit(
        self,
        transport: str,
        source: str,
        body: bytes,
        signal: Curtailment | Grant | Cancel,
        now: datetime,
    ) -> Outcome:
        end = getattr(signal, "end", None)
        if end is not None and end <= now:
            # Never in force here: holding it would only earn a "missed" for nothing.
            ended = InvalidSignalError(
                f"end {end.isoformat()} has already passed",
                signal_id=signal.id,
                revision=signal.revision,
            )
            return self._refuse(transport, source, body, ended)
        named = signal.id  # as the grid named it: its ack and answer say this id
        if isinstance(signal, Cancel) and (aimed := bare_cancel(self.book, signal)) is not None:
            signal = aimed
        admission = self.book.admit(signal, source, now)
        if signal.id != named:
            admission = replace(
                admission,
                detail=f"{admission.detail} of uploaded grant {signal.id}, named by its bare "
                f"reference {named} (no grid signal holds {named})",
            )
        verdict = admission.verdict
        change = None
        if verdict is Verdict.RECEIVED:
            change = (admission.book.revisions[signal.id][1], admission.book.held.get(signal.id))
        try:
            self._journal.record_signal(
                at=now,
                transport=transport,
                source=source,
                signal_id=signal.id,
                revision=signal.revision,
                kind=signal.kind,
                verdict=verdict.value,
                detail=admission.detail,
                body=body,
                book_change=change,
            )
        except JournalError as err:
            # Journal.error logged the failure once; each signal refused for it is a warning.
            log.warning(
                "journal unavailable; signal not accepted", signal=signal.id, error=str(err)
            )
            detail = "journal unavailable; nothing was changed: retry"
            # Over MQTT the broker already has our PUBACK: the ack is the only answer.
            self._publisher.ack(Ack(named, signal.revision, "rejected", now, detail))
            return Outcome("unavailable", detail, 503, named, signal.revision, signal.kind)
        if verdict is Verdict.RECEIVED:
            self.book = admission.book
            self.admitted.append(Admitted(signal, admission, source, now))
            self.wake.set()
            log.info(
                "signal received",
                signal=signal.id,
                revision=signal.revision,
                kind=signal.kind,
                source=source,
                transport=transport,
                detail=admission.detail,
            )
        ack_status = "rejected" if verdict in (Verdict.STALE, Verdict.REJECTED) else verdict.value
        self._publisher.ack(Ack(named, signal.revision, ack_status, now, admission.detail))
        return Outcome(
            verdict.value,
            admission.detail,
            HTTP_STATUS[verdict],
            named,
            signal.revision,
            signal.kind,
        )

    def _contain(
        self, transport: str, source: str | None, payload: bytes, err: Exception
    ) -> Outcome:
        """A bug met by one message: logged with the message's identity, journaled and
        counted, and the door stays open. The book changes only after its journal write,
        and nothing can fail after that, so whatever failed changed nothing held."""
        self.internal_errors += 1
        digest = hashlib.sha256(payload).hexdigest()[:16]
        log.error(
            "signal handling failed; the signal changed nothing",
            transport=transport,
            source=source,
            payload_sha256=digest,
            payload_bytes=len(payload),
            exc_info=err,
        )
        reason = f"internal error ({type(err).__name__}); the signal changed nothing"
        now = self._clock.now()
        with contextlib.suppress(JournalError):  # Journal.error has said why
            self._journal.record_signal(
                at=now,
                transport=transport,
                source=source,
                signal_id=None,
                revision=None,
                kind=None,
                verdict="rejected",
                detail=reason,
                body=payload[:4096],
            )
        if source is not None or transport == "mqtt":  # as _refuse answers
            self._publisher.ack(Ack(None, None, "rejected", now, reason))
        return Outcome("rejected", reason, 500)

    def _refuse(self, transport: str, source: str | None, body: bytes, err: WireError) -> Outcome:
        now = self._clock.now()
        if source is None and transport == "http":
            # Anyone can reach the endpoint: answer every request, but journal (an fsync)
            # and log at most one unauthenticated rejection a second, counting the rest,
            # so a flood cannot stall the control loop or grow the journal without bound.
            # (MQTT publishers are vouched for by the broker's own authentication.)
            if self._unauthenticated_at is not None and now - self._unauthenticated_at < QUIET:
                self._suppressed += 1
                self.unjournaled += 1
                return Outcome("rejected", err.reason, err.status, err.signal_id, err.revision)
            self._unauthenticated_at = now
            if self._suppressed:
                err = type(err)(
                    f"{err.reason} (and {self._suppressed} more unauthenticated "
                    f"requests in the last second)"
                )
                self._suppressed = 0
        log.warning("signal rejected", transport=transport, source=source, reason=err.reason)
        try:
            self._journal.record_signal(
                at=now,
                transport=transport,
                source=source,
                signal_id=err.signal_id,
                revision=err.revision,
                kind=None,
                verdict="rejected",
                detail=err.reason,
                body=body[:4096],
            )
        except JournalError as jerr:
            log.debug("journal unavailable; rejected signal not journaled", error=str(jerr))
        if source is not None or transport == "mqtt":
            # The broker vouches for MQTT publishers; an unknown HTTP caller gets its answer
            # in the response and no broadcast on the grid's acks topic.
            self._publisher.ack(Ack(err.signal_id, err.revision, "rejected", now, err.reason))
        return Outcome("rejected", err.reason, err.status, err.signal_id, err.revision)
