"""What an operator must hear about: from a plan, an outlet cut in the cold (each time), a
heater floor the limit cannot carry (while it stands); from a collaborator, a standing
condition it raises and clears (a miner on an unapproved pool). Logged always, journaled
when the journal takes it."""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from datetime import datetime

import structlog

from controller.core.model import Plan
from controller.record.journal import Journal, JournalError

log = structlog.get_logger("curtaild.alarms")

KEEP_COLD_CUTS = 1000  # the latest; the journal holds them all, cold_cut_count the total


class Alarms:
    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.standing: dict[tuple[str, str], tuple[datetime, str]] = {}  # heater floors
        # Raised by a collaborator until it clears them (unapproved pools), by (kind, subject).
        self.raised: dict[tuple[str, str], tuple[datetime, str]] = {}
        self.cold_cuts: deque[tuple[datetime, str, str]] = deque(maxlen=KEEP_COLD_CUTS)
        self.cold_cut_count = 0
        self.counts: Counter[str] = Counter()  # alarms raised, by kind

    def judge(self, now: datetime, plan: Plan) -> None:
        """A shed plan judges floors; a wake plan judges them only while it has floor
        wakes. A standing alarm is journaled when it starts and when it clears, not once
        per plan."""
        standing: dict[tuple[str, str], tuple[datetime, str]] = {}
        for alarm in plan.alarms:
            key = (alarm.kind, alarm.subject)
            if alarm.kind != "cold-cut" and key in self.standing:
                standing[key] = self.standing[key]
                continue
            log.warning(alarm.kind, subject=alarm.subject, detail=alarm.detail)
            if alarm.kind == "cold-cut":
                self.cold_cuts.append((now, alarm.subject, alarm.detail))
                self.cold_cut_count += 1
            else:
                standing[key] = (now, alarm.detail)
            self.counts[alarm.kind] += 1
            self._event(now, "alarm", alarm.subject, alarm.detail)
        for key in self.standing.keys() - standing.keys():
            log.info("alarm cleared", kind=key[0], subject=key[1])
            self._event(now, "alarm-cleared", key[1], key[0])
        self.standing = standing

    def active(self) -> dict[tuple[str, str], tuple[datetime, str]]:
        """Every standing alarm: the plan's and the raised ones."""
        return {**self.standing, **self.raised} if self.raised else self.standing

    def raise_alarm(self, now: datetime, kind: str, subject: str, detail: str) -> None:
        """A standing alarm until clear_alarm; journaled when it starts. A new detail for
        one already standing (another unapproved pool) is journaled too."""
        key = (kind, subject)
        held = self.raised.get(key)
        if held is not None and held[1] == detail:
            return
        log.warning(kind, subject=subject, detail=detail)
        if held is None:
            self.counts[kind] += 1
        self.raised[key] = (held[0] if held is not None else now, detail)
        self._event(now, "alarm", subject, detail)

    def clear_alarm(self, now: datetime, kind: str, subject: str) -> None:
        if self.raised.pop((kind, subject), None) is None:
            return
        log.info("alarm cleared", kind=kind, subject=subject)
        self._event(now, "alarm-cleared", subject, kind)

    def _event(self, now: datetime, kind: str, subject: str, detail: str) -> None:
        with contextlib.suppress(JournalError):  # reported anyway; Journal.error says why
            self._journal.record_event(now, kind, subject, detail)
