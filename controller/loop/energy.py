"""The energy account in the daemon: fed every meter poll and, each cycle, the allowance
in force and the fleet's own estimate; journals each interval as it closes (one small
write a minute). The account itself is controller/core/energy.py.

A restart loses the minute in progress at a kill (it was in memory) and journals the time
since the last journaled interval as a gap; a graceful stop journals the part-minute. A
restart inside a grace keeps it: the allowance before the fall is the journal's last
minute's. A start whose clock is behind the journal's last interval (the wall clock
stepped back, or was ahead before) counts from now and journals an `energy` event saying
so: each interval is still its own stretch of real time, only the stamps overlap."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from controller.clock import Clock
from controller.core import energy
from controller.core.model import MinerView, measured_w
from controller.core.signals import (
    Curtailment,
    Grant,
    GridMode,
    GridPolicy,
    ObligationStatus,
    arbitrate,
    curtailment_active,
)
from controller.intake.inbox import Inbox
from controller.loop.deadlines import Deadlines
from controller.loop.measure import MeterSample
from controller.record.journal import Journal, JournalError

log = structlog.get_logger("curtaild.energy")

# Intervals kept while the journal cannot take them: a week of minutes. Older ones are
# dropped (and said so): the loop must not grow without bound behind a full disk.
KEEP_UNJOURNALED = 7 * 24 * 60
ESTIMATE_EVERY = timedelta(seconds=1)  # a fleet-wide sum, at most this often
# Deadlines that grace no fall: the local relay's is not the grid's allowance; a grant's
# end is a hard boundary the loop judged ahead.
UNGRACED = frozenset({"under-frequency", "grant-end"})


class EnergyAccount:
    """The loop's energy account: see the module's docstring."""

    def __init__(
        self,
        *,
        journal: Journal,
        clock: Clock,
        policy: GridPolicy,
        inbox: Inbox,
        deadlines: Deadlines,
        meter_stale_after_s: float | None,
        generation_exempt: bool,
        stale_after: timedelta,
    ) -> None:
        """`meter_stale_after_s`: None where the site has no meter (the account is then
        the fleet's estimate from firmware and ratings). `stale_after`: how old a miner's
        reading may be before its rating counts (the estimate, as the planner's)."""
        self._journal = journal
        self._policy = policy
        self._inbox = inbox
        self._deadlines = deadlines
        self._exempt = generation_exempt
        self._stale_after = stale_after
        self._unjournaled: deque[energy.Interval] = deque()
        self._dropped: tuple[datetime, datetime] | None = None  # span lost to the cap
        self._estimated: tuple[datetime, float] | None = None
        now = clock.now()
        first = None
        last_end = _last_end(journal)
        if last_end is not None and last_end > now:
            self._behind(now, last_end)
        elif last_end is not None:
            first = max(last_end, energy.floor_minute(now))
            self._keep(energy.gap_intervals(last_end, first))
        allowance = self.allowance(now)
        self.account = energy.Account(
            start=now,
            interval_start=first,
            allowance=allowance,
            stale_after_s=meter_stale_after_s,
            graced=self._graced(allowance, now),
        )

    def on_meter(self, sample: MeterSample | None) -> None:
        """Every meter poll (None: the read failed: the reading ages into a gap)."""
        if sample is None:
            return
        r = sample.reading
        draw_w, exempt_w = energy.metered(
            r.import_w, r.generation_w, generation_exempt=self._exempt
        )
        self.account.sample(sample.at, draw_w, exempt_w)

    def cycle(self, now: datetime, views: tuple[MinerView, ...]) -> None:
        """The loop's cycle: what the grid allows now and the fleet's own figure; the
        intervals that closed are journaled (kept and retried while it cannot be written)."""
        self.account.cycle(now, self.allowance(now), self._estimate(now, views))
        self._keep(self.account.take())
        self._write()

    def close(self, now: datetime) -> None:
        """A graceful stop: the part-minute is journaled too."""
        self._keep(self.account.close(now))
        self._write()

    def allowance(self, now: datetime) -> energy.Allowance:
        """What the grid allows at `now`: arbitrated without operator overrides or the
        local relay, and without the loop's look-ahead to grant boundaries (a grant
        counts until its end); with the grid's running deadlines for grace. A grant's own
        end makes no deadline here: the loop judged it ahead (grant_end_lead), so the
        fall at the end is not graced."""
        book = self._inbox.book
        limit = arbitrate(
            book, self._policy, now, last_heard=self._inbox.last_heard, lead=timedelta(0)
        )
        surplus = self._policy.mode is GridMode.SURPLUS_ONLY
        grants: dict[str, float] = {}
        ends: dict[str, datetime] = {}
        curtailed: dict[str, energy.Curtailed] = {}
        for held in book.held.values():
            signal = held.signal
            if not curtailment_active(held, now):
                continue
            if isinstance(signal, Grant) and surplus:
                grants[signal.id] = signal.granted_w
                if signal.end is not None:
                    ends[signal.id] = signal.end
            elif isinstance(signal, Curtailment):
                # Its deadline runs from receipt, or from its start (obligation_for).
                due = max(held.starts_at, held.received_at) + timedelta(seconds=signal.deadline_s)
                curtailed[signal.id] = energy.Curtailed(signal.revision, signal.limit_w, due)
        running = tuple(
            energy.Deadline(o.key, o.starts_at, o.due_at)
            for o in (*self._deadlines.pending, *self._deadlines.finished)
            if o.status is not ObligationStatus.WITHDRAWN
            and o.kind not in UNGRACED
            and o.starts_at <= now < o.due_at
        )
        base = self._policy.base_allowance_w if surplus else None
        return energy.Allowance(limit.limit_w, base, grants, curtailed, running, ends)

    def _estimate(self, now: datetime, views: tuple[MinerView, ...]) -> float:
        """The fleet's own figure (firmware, else ratings): a fleet-wide sum, so at most
        once a second."""
        last = self._estimated
        if last is None or now - last[0] >= ESTIMATE_EVERY or now < last[0]:
            last = self._estimated = (now, float(measured_w(views, now, self._stale_after)))
        return last[1]

    def _behind(self, now: datetime, last_end: datetime) -> None:
        """The journal's last interval ends after `now`: the wall clock stepped back since
        (or was ahead then). The account counts from now, so no real minute is lost or
        counted twice (the daemon's time is steady); the overlap of stamps is said."""
        detail = {
            "why": "clock behind the journal: intervals from now overlap journaled ones",
            "journal_ends": last_end.isoformat(),
            "now": now.isoformat(),
            "overlap_s": (last_end - now).total_seconds(),
        }
        log.warning("energy account starts behind the journal", **detail)
        with contextlib.suppress(JournalError):  # Journal.error says why; the warning stands
            self._journal.record_event(now, "energy", "clock-behind-journal", detail)

    def _graced(self, allowance: energy.Allowance, now: datetime) -> energy.Allowance | None:
        """A restart inside a grace: the allowance before the fall, from the journal's last
        minute (grace included) if it ran at most a minute before the running deadlines
        began; None: no deadline runs, or nothing says what was allowed before."""
        running = [d.starts_at for d in allowance.deadlines if d.starts_at <= now < d.due_at]
        if not running:
            return None
        found = self._journal.rows(
            "SELECT start, end, allowed_kwh FROM energy_intervals"
            " WHERE NOT (measured_by = 'none' AND allowed_kwh = 0) ORDER BY seq DESC LIMIT 1"
        )
        if not found:
            return None
        [(start_text, end_text, allowed_kwh)] = found
        start, end = datetime.fromisoformat(start_text), datetime.fromisoformat(end_text)
        seconds = (end - start).total_seconds()
        if seconds <= 0 or end < min(running) - energy.MINUTE or end > now:
            return None
        per_s = energy.J_PER_KWH / seconds  # kWh over the interval -> W
        grants = {
            str(gid): float(kwh) * per_s
            for gid, kwh in self._journal.rows(
                "SELECT grant_id, granted_kwh FROM energy_grants WHERE start = ? ORDER BY seq",
                (start_text,),
            )
            if kwh > 0
        }
        ends = {g: e for g, e in allowance.grant_ends.items() if g in grants}
        base = allowance.base_w
        return energy.Allowance(int(allowed_kwh * per_s), base, grants, grant_ends=ends)

    def _keep(self, intervals: list[energy.Interval]) -> None:
        for iv in intervals:
            if len(self._unjournaled) == KEEP_UNJOURNALED:
                dropped = self._unjournaled.popleft()
                since = dropped.start if self._dropped is None else self._dropped[0]
                self._dropped = (since, dropped.end)
                log.warning("energy interval dropped: journal unwritable", start=dropped.start)
            self._unjournaled.append(iv)

    def _write(self) -> None:
        if not self._unjournaled or self._journal.error is not None:
            return  # the loop's probe finds the journal writable again
        # What the cap dropped is journaled as a gap (nothing kept covers it), first.
        lost = [] if self._dropped is None else energy.gap_intervals(*self._dropped)
        try:
            self._journal.record_energy([*lost, *self._unjournaled])
        except JournalError:
            return  # Journal.error says why, once; kept for the next cycle
        if self._dropped is not None:
            log.warning("energy intervals dropped: journaled as a gap", span=self._dropped)
        self._dropped = None
        self._unjournaled.clear()


def _last_end(journal: Journal) -> datetime | None:
    [(text,)] = journal.rows("SELECT max(end) FROM energy_intervals")
    return None if text is None else datetime.fromisoformat(text)


def tee(
    first: Callable[[MeterSample | None], None] | None,
    then: Callable[[MeterSample | None], None],
) -> Callable[[MeterSample | None], None]:
    """Measurements.on_meter is one callback: the relay's first (it acts at once), then
    the account's."""
    if first is None:
        return then

    def both(sample: MeterSample | None) -> None:
        first(sample)
        then(sample)

    return both
