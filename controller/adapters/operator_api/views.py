"""The operator API's answers, projected from the read model (SiteView) and, for single
miners, from their readings. Nothing here reaches into the control loop."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from controller.adapters.operator_api import models as m
from controller.core.model import MinerView, fleet_mode
from controller.core.operator import Automation, Hold
from controller.core.signals import (
    Curtailment,
    Grant,
    Held,
    ObligationStatus,
    Override,
    curtailment_active,
)
from controller.record.site import NOT_CHECKED, ModeCounts, PoolsView, SiteView, setting


def status(view: SiteView) -> m.StatusOut:
    limit, efficiency = view.limit, view.efficiency_j_th
    return m.StatusOut(
        site=view.site,
        at=view.at,
        automation=automation(view.automation),
        limit=None
        if limit is None
        else m.LimitOut(
            limit_kw=limit.limit_w / 1000,
            reasons=list(limit.reasons),
            due=limit.due_at,
            emergency=limit.emergency,
        ),
        grid_limit_kw=view.grid_limit.limit_w / 1000,
        measured_kw=kw(view.measured_w),
        measured_by="meter" if view.measured_by == "meter" else "firmware",
        expected_kw=kw(view.expected_w),
        hashrate_ths=round(view.hashrate_ths, 3),
        expected_hashrate_ths=None if view.expected_ths is None else round(view.expected_ths, 3),
        fresh_draw_kw=round(view.fresh_draw_w / 1000, 3),
        efficiency_j_th=None if efficiency is None else round(efficiency, 2),
        miners=counts(view.fleet),
        containers=[
            m.ContainerOut(
                name=c.name,
                ambient_c=c.ambient_c,
                ambient_age_s=c.ambient_age_s,
                board_temp_max_c=c.board_temp_max_c,
                draw_kw=round(c.draw_w / 1000, 3),
                miners=counts(c.miners),
            )
            for c in view.containers
        ],
        signals=[signal(h, view.at) for h in sorted(view.held, key=lambda h: h.signal.id)],
        deadlines=[
            m.DeadlineOut(
                signal_id=o.signal_id,
                revision=o.revision,
                kind=o.kind,
                limit_kw=o.limit_w / 1000,
                starts_at=o.starts_at,
                due_at=o.due_at,
                status=o.status.value,
                time_to_target_s=o.time_to_target_s,
                measured_kw=kw(o.measured_w),
            )
            for o in (*view.finished, *view.pending)
            if o.status is not ObligationStatus.WITHDRAWN
        ],
        overrides=overrides(view.overrides, view.override_made),
        holds=[hold(h) for h in view.holds],
        alarms=[
            m.AlarmOut(kind=kind, subject=subject, since=at, detail=detail)
            for kind, subject, at, detail in view.alarms
        ],
        lying=list(view.lying),
        journal_error=view.journal_error,
        wall_clock_offset_s=view.wall_clock_offset_s,
        pools=pools_status(view.pools),
    )


def pools_status(pools: PoolsView | None) -> m.PoolsStatusOut | None:
    if pools is None:
        return None
    return m.PoolsStatusOut(
        action="sleep" if pools.enforce == "sleep" else "alarm",
        checked=pools.checked,
        unapproved=pools.unapproved,
        unchecked=len(pools.miners) - pools.checked,
    )


def miner_pools(miner_id: str, pools: PoolsView) -> m.MinerPoolsOut:
    state = pools.miners.get(miner_id, NOT_CHECKED)
    verdict = state.verdict
    action = pools.action(miner_id)
    return m.MinerPoolsOut(
        checked_at=state.checked_at,
        since=state.since,
        unapproved=list(verdict.unapproved) if verdict is not None else [],
        action="sleep" if action == "sleep" else "alarm" if action == "alarm" else "none",
        error=state.error,
        pools=[]
        if verdict is None
        else [
            m.PoolOut(
                url=p.url,
                user=p.user,
                priority=p.priority,
                enabled=p.enabled,
                active=p.active,
                alive=p.alive,
                approved=ok,
            )
            for p, ok in zip(verdict.pools, verdict.admitted, strict=True)
        ],
    )


def counts(c: ModeCounts) -> m.ModeCounts:
    return m.ModeCounts(**c.as_dict())


def signal(held: Held, now: datetime) -> m.SignalOut:
    s = held.signal
    active = held.starts_at <= now and (s.end is None or now < s.end)
    return m.SignalOut(
        id=s.id,
        revision=s.revision,
        type=s.kind,
        source=held.source,
        via="grid" if held.uploaded_by is None else "schedule",
        uploaded_by=held.uploaded_by,
        received_at=held.received_at,
        start=s.start,
        end=s.end,
        limit_kw=s.limit_w / 1000 if isinstance(s, Curtailment) else None,
        granted_kw=s.granted_w / 1000 if isinstance(s, Grant) else None,
        deadline_s=s.deadline_s if isinstance(s, Curtailment) else None,
        emergency=isinstance(s, Curtailment) and s.emergency,
        active=curtailment_active(held, now) if isinstance(s, Curtailment) else active,
    )


def overrides(items: Iterable[Override], made: Mapping[str, datetime]) -> list[m.OverrideOut]:
    return [
        m.OverrideOut(
            id=o.id,
            limit_kw=o.limit_w / 1000,
            reason=o.reason,
            by=o.by,
            created_at=made.get(o.id),
            expires_at=o.expires_at,
        )
        for o in items
    ]


def automation(a: Automation) -> m.AutomationOut:
    if not a.paused:
        return m.AutomationOut(paused=False)
    return m.AutomationOut(paused=True, by=a.by, reason=a.reason, since=a.since)


def hold(h: Hold) -> m.HoldOut:
    return m.HoldOut(
        miner=h.miner_id,
        mode=h.mode.value,
        reason=h.reason,
        by=h.by,
        since=h.since,
        until=h.expires_at,
    )


def miner(
    view: MinerView,
    held: Hold | None,
    now: datetime,
    stale_after: timedelta,
    pools: PoolsView | None = None,
) -> m.MinerOut:
    spec, reading = view.spec, view.reading
    verdict = None if pools is None else pools.miners.get(spec.id, NOT_CHECKED).verdict
    fresh = reading is not None and view.fresh(now, stale_after)
    runs_at, target_w = setting(view, fresh)
    return m.MinerOut(
        id=spec.id,
        family=spec.driver,
        container=spec.container,
        rated_kw=spec.rated_power_w / 1000,
        efficiency_j_th=spec.efficiency_j_th,
        outlet=spec.outlet,
        mode=fleet_mode(view, now, stale_after),
        health=health(view, now, stale_after),
        health_reason=view.health_reason,
        power_kw=kw(reading.power_w) if reading is not None and fresh else None,
        hashrate_ths=reading.hashrate_ths if reading is not None and fresh else None,
        board_temps_c=list(reading.board_temps_c) if reading is not None and fresh else [],
        read_age_s=None if view.read_at is None else round((now - view.read_at).total_seconds(), 3),
        pending=None if view.pending is None else view.pending.value,
        lowered=view.lowered_at is not None,
        setting=runs_at,
        target_w=target_w,
        warming_until=view.warming_until,
        lying=view.lying,
        hold=None if held is None else hold(held),
        pools_ok=None if verdict is None else verdict.approved,
        pools=None if pools is None else miner_pools(spec.id, pools),
    )


def health(view: MinerView, now: datetime, stale_after: timedelta) -> m.Health:
    if not view.healthy:
        return "unhealthy"
    return "ok" if view.reading is not None and view.fresh(now, stale_after) else "stale"


def kw(watts: int | None) -> float | None:
    return None if watts is None else round(watts / 1000, 3)
