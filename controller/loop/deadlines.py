"""The grid's deadlines: made from admitted signals and grant ends, judged against the
measured draw, journaled before they are kept or acknowledged."""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import structlog

from controller.core.signals import (
    Admission,
    Grant,
    GridPolicy,
    Obligation,
    ObligationStatus,
    SignalBook,
    grant_end_obligations,
    obligation_for,
    track,
    withdraw,
)
from controller.intake.inbox import Admitted, Inbox
from controller.loop.ledger import LoopObserver
from controller.record.journal import Journal
from controller.record.publish import Ack, Publisher

log = structlog.get_logger("curtaild.deadlines")

KEEP_FINISHED = 200  # finished deadlines kept in memory for status and the demo
SHORT = timedelta(days=1)  # signals no longer than this are found by their start alone


class Window:
    """One book's standing signals indexed by start, so that many admissions sharing it
    (an uploaded schedule's rows) each arbitrate only what can bind near their own start:
    one sort, not one whole-book arbitration per row. Exact: arbitrate() at `t` looking
    `lead` ahead reads only signals in force somewhere in [t, t + lead]."""

    def __init__(self, book: SignalBook) -> None:
        self._book = book
        spans = [(h.starts_at, key, h) for key, h in book.held.items()]
        short = sorted(
            (s for s in spans if s[2].signal.end is not None and s[2].signal.end - s[0] <= SHORT),
            key=lambda s: s[0],
        )
        self._short = short
        self._starts = [s[0] for s in short]
        self._long = [s for s in spans if s[2].signal.end is None or s[2].signal.end - s[0] > SHORT]

    def around(
        self, admission: Admission, grant: Grant, now: datetime, policy: GridPolicy
    ) -> Admission:
        """`admission` with a book of only the signals that can bind where `grant`'s
        obligation is judged (obligation_for: at max(its start, now))."""
        at = max(self._book.held[grant.id].starts_at, now)
        ahead = at + policy.grant_end_lead
        lo = bisect.bisect_left(self._starts, at - SHORT)
        hi = bisect.bisect_right(self._starts, ahead)
        near = {
            key: held
            for start, key, held in (*self._short[lo:hi], *self._long)
            if start <= ahead and (held.signal.end is None or held.signal.end > at)
        }
        near[grant.id] = self._book.held[grant.id]
        return replace(admission, book=SignalBook(near, self._book.revisions))


class Deadlines:
    """Every pending deadline, and the latest finished ones."""

    def __init__(
        self,
        *,
        inbox: Inbox,
        journal: Journal,
        publisher: Publisher,
        policy: GridPolicy,
        pending: Sequence[Obligation],
        known_keys: set[str],
    ) -> None:
        """`known_keys`: every deadline ever journaled, so a restart never re-creates one
        that was already settled."""
        self._inbox = inbox
        self._journal = journal
        self._publisher = publisher
        self._policy = policy
        self._known = {o.key for o in pending} | known_keys
        self.pending: list[Obligation] = list(pending)
        self.finished: deque[Obligation] = deque(maxlen=KEEP_FINISHED)
        self.observer: LoopObserver | None = None

    def nearest_due(self, now: datetime) -> datetime | None:
        """When the draw must next be within a limit: the nearest running deadline."""
        return min(
            (
                o.due_at
                for o in self.pending
                if o.status is ObligationStatus.PENDING and o.starts_at <= now < o.due_at
            ),
            default=None,
        )

    def running(self, now: datetime) -> bool:
        """A deadline is running now (one that starts tomorrow does not need fast ticks)."""
        return any(
            o.status is ObligationStatus.PENDING and o.starts_at <= now for o in self.pending
        )

    def absorb(self, admitted: Sequence[Admitted], measured_by: str) -> None:
        """The deadlines admitted signals carry, and the ones they withdraw. Journaled
        first: if that fails (JournalError), nothing is kept and the caller offers the
        same signals again."""
        pending = list(self.pending)
        known: set[str] = set()
        changed: list[Obligation] = []
        shared = Counter(id(item.admission.book) for item in admitted)
        windows: dict[int, Window] = {}  # per book several admissions share (a schedule's)
        for item in admitted:
            admission = item.admission
            if admission.replaced is not None or admission.withdrawn is not None:
                # The revision this one replaces (or cancels) no longer binds the farm.
                pending, gone = withdraw(pending, item.signal.id)
                changed.extend(gone)
            book = id(admission.book)
            if shared[book] > 1 and isinstance(item.signal, Grant):
                window = windows.get(book) or windows.setdefault(book, Window(admission.book))
                admission = window.around(admission, item.signal, item.received_at, self._policy)
            ob = obligation_for(
                admission,
                item.signal,
                self._policy,
                item.received_at,
                last_heard=self._inbox.last_heard,
            )  # the grid's promise: judged against the grid's limits, not an operator's
            if ob is not None and ob.key not in self._known and ob.key not in known:
                known.add(ob.key)
                pending.append(ob)
                changed.append(ob)
        self._journal.record_obligations(changed, measured_by)
        self._known |= known
        self.pending = pending

    def add(self, ob: Obligation) -> None:
        """A deadline of the loop's own (the frequency relay's), journaled by the caller."""
        self._known.add(ob.key)
        self.pending.append(ob)

    def judge(self, now: datetime, measured_w: int | None, measured_by: str) -> None:
        """Grant ends coming due, and every pending deadline against the measured draw.
        Journaled before it is acknowledged or kept: a failed write changes nothing."""
        ends = grant_end_obligations(
            self._inbox.book, self._policy, now, self._known, last_heard=self._inbox.last_heard
        )
        obligations, changed = track([*self.pending, *ends], measured_w, now)
        self._journal.record_obligations([*ends, *changed], measured_by)
        self._known.update(ob.key for ob in ends)
        for ob in changed:
            self._acknowledge(ob, now, measured_by)
        for ob in obligations:
            if ob.status is not ObligationStatus.PENDING:
                self.finished.append(ob)
        self.pending = [o for o in obligations if o.status is ObligationStatus.PENDING]

    def _acknowledge(self, ob: Obligation, now: datetime, measured_by: str) -> None:
        kind = ob.status.value
        measured_kw = (ob.measured_w or 0) / 1000
        detail = (
            f"measured {measured_kw:g} kW <= {ob.limit_w / 1000:g} kW after "
            f"{ob.time_to_target_s or 0:.1f} s ({measured_by})"
            if ob.status is ObligationStatus.REACHED
            else f"measured {measured_kw:g} kW > {ob.limit_w / 1000:g} kW "
            f"at the deadline {ob.due_at:%H:%M:%S} ({measured_by})"
            if ob.measured_w is not None
            else f"draw unknown at the deadline {ob.due_at:%H:%M:%S} (the meter is stale)"
        )
        (log.info if ob.status is ObligationStatus.REACHED else log.warning)(
            "deadline " + kind,
            signal=ob.signal_id,
            revision=ob.revision,
            kind=ob.kind,
            detail=detail,
        )
        self._publisher.ack(Ack(ob.signal_id, ob.revision, kind, now, detail))
        if self.observer is not None:
            self.observer.deadline(ob.kind, kind)
