"""What an operator must hear about from a plan: an outlet cut in the cold (each time), a
heater floor the limit cannot carry (while it stands). Logged always, journaled when the
journal takes it."""

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

    def _event(self, now: datetime, kind: str, subject: str, detail: str) -> None:
        with contextlib.suppress(JournalError):  # reported anyway; Journal.error says why
            self._journal.record_event(now, kind, subject, detail)
