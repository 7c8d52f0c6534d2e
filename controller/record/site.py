"""The site's state as every reader shows it: built once per report by the loop, read by
the operator API, the dashboard's stream, /metrics, the MQTT status and the demo, so they
all say the same thing. Readers hold a SiteFeed and never reach into the loop."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from controller.core.model import FLEET_MODES, Limit, MinerView
from controller.core.operator import Automation, Hold
from controller.core.pools import Verdict
from controller.core.signals import Held, Obligation, Override
from drivers.types import Mode

# The draw against the limit, for the dashboard's last hour (720 points at 5 s).
HISTORY_POINTS = 720
RECENT_FINISHED = 10  # finished deadlines shown beside the pending ones


@dataclass(slots=True)
class ModeCounts:
    """Miners by what an operator is told they do (the four modes split the fleet), and
    the flags that overlap them."""

    total: int = 0
    mining: int = 0
    sleeping: int = 0
    unknown: int = 0
    cut: int = 0
    pending: int = 0
    lowered: int = 0
    unhealthy: int = 0
    tuned: int = 0  # mining at a power target the allocation chose

    def as_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            **{mode: getattr(self, mode) for mode in FLEET_MODES},
            "pending": self.pending,
            "lowered": self.lowered,
            "unhealthy": self.unhealthy,
            "tuned": self.tuned,
        }


# A miner's current setting, as readers show it: what it does, and for a miner that mines,
# at which power target (tuned: one the allocation chose; lowered: the ladder's floor;
# default: its firmware's own, rated).
Setting = Literal["cut", "unknown", "asleep", "tuned", "lowered", "default"]
SETTINGS: tuple[Setting, ...] = ("cut", "unknown", "asleep", "tuned", "lowered", "default")


def setting(view: MinerView, fresh: bool) -> tuple[Setting, int | None]:
    """The miner's setting and its target's watts where it has one. `fresh`: its reading is
    fresh by the reader's rule. In fleet_mode's order, so the two never disagree."""
    reading = view.reading
    if view.cut_at is not None:
        return "cut", None
    if not fresh or reading is None:
        return "unknown", None
    if reading.mode is Mode.SLEEPING:
        return "asleep", None
    if view.target_w is not None:
        return "tuned", view.target_w  # the allocation's (perhaps still on the wire)
    if view.lowered_at is not None:
        return "lowered", view.spec.floor_w()
    return "default", None


@dataclass(frozen=True, slots=True)
class ContainerState:
    name: str
    miners: ModeCounts
    draw_w: int  # the planner's estimate of its miners' draw
    board_temp_max_c: float | None  # the hottest fresh board reading
    ambient_c: float | None  # its sensor
    ambient_age_s: float | None


@dataclass(frozen=True, slots=True)
class Device:
    """A Modbus device and whether its last read is fresh enough for the loop to use."""

    name: str
    kind: str  # meter | pdu | sensor
    up: bool
    failing: bool = False  # its last read failed (health, apart from freshness)


@dataclass(frozen=True, slots=True)
class MinerPools:
    """One miner's pools as last checked (controller/loop/pools.py)."""

    verdict: Verdict | None = None  # None: never read
    checked_at: datetime | None = None  # the last read that answered
    since: datetime | None = None  # when the current verdict began
    error: str | None = None  # why the last read failed (the verdict before stands)


NOT_CHECKED = MinerPools()


@dataclass(frozen=True, slots=True)
class PoolsView:
    """Every miner's pools, judged against the approved list, and the policy."""

    enforce: str  # alarm | sleep
    miners: Mapping[str, MinerPools]
    checked: int  # miners with a verdict
    unapproved: int  # of them, on an unapproved pool

    def action(self, miner_id: str) -> str:
        """What curtaild does about this miner: alarm, sleep, or none (approved, or not
        known)."""
        verdict = self.miners.get(miner_id, NOT_CHECKED).verdict
        return "none" if verdict is None or verdict.approved else self.enforce

    def summary(self) -> dict[str, Any]:
        """{checked, unapproved, action}: the demo's and the status's few numbers."""
        return {"checked": self.checked, "unapproved": self.unapproved, "action": self.enforce}


@dataclass(frozen=True, slots=True)
class SiteView:
    """Everything a reader shows, as of `at`."""

    at: datetime
    site: str
    ready: bool
    limit: Limit | None  # what applies now, with its reasons
    grid_limit: Limit  # what the grid (and the frequency relay) allows, without overrides
    measured_w: int | None  # None: unknown (a stale meter)
    measured_by: str  # meter | firmware
    meter: Mapping[str, Any] | None
    unexplained_w: int
    expected_w: int | None
    fleet: ModeCounts
    containers: tuple[ContainerState, ...]
    held: tuple[Held, ...]
    pending: tuple[Obligation, ...]
    finished: tuple[Obligation, ...]  # the latest few
    overrides: tuple[Override, ...]
    override_made: Mapping[str, datetime]
    holds: tuple[Hold, ...]
    automation: Automation
    alarms: tuple[tuple[str, str, datetime, str], ...]  # (kind, subject, since, detail)
    cold_cuts: int
    escalations: Mapping[str, int]
    lying: tuple[str, ...]  # caught by their outlet or by a command's read-back
    journal_error: str | None
    wall_clock_offset_s: float | None
    commands_sent: int
    commands_failed: int
    devices: tuple[Device, ...]
    signals_contained: int
    signals_unjournaled: int
    pools: PoolsView | None = None  # None: no `pools:` section, nothing is checked
    # The hashrate the miners read fresh report, mining (asleep, unknown, cut: none), and
    # the draw of the miners read fresh: what that hashrate costs, from the miners
    # themselves (the site meter counts other loads too; an unknown miner's draw is a
    # worst-case guess, and it adds no hashrate).
    hashrate_ths: float = 0.0
    fresh_draw_w: int = 0
    expected_ths: float | None = None  # the plan's, on the curves (None: no curves)

    @property
    def efficiency_j_th(self) -> float | None:
        return efficiency_j_th(self.fresh_draw_w, self.hashrate_ths)


def efficiency_j_th(draw_w: float, hashrate_ths: float) -> float | None:
    """J/TH: W per TH/s (None while nothing hashes: no figure, rather than an infinite one)."""
    return draw_w / hashrate_ths if hashrate_ths > 0 else None


class MinerViews(Protocol):
    """Each miner as the loop last saw it (telemetry's readings store): for readers that
    show one miner, or a page of them, rather than the site."""

    def view(self, miner_id: str) -> MinerView: ...

    def views(self) -> tuple[MinerView, ...]: ...


@dataclass(slots=True)
class SiteFeed:
    """The latest view and the draw's history, for readers."""

    latest: SiteView | None = None
    history: deque[tuple[datetime, int | None, int | None]] = field(
        default_factory=lambda: deque(maxlen=HISTORY_POINTS)
    )  # (at, measured W, limit W)
    # The loop's pulse, set every cycle (the view is built at most once per status
    # interval): health must see the first ready cycle and a stall at once.
    ready: bool = False
    cycles: int = 0
    last_cycle_at: datetime | None = None

    def beat(self, at: datetime, cycles: int, *, ready: bool) -> None:
        self.last_cycle_at, self.cycles, self.ready = at, cycles, ready

    def publish(self, view: SiteView) -> None:
        self.latest = view


def published(view: SiteView) -> dict[str, Any]:
    """The status as the grid's MQTT broker keeps it (retained): an operator override
    without its author or free text (those stay on the authenticated operator API)."""
    limit = view.limit
    return {
        "state": "online",
        "site": view.site,
        "at": iso(view.at),
        "limit_kw": limit.limit_w / 1000 if limit else None,
        "reasons": [_published(r) for r in limit.reasons] if limit else [],
        "measured_kw": None if view.measured_w is None else round(view.measured_w / 1000, 3),
        "measured_by": view.measured_by,
        "meter": None if view.meter is None else dict(view.meter),
        "unexplained_kw": round(view.unexplained_w / 1000, 3),
        "escalations": dict(view.escalations),
        "alarms": [
            {"kind": kind, "subject": subject, "since": iso(at), "detail": detail}
            for kind, subject, at, detail in view.alarms
        ],
        "cold_cuts": view.cold_cuts,
        "journal": {"writable": view.journal_error is None, "error": view.journal_error},
        "wall_clock_offset_s": None
        if view.wall_clock_offset_s is None
        else round(view.wall_clock_offset_s),
        "lying": list(view.lying),
        "expected_kw": None if view.expected_w is None else round(view.expected_w / 1000, 3),
        "miners": {
            "total": view.fleet.total,
            **{k: v for k, v in view.fleet.as_dict().items() if k != "total"},
        },
        "signals": [
            {"id": h.signal.id, "revision": h.signal.revision, "type": h.signal.kind}
            for h in view.held
        ],
        "deadlines": [
            {
                "id": o.signal_id,
                "revision": o.revision,
                "kind": o.kind,
                "limit_kw": o.limit_w / 1000,
                "due": iso(o.due_at),
            }
            for o in view.pending
        ],
    }


def _published(reason: str) -> str:
    if reason.startswith("override "):
        return f"operator override: {reason.rsplit(': ', 1)[-1]}"
    return reason


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")
