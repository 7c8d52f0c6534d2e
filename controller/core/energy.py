"""The energy account: power integrated into 1-minute intervals, each split by what the
grid allowed at that moment. Pure: every instant is passed in (the daemon's steady time,
so a stepped wall clock creates or loses no energy).

The account is event-driven. Each call (a meter sample, the loop's allowance and fleet
estimate, or just the time) first integrates from where it got to up to its instant with
what was known until then, then takes the new value: power and allowance are held from
the instant they are learnt until the next one (a meter reading counts from when it was
read on, for at most `stale_after_s`; a longer silence is a gap, not one rectangle).

Each piece of time is split by three rules, each on its own: the parts add up to the draw
whenever the allowance's parts cover it (tests check that against the integral):
  excess          the draw above the allowance in force (after a change's grace, below);
  base allowance  the draw inside the allowance, up to the base allowance in force (always-
                  on: all of it; where the allowance is more than its base and grants, only
                  with inconsistent inputs, the part that is neither counts as base);
  within grants   the draw inside the allowance above that, up to the grants in force,
                  shared between them in proportion to their kW.
Grace: when the allowance falls at a cycle that brings a new grid deadline (the one the
change created: a curtailment, a cancel, a revision), the allowance before the fall (its
kW and its grants) still applies until that deadline; only then does a draw above the new
one count as excess. A deadline that was already running causes no grace, and a grant's
own end is a hard boundary (the loop looked ahead to it): no allowance, graced or not,
carries a grant past its end. While graced, a grant the grace keeps is credited only with
what the grace adds above the allowance in force, so a grant given since is never counted
twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
J_PER_KWH = 3_600_000.0
# The fleet's own estimate (firmware and ratings, from the loop's cycle) stands for this
# long after the cycle that gave it: a loop that stops for longer leaves a gap.
ESTIMATE_HOLD_S = 30.0


@dataclass(frozen=True, slots=True)
class Curtailed:
    """A curtailment in force: its revision, its limit, and when the draw must be under it."""

    revision: int
    limit_w: int
    due_at: datetime


@dataclass(frozen=True, slots=True)
class Deadline:
    """A running grid deadline: the obligation's key, when it started, when it is due."""

    key: str
    starts_at: datetime
    due_at: datetime


@dataclass(frozen=True, slots=True)
class Allowance:
    """What the grid allows from the instant it is given until the next one.

    `allowed_w`: the grid's arbitrated limit, without operator overrides or the local
    relay. `base_w`: the base allowance (None: always-on, where all the connection allows
    is base). `grants`: grants in force, id -> W; `grant_ends`: id -> its end, for those
    that have one. `curtailments`: id -> its terms. `deadlines`: the grid's running
    deadlines: a fall of the allowance is graced until the one that is new with it."""

    allowed_w: int
    base_w: int | None = None
    grants: Mapping[str, float] = field(default_factory=dict)
    curtailments: Mapping[str, Curtailed] = field(default_factory=dict)
    deadlines: tuple[Deadline, ...] = ()
    grant_ends: Mapping[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GrantUse:
    used_kwh: float
    granted_kwh: float
    excess_kwh: float


@dataclass(frozen=True, slots=True)
class CurtailmentExcess:
    signal_id: str
    revision: int
    limit_w: int
    excess_kwh: float  # above its limit after its deadline


@dataclass(frozen=True, slots=True)
class Interval:
    """One closed interval (a wall-clock minute; restart gaps may span up to an hour)."""

    start: datetime
    end: datetime
    grid_kwh: float
    within_grants_kwh: float
    base_allowance_kwh: float
    excess_kwh: float
    exempt_generation_kwh: float
    allowed_kwh: float
    granted_kwh: float
    gap_s: float  # no fresh meter reading (no meter: not covered by anything)
    estimated_s: float  # filled from the fleet's own estimate
    measured_by: str  # meter | meter+estimate | estimate | none
    grants: Mapping[str, GrantUse] = field(default_factory=dict)
    curtailments: tuple[CurtailmentExcess, ...] = ()


def floor_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def metered(
    import_w: float, generation_w: float | None, *, generation_exempt: bool
) -> tuple[float, float]:
    """(draw the allowance applies to, exempt own generation) from one meter reading. The
    meter's import is net of on-site generation: where generation is exempt that import
    is the draw and the generation its own column; where not, the allowance is on the
    gross draw, so the generation is added back (as the loop measures it)."""
    gen = max(0.0, generation_w or 0.0)
    if generation_exempt:
        return max(0.0, import_w), gen
    return max(0.0, import_w + gen), 0.0


def gap_intervals(since: datetime, until: datetime) -> list[Interval]:
    """The daemon was not running from `since` to `until`: nothing measured, one row per
    hour (cut at hour boundaries), so a long outage is a few rows, not thousands."""
    out: list[Interval] = []
    t = since
    while t < until:
        end = min(until, t.replace(minute=0, second=0, microsecond=0) + HOUR)
        secs = (end - t).total_seconds()
        out.append(Interval(t, end, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, secs, 0.0, "none"))
        t = end
    return out


class _Sums:
    """One open interval's running totals, in joules and seconds."""

    def __init__(self, start: datetime, end: datetime) -> None:
        self.start, self.end = start, end
        self.grid = self.grants = self.base = self.excess = self.exempt = 0.0
        self.allowed = self.granted = 0.0
        self.meter_s = self.gap_s = self.estimated_s = 0.0
        self.by_grant: dict[str, list[float]] = {}  # id -> [used, granted, excess] J
        self.by_curtailment: dict[tuple[str, int], tuple[int, float]] = {}

    def close(self) -> Interval:
        if self.meter_s > 0:
            how = "meter+estimate" if self.estimated_s > 0 else "meter"
        else:
            how = "estimate" if self.estimated_s > 0 else "none"

        def kwh(joules: float) -> float:
            return joules / J_PER_KWH

        return Interval(
            self.start,
            self.end,
            kwh(self.grid),
            kwh(self.grants),
            kwh(self.base),
            kwh(self.excess),
            kwh(self.exempt),
            kwh(self.allowed),
            kwh(self.granted),
            round(self.gap_s, 6),
            round(self.estimated_s, 6),
            how,
            {k: GrantUse(kwh(u), kwh(g), kwh(x)) for k, (u, g, x) in sorted(self.by_grant.items())},
            tuple(
                CurtailmentExcess(sid, rev, limit, kwh(j))
                for (sid, rev), (limit, j) in sorted(self.by_curtailment.items())
            ),
        )


def _until_ends(allowance: Allowance, at: datetime) -> Allowance:
    """`allowance` at `at`: a grant past its own end no longer counts, nor does the
    allowance it made (at most the base and the grants left)."""
    ends = allowance.grant_ends
    left = {g: w for g, w in allowance.grants.items() if g not in ends or ends[g] > at}
    if len(left) == len(allowance.grants):
        return allowance
    cap = (allowance.base_w or 0) + sum(left.values())
    return Allowance(
        int(min(allowance.allowed_w, cap)),
        allowance.base_w,
        left,
        allowance.curtailments,
        allowance.deadlines,
        allowance.grant_ends,
    )


def _merge(current: Allowance, held: Sequence[Allowance]) -> Allowance:
    """The allowance in force with the graced ones before it: the larger allowance and
    base. The grants in force count in full; a graced grant only with its share of what
    the grace adds above the allowance in force (never a grant counted twice)."""
    if not held:
        return current
    allowed = max(current.allowed_w, *(a.allowed_w for a in held))
    bases = [current.base_w, *(a.base_w for a in held)]
    base = None if any(b is None for b in bases) else max(b for b in bases if b is not None)
    extra: dict[str, float] = {}
    for a in held:
        for gid, w in a.grants.items():
            more = w - current.grants.get(gid, 0)
            if more > 0:
                extra[gid] = max(more, extra.get(gid, 0.0))
    room = float(allowed - current.allowed_w)
    wanted = sum(extra.values())
    scale = 1.0 if wanted <= room else room / wanted
    grants = dict(current.grants)
    for gid, more in extra.items():
        if more * scale > 0:
            grants[gid] = grants.get(gid, 0) + more * scale
    return Allowance(allowed, base, grants, current.curtailments, current.deadlines)


class Account:
    """The running account: feed it samples and allowances in time order; take() the
    intervals it closed."""

    def __init__(
        self,
        *,
        start: datetime,
        allowance: Allowance,
        stale_after_s: float | None,
        interval_start: datetime | None = None,
        estimate_hold_s: float = ESTIMATE_HOLD_S,
        graced: Allowance | None = None,
    ) -> None:
        """`stale_after_s`: how long a meter reading stands (None: there is no meter, the
        fleet's estimate is the measure). The first interval begins at the minute `start`
        falls in, or later at `interval_start` (where the journal's last interval ended);
        the time before `start` in it was not covered (a gap). `graced`: the allowance
        before the fall that `allowance`'s running deadlines are gracing (a restart
        during a grace): it applies until the last of them is due."""
        first = floor_minute(start)
        if interval_start is not None:
            first = min(max(interval_start, first), start)
        self._metered = stale_after_s is not None
        self._stale = timedelta(seconds=stale_after_s or 0.0)
        self._estimate_hold = timedelta(seconds=estimate_hold_s)
        self._cursor = start
        self._open = _Sums(first, floor_minute(first) + MINUTE)
        self._open.gap_s = (start - first).total_seconds()
        self._sample: tuple[datetime, float, float] | None = None  # at, draw W, exempt W
        self._estimate: tuple[datetime, float] | None = None
        self._allowance = allowance
        self._graced: list[tuple[datetime, Allowance]] = []  # (until, the allowance before)
        running = [d.due_at for d in allowance.deadlines if d.starts_at <= start < d.due_at]
        if graced is not None and running:
            self._graced.append((max(running), graced))
        self._closed: list[Interval] = []

    @property
    def cursor(self) -> datetime:
        """Integrated up to here."""
        return self._cursor

    def sample(self, at: datetime, draw_w: float, exempt_w: float = 0.0) -> None:
        """A meter reading taken at `at`."""
        self.advance(at)
        self._sample = (at, max(0.0, draw_w), max(0.0, exempt_w))

    def cycle(self, at: datetime, allowance: Allowance, estimate_w: float | None) -> None:
        """The loop's cycle: the allowance in force from `at` and the fleet's own estimate
        of its draw (None: none)."""
        self.advance(at)
        if estimate_w is not None:
            self._estimate = (at, max(0.0, estimate_w))
        if allowance == self._allowance:
            return
        # A fall from the allowance given before (a grace still running holds its own).
        previous = _until_ends(self._allowance, at)
        if allowance.allowed_w < previous.allowed_w:
            until = _grace_until(allowance.deadlines, self._allowance.deadlines, at)
            if until is not None:
                self._graced.append((until, self._allowance))
        self._allowance = allowance

    def advance(self, at: datetime) -> None:
        """Integrate up to `at` (an earlier instant changes nothing)."""
        while self._cursor < at:
            end = min(at, self._open.end, *self._breaks())
            self._integrate(self._cursor, end)
            self._cursor = end
            if self._cursor >= self._open.end:
                self._roll()

    def take(self) -> list[Interval]:
        """The intervals closed since the last call, oldest first."""
        closed, self._closed = self._closed, []
        return closed

    def close(self, at: datetime) -> list[Interval]:
        """Integrate to `at` and close the open interval there (a graceful stop): every
        interval not yet taken, the last one ending at `at` (none if it would be empty)."""
        self.advance(at)
        sums = self._open
        sums.end = max(self._cursor, sums.start)
        self._open = _Sums(sums.end, floor_minute(sums.end) + MINUTE)
        last = [sums.close()] if sums.end > sums.start else []
        return [*self.take(), *last]

    def _roll(self) -> None:
        self._closed.append(self._open.close())
        start = self._open.end
        self._open = _Sums(start, start + MINUTE)

    def _breaks(self) -> list[datetime]:
        """Instants after the cursor where what is held changes by itself."""
        cursor, out = self._cursor, []
        if self._sample is not None:
            out.append(self._sample[0] + self._stale)
        if self._estimate is not None:
            out.append(self._estimate[0] + self._estimate_hold)
        out.extend(until for until, _ in self._graced)
        out.extend(c.due_at for c in self._allowance.curtailments.values())
        for held in (self._allowance, *(g for _, g in self._graced)):
            out.extend(held.grant_ends.values())
        return [t for t in out if t > cursor]

    def _in_force(self, a: datetime) -> Allowance:
        """The allowance in force from `a`: the one given, with the graced ones still
        running, each without the grants past their end."""
        self._graced = [(u, g) for u, g in self._graced if u > a]
        held = [_until_ends(g, a) for _, g in self._graced]
        return _merge(_until_ends(self._allowance, a), held)

    def _integrate(self, a: datetime, b: datetime) -> None:
        dt = (b - a).total_seconds()
        if dt <= 0:
            return
        sums = self._open
        allowance = self._in_force(a)
        granted_w = float(sum(allowance.grants.values()))
        sums.allowed += allowance.allowed_w * dt
        sums.granted += granted_w * dt
        for gid, w in allowance.grants.items():
            sums.by_grant.setdefault(gid, [0.0, 0.0, 0.0])[1] += w * dt
        power, exempt = self._power(a, dt)
        if power is None:
            return
        allowed = float(allowance.allowed_w)
        inside = min(power, allowed)
        excess = power - inside
        # The base allowance in force: all of the allowance where it is always-on; else its
        # base, or what of the allowance is not grants, where that is more (bad inputs).
        base_w = allowed if allowance.base_w is None else max(allowance.base_w, allowed - granted_w)
        in_base = min(inside, base_w)
        in_grants = min(inside - in_base, granted_w)
        e_excess, e_grants = excess * dt, in_grants * dt
        sums.grid += power * dt
        sums.excess += e_excess
        sums.grants += e_grants
        sums.base += in_base * dt
        sums.exempt += exempt * dt
        if granted_w > 0:
            for gid, w in allowance.grants.items():
                use = sums.by_grant[gid]
                use[0] += e_grants * (w / granted_w)
                use[2] += e_excess * (w / granted_w)
        for sid, c in self._allowance.curtailments.items():
            if a >= c.due_at:
                limit, joules = sums.by_curtailment.get((sid, c.revision), (c.limit_w, 0.0))
                over = max(0.0, power - c.limit_w) * dt
                sums.by_curtailment[(sid, c.revision)] = (limit, joules + over)

    def _power(self, a: datetime, dt: float) -> tuple[float | None, float]:
        """(draw W, exempt generation W) held from `a` for `dt` seconds, counted in the
        open interval's coverage: the meter's reading while fresh, else the fleet's
        estimate while it stands, else nothing (None)."""
        sums, sample = self._open, self._sample
        if self._metered and sample is not None and sample[0] <= a < sample[0] + self._stale:
            sums.meter_s += dt
            return sample[1], sample[2]
        if self._metered:
            sums.gap_s += dt
        est = self._estimate
        if est is not None and a < est[0] + self._estimate_hold:
            sums.estimated_s += dt
            return est[1], 0.0
        if not self._metered:
            sums.gap_s += dt
        return None, 0.0


def _grace_until(
    deadlines: Sequence[Deadline], before: Sequence[Deadline], at: datetime
) -> datetime | None:
    """The deadline of the change that lowered the allowance at `at`: the latest of the
    running ones that are new since the allowance `before` (none: the fall made no
    deadline, as a grant's own end, so it is not graced)."""
    known = {d.key for d in before}
    new = [d.due_at for d in deadlines if d.key not in known and d.starts_at <= at < d.due_at]
    return max(new, default=None)
