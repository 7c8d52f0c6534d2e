"""Grid signals, the book of held signals, arbitrate() and deadline obligations. Pure.

A signal is identified by (id, revision): the same pair again is a duplicate, a lower
revision than the one held is stale, a higher one replaces it. A cancel is a revision too,
so a cancel that overtakes its signal still wins when the signal arrives late.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from controller.core.model import Limit


@dataclass(frozen=True, slots=True)
class Curtailment:
    """Draw at most `limit_w` from `start` (or receipt) + `deadline_s` until `end`."""

    id: str
    revision: int
    issued_at: datetime
    limit_w: int
    deadline_s: float
    start: datetime | None = None
    end: datetime | None = None
    emergency: bool = False

    kind = "curtailment"


@dataclass(frozen=True, slots=True)
class Grant:
    """Surplus-only markets: up to `granted_w` may be drawn from `start` to `end`."""

    id: str
    revision: int
    issued_at: datetime
    granted_w: int
    start: datetime | None = None
    end: datetime | None = None

    kind = "grant"


@dataclass(frozen=True, slots=True)
class Cancel:
    """Withdraws the signal with this id; its revision must be higher than the one held."""

    id: str
    revision: int
    issued_at: datetime

    kind = "cancel"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Proves the source is alive; never held."""

    issued_at: datetime

    kind = "heartbeat"


GridSignal = Curtailment | Grant | Cancel | Heartbeat
Standing = Curtailment | Grant


@dataclass(frozen=True, slots=True)
class Held:
    """A standing signal and how it reached us."""

    signal: Standing
    source: str
    received_at: datetime

    @property
    def starts_at(self) -> datetime:
        return self.signal.start or self.received_at

    @property
    def uploaded_by(self) -> str | None:
        """Who uploaded it, for a grant from an auction schedule; None for a grid push."""
        return uploaded_by(self.source)


# A grant from an uploaded auction schedule is held with the source "schedule:<who>".
# Configured source ids and token names cannot hold a ':', so it names no grid source.
SCHEDULE_SOURCE = "schedule:"


def schedule_source(by: str) -> str:
    return SCHEDULE_SOURCE + by


def uploaded_by(source: str) -> str | None:
    return source.removeprefix(SCHEDULE_SOURCE) if source.startswith(SCHEDULE_SOURCE) else None


class Verdict(enum.StrEnum):
    RECEIVED = "received"
    DUPLICATE = "duplicate"
    STALE = "stale"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one signal and the book after it."""

    verdict: Verdict
    detail: str
    book: SignalBook
    replaced: Held | None = None
    withdrawn: Held | None = None


@dataclass(frozen=True, slots=True)
class SignalBook:
    """Standing signals by id, and the highest revision and type ever accepted per id."""

    held: Mapping[str, Held] = field(default_factory=dict)
    revisions: Mapping[str, tuple[int, str]] = field(default_factory=dict)

    def admit(
        self, signal: Curtailment | Grant | Cancel, source: str, received_at: datetime
    ) -> Admission:
        """Decide what `signal` does to the book. The book itself never changes."""
        seen = self.revisions.get(signal.id)
        if seen is not None:
            revision, kind = seen
            if signal.revision == revision:
                return Admission(
                    Verdict.DUPLICATE, f"revision {revision} of {signal.id} already received", self
                )
            if signal.revision < revision:
                return Admission(
                    Verdict.STALE,
                    f"revision {signal.revision} is older than "
                    f"revision {revision} already received",
                    self,
                )
            if not isinstance(signal, Cancel) and kind not in (signal.kind, "cancel"):
                return Admission(
                    Verdict.REJECTED,
                    f"{signal.id} is a {kind}; a {signal.kind} cannot replace it",
                    self,
                )
        # A cancel keeps the id's type, so a later revision must still be of that type.
        kind = seen[1] if seen is not None and isinstance(signal, Cancel) else signal.kind
        revisions = {**self.revisions, signal.id: (signal.revision, kind)}
        held = dict(self.held)
        previous = held.pop(signal.id, None)
        if isinstance(signal, Cancel):
            detail = (
                f"cancels revision {previous.signal.revision}"
                if previous
                else "nothing active under this id; lower revisions will be stale"
            )
            return Admission(
                Verdict.RECEIVED, detail, SignalBook(held, revisions), withdrawn=previous
            )
        held[signal.id] = Held(signal, source, received_at)
        detail = f"replaces revision {previous.signal.revision}" if previous else "new"
        return Admission(Verdict.RECEIVED, detail, SignalBook(held, revisions), replaced=previous)

    def prune(self, now: datetime, grace: timedelta = timedelta(minutes=5)) -> SignalBook:
        """Drop signals that ended more than `grace` ago (their revisions stay known)."""
        ended = [
            k
            for k, h in self.held.items()
            if h.signal.end is not None and h.signal.end + grace < now
        ]
        if not ended:
            return self
        return SignalBook({k: h for k, h in self.held.items() if k not in ended}, self.revisions)


class GridMode(enum.StrEnum):
    ALWAYS_ON = "always-on"
    SURPLUS_ONLY = "surplus-only"


class StalePolicy(enum.StrEnum):
    """What a silent signal source means for the limit."""

    HOLD = "hold"  # keep what it last said
    BASE_ALLOWANCE = "base-allowance"  # draw no more than the base allowance
    LIMIT = "limit"  # draw no more than a fixed fallback


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    id: str
    heartbeat_timeout: timedelta | None = None
    on_stale: StalePolicy = StalePolicy.HOLD
    stale_limit_w: int | None = None


@dataclass(frozen=True, slots=True)
class GridPolicy:
    """The site's grid rules, from config."""

    mode: GridMode
    cap_w: int
    base_allowance_w: int = 0
    # Be under the next limit this long before a grant ends: the end is a hard deadline.
    grant_end_lead: timedelta = timedelta(seconds=15)
    # How fast a limit drop without its own deadline (a cancelled grant) must be met.
    response_deadline: timedelta = timedelta(seconds=10)
    sources: tuple[SourcePolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's limit. It can only tighten: arbitrate() takes the minimum."""

    id: str
    limit_w: int
    reason: str
    by: str
    expires_at: datetime | None = None


def curtailment_active(held: Held, now: datetime) -> bool:
    signal = held.signal
    return held.starts_at <= now and (signal.end is None or now < signal.end)


def _grants_at(grants: Sequence[Held], t: datetime) -> list[Held]:
    return sorted(
        (h for h in grants if h.starts_at <= t and (h.signal.end is None or t < h.signal.end)),
        key=lambda h: h.signal.id,
    )


def arbitrate(
    book: SignalBook,
    policy: GridPolicy,
    now: datetime,
    *,
    last_heard: Mapping[str, datetime],
    overrides: Sequence[Override] = (),
    lead: timedelta | None = None,
) -> Limit:
    """The allowed grid draw at `now`: the minimum of every constraint, with the binding ones
    as reasons."""
    constraints: list[tuple[int, str]] = [(policy.cap_w, "site cap")]
    if policy.mode is GridMode.SURPLUS_ONLY:
        constraints.append(_surplus_allowance(book, policy, now, lead))
    for held in sorted(book.held.values(), key=lambda h: h.signal.id):
        signal = held.signal
        if isinstance(signal, Curtailment) and curtailment_active(held, now):
            constraints.append((signal.limit_w, f"curtailment {signal.id} r{signal.revision}"))
    for source in policy.sources:
        silent = stale_for(source, last_heard, now)
        if silent is None or source.on_stale is StalePolicy.HOLD:
            continue
        fallback = (
            policy.base_allowance_w
            if source.on_stale is StalePolicy.BASE_ALLOWANCE
            else source.stale_limit_w
            if source.stale_limit_w is not None
            else policy.base_allowance_w
        )
        why = f"source {source.id} silent for {silent.total_seconds():.0f} s"
        constraints.append((fallback, f"{why}, {source.on_stale.value}"))
    constraints.extend(
        (o.limit_w, f"override {o.id} by {o.by}: {o.reason}")
        for o in overrides
        if o.expires_at is None or now < o.expires_at
    )
    limit_w = min(w for w, _ in constraints)
    reasons = tuple(f"{why}: {_kw(w)}" for w, why in constraints if w == limit_w)
    return Limit(max(0, limit_w), reasons)


def _surplus_allowance(
    book: SignalBook, policy: GridPolicy, now: datetime, lead: timedelta | None
) -> tuple[int, str]:
    """Grants plus the base allowance, judged ahead: a grant's end is a hard boundary, so
    the allowance is the least one at `now` and at every grant boundary within the lead
    (back-to-back grants therefore hand over without a dip)."""
    grants = [h for h in book.held.values() if isinstance(h.signal, Grant)]
    ahead = now + (policy.grant_end_lead if lead is None else lead)
    instants = {now}
    for held in grants:
        for t in (held.starts_at, held.signal.end):
            if t is not None and now < t <= ahead:
                instants.add(t)
    base = policy.base_allowance_w
    best: tuple[int, datetime, list[Held]] | None = None
    for t in sorted(instants):
        active = _grants_at(grants, t)
        total = base + sum(h.signal.granted_w for h in active if isinstance(h.signal, Grant))
        if best is None or total < best[0]:
            best = (total, t, active)
    assert best is not None
    total, when, active = best
    if active:
        names = ", ".join(f"{h.signal.id} r{h.signal.revision}" for h in active)
        label = f"grants {names} + base allowance {_kw(base)}"
    else:
        label = "no active grant: base allowance"
    if when > now:
        label += f" (from {when:%H:%M:%S})"
    return total, label


def stale_for(
    source: SourcePolicy, last_heard: Mapping[str, datetime], now: datetime
) -> timedelta | None:
    """How long `source` has been silent beyond its heartbeat timeout, or None if alive."""
    if source.heartbeat_timeout is None:
        return None
    heard = last_heard.get(source.id)
    if heard is None:
        return None
    silent = now - heard
    return silent if silent > source.heartbeat_timeout else None


class ObligationStatus(enum.StrEnum):
    PENDING = "pending"
    REACHED = "reached"
    MISSED = "missed"
    WITHDRAWN = "withdrawn"  # cancelled before it was due


@dataclass(frozen=True, slots=True)
class Obligation:
    """A promise to the grid: measured draw at or below `limit_w` between `starts_at` and
    `due_at`."""

    key: str
    signal_id: str
    revision: int
    kind: str  # curtailment | grant | cancel | grant-end
    limit_w: int
    starts_at: datetime
    due_at: datetime
    status: ObligationStatus = ObligationStatus.PENDING
    reached_at: datetime | None = None
    measured_w: int | None = None

    @property
    def deadline_s(self) -> float:
        return (self.due_at - self.starts_at).total_seconds()

    @property
    def time_to_target_s(self) -> float | None:
        if self.reached_at is None:
            return None
        return max(0.0, (self.reached_at - self.starts_at).total_seconds())


def obligation_for(
    admission: Admission,
    signal: Curtailment | Grant | Cancel,
    policy: GridPolicy,
    now: datetime,
    *,
    last_heard: Mapping[str, datetime],
    overrides: Sequence[Override] = (),
) -> Obligation | None:
    """The promise an accepted signal creates, or None for duplicates and rejections."""
    if admission.verdict is not Verdict.RECEIVED:
        return None
    key = f"{signal.id}#r{signal.revision}"
    if isinstance(signal, Curtailment):
        held = admission.book.held[signal.id]
        starts = max(held.starts_at, now)
        return Obligation(
            key,
            signal.id,
            signal.revision,
            signal.kind,
            signal.limit_w,
            starts,
            starts + timedelta(seconds=signal.deadline_s),
        )
    starts = now
    if isinstance(signal, Grant):
        starts = max(admission.book.held[signal.id].starts_at, now)
    limit = arbitrate(admission.book, policy, starts, last_heard=last_heard, overrides=overrides)
    return Obligation(
        key,
        signal.id,
        signal.revision,
        signal.kind,
        limit.limit_w,
        starts,
        starts + policy.response_deadline,
    )


def grant_end_obligations(
    book: SignalBook,
    policy: GridPolicy,
    now: datetime,
    known: Iterable[str],
    *,
    last_heard: Mapping[str, datetime],
    overrides: Sequence[Override] = (),
) -> list[Obligation]:
    """Obligations for grants whose end falls within the lead window and are not yet known."""
    if policy.mode is not GridMode.SURPLUS_ONLY:
        return []
    seen = set(known)
    out = []
    for held in book.held.values():
        signal = held.signal
        if not isinstance(signal, Grant) or signal.end is None:
            continue
        key = f"{signal.id}#r{signal.revision}#end"
        begins = signal.end - policy.grant_end_lead
        if key in seen or now < begins or held.starts_at >= signal.end:
            continue
        # What is allowed at the end itself, not looking further ahead.
        limit = arbitrate(
            book,
            policy,
            signal.end,
            last_heard=last_heard,
            overrides=overrides,
            lead=timedelta(0),
        )
        out.append(
            Obligation(
                key,
                signal.id,
                signal.revision,
                "grant-end",
                limit.limit_w,
                max(begins, held.received_at),
                signal.end,
            )
        )
    return out


def track(
    obligations: Sequence[Obligation], measured_w: int | None, now: datetime
) -> tuple[list[Obligation], list[Obligation]]:
    """Advance pending obligations against the measured draw: (all, those that changed).
    None is an unknown draw (a stale meter): it counts as over every limit."""
    result: list[Obligation] = []
    changed: list[Obligation] = []
    for ob in obligations:
        new = ob
        if ob.status is ObligationStatus.PENDING and ob.starts_at <= now:
            if measured_w is not None and measured_w <= ob.limit_w:
                new = replace(
                    ob, status=ObligationStatus.REACHED, reached_at=now, measured_w=measured_w
                )
            elif now > ob.due_at:
                new = replace(ob, status=ObligationStatus.MISSED, measured_w=measured_w)
        result.append(new)
        if new is not ob:
            changed.append(new)
    return result, changed


def withdraw(
    obligations: Sequence[Obligation], signal_id: str
) -> tuple[list[Obligation], list[Obligation]]:
    """A signal was replaced by a newer revision or cancelled: its pending promises are
    withdrawn, not reported missed (the grid changed its mind). Returns (all, changed)."""
    result: list[Obligation] = []
    changed: list[Obligation] = []
    for ob in obligations:
        if ob.signal_id == signal_id and ob.status is ObligationStatus.PENDING:
            ob = replace(ob, status=ObligationStatus.WITHDRAWN)  # noqa: PLW2901
            changed.append(ob)
        result.append(ob)
    return result, changed


def _kw(watts: int) -> str:
    return f"{watts / 1000:g} kW"


def emergency_in_force(book: SignalBook, now: datetime) -> bool:
    """An emergency curtailment binds now: cuts go back to back, and the cold gives way
    where nothing else meets its deadline."""
    return any(
        isinstance(h.signal, Curtailment) and h.signal.emergency and curtailment_active(h, now)
        for h in book.held.values()
    )
