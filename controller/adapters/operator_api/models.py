"""The operator API's bodies: the pydantic models the handlers parse and answer with, and
from which /openapi.json is generated (there is no hand-kept copy of the schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, RootModel, StringConstraints

from controller.intake.schedule import MAX_ROWS as MAX_SCHEDULE_ROWS
from controller.intake.wire import AUCTION, MAX_SIGNAL_ID, SIGNAL_ID_PATTERN

# At least one letter or digit: the same rule in pydantic, JSON Schema and the fuzzer.
# Some letter or digit, and no control characters (a reason is shown, logged and sent on:
# an OpenADR opt-out puts it into XML, which cannot carry them).
REASON_PATTERN = "^[^\\x00-\\x1f\\x7f]*[A-Za-z0-9][^\\x00-\\x1f\\x7f]*$"
Reason = Annotated[
    str,
    StringConstraints(min_length=3, max_length=500, pattern=REASON_PATTERN),
    Field(description="Why: journaled with the change, shown to every other operator"),
]
Kw = Annotated[float, Field(ge=0, le=10_000_000, allow_inf_nan=False)]
SignalIdText = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_SIGNAL_ID, pattern=SIGNAL_ID_PATTERN)
]
# An auction reference: held as `auction:<it>`, which must still be a signal id.
ReferenceText = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=MAX_SIGNAL_ID - len(AUCTION), pattern=SIGNAL_ID_PATTERN
    ),
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


# -- requests ------------------------------------------------------------------------------


class OverrideIn(_In):
    """A limit tighter than the grid's, until it expires."""

    limit_kw: Kw = Field(description="Draw at most this; must not be above the grid's limit")
    expires_at: AwareDatetime = Field(description="When it lapses (at most 30 days ahead)")
    reason: Reason


class OptOutIn(_In):
    """Stop honouring one OpenADR event: the VTN is told optOut, the limit is withdrawn."""

    reason: Reason


class OptOutOut(_Out):
    event_id: str
    signal_id: str | None = Field(description="The event as the journal holds it")
    status: str = Field(description="What the withdrawal did: received")
    detail: str


class HoldIn(_In):
    """Hold one miner asleep or running until `until`; `auto` hands it back."""

    mode: Literal["sleep", "run", "auto"] = Field(
        description="sleep: kept asleep; run: shed last and woken first (grid limits still "
        "win); auto: release the hold"
    )
    until: AwareDatetime | None = Field(default=None, description="Required unless mode is auto")
    reason: Reason


class AutomationIn(_In):
    """Pause: nothing is woken, raised or restored; sheds for grid limits go on."""

    paused: bool
    reason: Reason


class ScheduleRowIn(_In):
    """One award: `kw` from `start` to `end`. The grant is held as `auction:<reference>`
    (a grid cancel names it so, or by the bare reference); give `auction` or `reference`,
    not both."""

    start: AwareDatetime
    end: AwareDatetime = Field(description="After start, and not yet passed")
    kw: float = Field(gt=0, le=10_000_000, allow_inf_nan=False, description="At most the cap")
    auction: ReferenceText | None = None
    reference: ReferenceText | None = None


ScheduleList = Annotated[list[ScheduleRowIn], Field(min_length=1, max_length=MAX_SCHEDULE_ROWS)]


class ScheduleRowsIn(_In):
    rows: ScheduleList


class ScheduleIn(RootModel[ScheduleList | ScheduleRowsIn]):
    """An auction schedule as JSON: a list of rows, or {"rows": [...]}. The same rows as
    CSV (text/csv): a header start,end,kw,auction (or reference), then one row a line."""


# -- answers -------------------------------------------------------------------------------


class Problem(_Out):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    field: str | None = Field(default=None, description="The request field at fault")
    row: int | None = Field(
        default=None, description="A schedule upload: the data row at fault (1-based)"
    )
    rows: list[int] | None = Field(
        default=None, description="A schedule upload: the rows that overlap"
    )
    held: list[str] | None = Field(
        default=None, description="A schedule upload: the held grants its rows overlap"
    )


class LimitOut(_Out):
    limit_kw: float
    reasons: list[str] = Field(description="The constraints that bind, each with its kW")
    due: datetime | None = Field(default=None, description="When the draw must be within it")
    emergency: bool = False


class AutomationOut(_Out):
    paused: bool
    by: str | None = None
    reason: str | None = None
    since: datetime | None = None


class OverrideOut(_Out):
    id: str
    limit_kw: float
    reason: str
    by: str
    created_at: datetime | None
    expires_at: datetime | None


class OverridesOut(_Out):
    overrides: list[OverrideOut]


class HoldOut(_Out):
    miner: str
    mode: Literal["sleep", "run"]
    reason: str
    by: str
    since: datetime
    until: datetime


class ModeCounts(_Out):
    total: int = 0
    mining: int = 0
    sleeping: int = 0
    unknown: int = Field(default=0, description="No fresh reading: counted at rated power")
    unhealthy: int = 0
    pending: int = Field(default=0, description="A command is on the wire")
    lowered: int = 0
    cut: int = Field(default=0, description="Its PDU outlet was cut by curtaild")
    tuned: int = Field(
        default=0, description="Mining at a power target the allocation chose (see setting)"
    )


Health = Literal["ok", "unhealthy", "stale"]


class ContainerOut(_Out):
    name: str
    ambient_c: float | None = Field(
        description="The container's sensor's last reading (None: no sensor); see its age"
    )
    ambient_age_s: float | None
    board_temp_max_c: float | None = Field(description="Hottest fresh board reading")
    draw_kw: float = Field(description="Sum of the miners' estimates (rated where unknown)")
    miners: ModeCounts


class SignalOut(_Out):
    id: str
    revision: int
    type: str
    source: str = Field(
        description="The grid source that signed it, or schedule:<who> for a grant from "
        "an uploaded auction schedule"
    )
    via: Literal["grid", "schedule"] = Field(
        default="grid", description="grid: pushed, signed; schedule: uploaded by an operator"
    )
    uploaded_by: str | None = Field(
        default=None, description="Who uploaded its schedule (None: a grid push)"
    )
    received_at: datetime
    start: datetime | None
    end: datetime | None
    limit_kw: float | None = None
    granted_kw: float | None = None
    deadline_s: float | None = None
    emergency: bool = False
    active: bool


class DeadlineOut(_Out):
    signal_id: str
    revision: int
    kind: str
    limit_kw: float
    starts_at: datetime
    due_at: datetime
    status: str
    time_to_target_s: float | None = None
    measured_kw: float | None = None


class AlarmOut(_Out):
    kind: str
    subject: str
    since: datetime
    detail: str


PoolAction = Literal["alarm", "sleep", "none"]


class PoolOut(_Out):
    url: str
    user: str
    priority: int = Field(description="Failover order: 0 is tried first")
    enabled: bool
    active: bool = Field(description="The pool the miner hashes for now")
    alive: bool | None
    approved: bool = Field(description="An entry of pools.approved admits it")


class MinerPoolsOut(_Out):
    checked_at: datetime | None = Field(description="The last read of its pools that answered")
    since: datetime | None = Field(description="When the current verdict began")
    unapproved: list[str] = Field(description="Enabled pools no approved entry admits (URLs)")
    action: PoolAction = Field(description="What curtaild does about it (none: approved)")
    error: str | None = Field(description="Why the last read failed (the verdict stands)")
    pools: list[PoolOut]


class PoolsStatusOut(_Out):
    action: Literal["alarm", "sleep"] = Field(description="pools.enforce")
    checked: int = Field(description="Miners whose pools have been read")
    unapproved: int = Field(description="Of them, configured with an unapproved pool")
    unchecked: int = Field(description="Miners whose pools were never read (yet)")


class StatusOut(_Out):
    site: str
    at: datetime
    automation: AutomationOut
    limit: LimitOut | None = Field(description="The effective limit (None before the first plan)")
    grid_limit_kw: float = Field(description="What the grid allows now, without overrides")
    measured_kw: float | None = Field(description="Grid draw; None: the meter is stale")
    measured_by: Literal["meter", "firmware"]
    expected_kw: float | None
    hashrate_ths: float = Field(
        description="The hashrate the miners read fresh report, mining (asleep, unknown and "
        "cut miners add none)"
    )
    expected_hashrate_ths: float | None = Field(
        description="The hashrate the plan expects once its commands land, on the miners' "
        "curves (None: planned without curves)"
    )
    fresh_draw_kw: float = Field(
        description="The miners' own estimate of the draw of those read fresh: what "
        "hashrate_ths costs (not the site meter, which counts other loads too)"
    )
    efficiency_j_th: float | None = Field(
        description="fresh_draw_kw over hashrate_ths, in J/TH (None: nothing hashes)"
    )
    miners: ModeCounts
    containers: list[ContainerOut]
    signals: list[SignalOut]
    deadlines: list[DeadlineOut] = Field(description="Running and recently finished")
    overrides: list[OverrideOut]
    holds: list[HoldOut]
    alarms: list[AlarmOut]
    lying: list[str] = Field(
        description="Miners caught lying: by their outlet's measured power, or by a "
        "command's read-back"
    )
    journal_error: str | None = Field(
        default=None, description="Why the journal takes no writes (None: it does)"
    )
    wall_clock_offset_s: float | None = Field(
        default=None, description="The wall clock stepped this far from curtaild's time"
    )
    pools: PoolsStatusOut | None = Field(
        default=None, description="The approved-pools check (None: no pools section)"
    )


class MinerOut(_Out):
    id: str
    family: str
    container: str
    rated_kw: float
    efficiency_j_th: float
    outlet: str | None
    mode: Literal["mining", "sleeping", "unknown", "cut"]
    health: Health
    health_reason: str | None
    power_kw: float | None = Field(description="Firmware's figure (None: no fresh reading)")
    hashrate_ths: float | None
    board_temps_c: list[float]
    read_age_s: float | None
    pending: str | None = Field(description="The command on the wire, if any")
    lowered: bool
    setting: Literal["cut", "unknown", "asleep", "tuned", "lowered", "default"] = Field(
        description="What it runs at: asleep, cut, unknown (no fresh reading), or mining at "
        "a power target: tuned (the allocation chose target_w; perhaps still on the wire), "
        "lowered (the ladder's floor), default (its firmware's own, rated)"
    )
    target_w: int | None = Field(
        description="The power target's watts, tuned or lowered (None: default, or not mining)"
    )
    warming_until: datetime | None
    lying: str | None
    hold: HoldOut | None
    pools_ok: bool | None = Field(
        default=None,
        description="Every enabled pool approved (None: not checked: no pools section, or "
        "never read)",
    )
    pools: MinerPoolsOut | None = Field(
        default=None, description="Its pools as last checked (None: no pools section)"
    )


class MinersOut(_Out):
    miners: list[MinerOut]
    total: int = Field(description="Matches before paging")


class EventOut(_Out):
    seq: int
    at: datetime
    kind: str = Field(
        description="operator, alarm, alarm-cleared, lying, target-lost, frequency, ..."
    )
    subject: str | None
    detail: str | dict[str, object] | None


class EventsOut(_Out):
    events: list[EventOut]
    next: int = Field(description="Pass as `after` to read on from here")


class HistoryPoint(_Out):
    at: datetime
    measured_kw: float | None
    limit_kw: float | None


class HistoryOut(_Out):
    interval_s: float
    points: list[HistoryPoint]


class SignalReportRow(_Out):
    received_at: str | None
    transport: str | None
    source: str | None
    signal_id: str | None
    revision: int | None
    type: str | None
    verdict: str | None
    detail: str | None
    deadline_kind: str | None
    limit_kw: float | None
    starts_at: str | None
    due_at: str | None
    status: str | None
    reached_at: str | None
    time_to_target_s: float | None
    measured_kw: float | None
    measured_by: str | None


class SignalReportOut(_Out):
    signals: list[SignalReportRow]


class ScheduleOut(_Out):
    sha256: str = Field(description="Of the file uploaded; journaled with each grant")
    uploaded_by: str
    grants: list[SignalOut]


class HealthOut(_Out):
    status: Literal["ok", "starting", "degraded", "stalled"] = Field(
        description="stalled: the loop has not finished a cycle lately (503)"
    )
    ready: bool
    cycles: int
    last_cycle_age_s: float | None = Field(description="Seconds since the loop last finished")
    journal: Literal["ok"] = "ok"
    devices: dict[str, bool] = Field(description="Modbus devices: True while read fresh")


class ComplianceTotals(_Out):
    """Energy over a span (kWh) and how much of it the meter did not see (s)."""

    grid_kwh: float = Field(description="Drawn from the grid")
    within_grants_kwh: float = Field(description="Of which inside active grants")
    base_allowance_kwh: float = Field(description="Of which inside the base allowance")
    excess_kwh: float = Field(description="Of which above what the grid allowed")
    exempt_generation_kwh: float = Field(description="Own generation, counted apart")
    allowed_kwh: float = Field(description="What the grid allowed over the span")
    gap_s: float = Field(description="No meter reading: nothing counted, nothing interpolated")
    estimated_s: float = Field(description="Estimated from the miners' own figures")


class ComplianceGrant(_Out):
    id: str
    source: str
    granted_kwh: float
    used_kwh: float
    utilisation: float | None = Field(description="used / granted (None: nothing granted yet)")


class ExcessEvent(_Out):
    at: datetime
    kwh: float
    limit_kw: float | None
    reason: str


class UnapprovedPool(_Out):
    miner_id: str
    unapproved: list[str] = Field(description="The pool URLs no approved pool matches")
    action: str = Field(description="alarm, sleep or none")
    since: datetime


class ChainState(_Out):
    verified: bool | None = Field(
        description="The last walk of the journal's hash chain (None: not yet checked)"
    )
    rows: int
    head: str | None
    checked_at: datetime | None
    problem: str | None = Field(description="The first row found changed, removed or inserted")


class ComplianceOut(_Out):
    today: ComplianceTotals = Field(description="Since midnight UTC")
    month: ComplianceTotals = Field(description="Since the first of the month, UTC")
    grants: list[ComplianceGrant] = Field(description="Today's and the active grants")
    excess_events: list[ExcessEvent] = Field(description="This month's, newest first, <= 50")
    unapproved_pools: list[UnapprovedPool]
    chain: ChainState
