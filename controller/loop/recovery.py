"""What survives a restart: the ladder's state and what the loop learned, journaled with
each flush, restored before the first read; and the commands that were on the wire when
the daemon died, carried through."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog

from controller.clock import Clock
from controller.core import closed_loop, frequency
from controller.core.model import Action, ActionKind, MinerSpec, MinerView, PlanRules
from controller.loop.curves import CurveBook
from controller.loop.dispatch import Dispatch
from controller.loop.draw import Draw
from controller.loop.ledger import Ledger, LoopSettings
from controller.loop.telemetry import Readings, parse_time
from controller.record.journal import CommandRecord, Journal
from drivers.types import Mode

log = structlog.get_logger("curtaild.recovery")

# The unexplained draw learned before a restart is trusted this long after it was learned.
OFFSET_TRUSTED_FOR = timedelta(minutes=10)

# The reason every move of the allocation starts with (core/allocation.py).
RETUNE = "retune"
Unsettled = tuple[int, datetime, str, ActionKind, str]  # (seq, decided at, miner, kind, why)


class Recovery:
    """Restores the loop's state at start, resumes what was on the wire, and says what to
    journal of it with each flush."""

    def __init__(
        self,
        *,
        specs: Mapping[str, MinerSpec],
        readings: Readings,
        journal: Journal,
        clock: Clock,
        rules: PlanRules,
        settings: LoopSettings,
        draw: Draw,
        curves: CurveBook | None = None,
    ) -> None:
        self._specs = specs
        self._curves = curves
        self._readings = readings
        self._journal = journal
        self._clock = clock
        self._rules = rules
        self._settings = settings
        self._draw = draw
        self._saved: dict[str, Any] = {}  # the site state as last journaled
        self._pending: dict[str, Any] = {}  # to write at the next flush whatever changed
        self._unsettled: list[Unsettled] = []

    def restore(self) -> None:
        """Before the first read: where the ladder left every miner, what the loop had
        learned, and which commands were on the wire when the daemon stopped (their
        decisions are in the journal without a result), each miner's latest."""
        now = self._clock.now()
        timeouts = [self._settings.command_timeout_s, *self._settings.command_timeouts.values()]
        ramps = [
            max(t.ramp_down_s, t.ramp_up_s, t.retarget_s)
            for t in {spec.traits for spec in self._specs.values()}
        ]
        window = timedelta(seconds=max(timeouts) + max(ramps, default=0.0))
        site = self._journal.site_state()
        self._saved = dict(site)
        # Times journaled before the restart adopted a stepped wall clock move with it.
        shift = timedelta(seconds=float(site.get("clock", {}).get("adopted_s", 0.0)))
        if shift:
            log.info("carrying the journal's times across the adopted clock", shift=str(shift))
            self._saved["clock"] = {}  # written at the first flush: carried once
            self._pending["clock"] = {}
        self._readings.restore_ladder(self._journal.ladder_state(), now, window, shift)
        draw = self._draw
        draw.lying_detected = {v.spec.id for v in self._readings.views() if v.lying is not None}
        self._restore_learned(site, now, shift)
        latest: dict[str, Unsettled] = {}
        for seq, at, miner, kind, reason in self._journal.unsettled(
            now - window - shift, now - shift
        ):
            if miner in self._specs and kind in ActionKind.__members__.values():
                latest[miner] = (seq, min(at + shift, now), miner, ActionKind(kind), reason)
        for _, at, miner, kind, _ in latest.values():
            if kind in (ActionKind.SLEEP, ActionKind.CUT):
                self._readings.hint(miner, Mode.SLEEPING, at)
            elif kind in (ActionKind.WAKE, ActionKind.WARM, ActionKind.RESTORE, ActionKind.TUNE):
                self._readings.hint(miner, Mode.MINING, at)
        views = self._readings.views()
        if latest or any(v.lowered_at or v.cut_at or v.lying or v.no_lower for v in views):
            log.info(
                "ladder restored from journal",
                on_the_wire=len(latest),
                lowered=sum(v.lowered_at is not None for v in views),
                cut=sum(v.cut_at is not None for v in views),
                lying=len(draw.lying_detected),
            )
        self._unsettled = list(latest.values())

    def _restore_learned(self, site: Mapping[str, Any], now: datetime, shift: timedelta) -> None:
        """What the loop had learned about the site: the unexplained draw (while still
        trusted), the frequency relay, each model's curve."""
        draw = self._draw
        offset = site.get("offset", {})
        learned = parse_time(offset.get("at"))
        if learned is not None and now - (learned + shift) < OFFSET_TRUSTED_FOR:
            # It decays from now, not from a share of the downtime.
            draw.offset = closed_loop.Offset(int(offset.get("w", 0)), now)
        if "frequency" in site:
            draw.freq = frequency.from_json(site["frequency"], shift)
        if self._curves is not None:
            refused = self._curves.restore(site.get("curves"))
            if refused:
                log.warning("learned curves not restored; their seeds are used", refused=refused)

    async def resume(self, dispatch: Dispatch, ledger: Ledger) -> None:
        """After a restart, the commands that were on the wire: sheds are carried through
        (a sleep is waited for, and sent again only if the miner reads awake; a lower
        target and a cut are sent again: both are idempotent), counted as landed as the
        first run counted them; steps back are left to the readings (their changes are
        dated from the command). What the restart finds done is journaled as such, so a
        later restart does not resume it. Nothing new is decided here."""
        resumed: list[tuple[int, Action, datetime]] = []
        now = self._clock.now()
        for seq, at, miner, kind, reason in self._unsettled:
            view = self._readings.view(miner)
            action = Action(miner, kind, reason)
            if self._carry_on(view, kind, now):
                if kind is ActionKind.SLEEP and reason.startswith(RETUNE):
                    dispatch.retune_sleeps.add(miner)  # the allocation's: no grid shed
                resumed.append((seq, action, at))
                continue
            reading = view.reading
            warm_up = dispatch.warm_up(miner) if kind is ActionKind.WARM else None
            if (
                warm_up is not None
                and reading is not None
                and reading.mode is Mode.MINING
                and view.lowered_at is None
            ):  # it landed: warming, as if the first run saw it
                self._readings.set_ladder(miner, lowered_at=at, warming_until=at + warm_up)
            ledger.records.append(
                CommandRecord(seq, miner, kind.value, at, now, "seen-after-restart", None)
            )
        self._unsettled = []
        if not resumed:
            return
        log.info("resuming commands sent before the restart", commands=len(resumed))
        for seq, action, at in resumed:
            await dispatch.send((action,), seq, now, resumed_from=at)

    def _carry_on(self, view: MinerView, kind: ActionKind, now: datetime) -> bool:
        """Whether a shed sent before the restart has yet to show."""
        if kind is ActionKind.SLEEP:
            reading = view.reading
            asleep = reading is not None and reading.mode is Mode.SLEEPING
            return not (asleep and view.fresh(now, self._rules.stale_after))
        if kind is ActionKind.LOWER:
            return view.lowered_at is None
        if kind is ActionKind.CUT:
            return view.cut_at is None
        return False

    def site_changes(self, now: datetime) -> dict[str, Any]:
        """What the loop learned about the site that a restart must not forget: the draw
        the miners do not explain (to the nearest 100 W: it moves with the meter's noise)
        and the frequency relay while it is tripped; only what changed."""
        state: dict[str, Any] = {
            "offset": {"w": round(self._draw.offset.w, -2), "at": now.isoformat()},
            "frequency": frequency.to_json(self._draw.freq),
        }
        if self._curves is not None:
            state["curves"] = self._curves.to_json()
        changed = dict(self._pending)
        for key, value in state.items():
            saved = self._saved.get(key)
            if key == "offset" and saved is not None and saved.get("w") == value["w"]:
                # The same value, still current: written again only when half as old as
                # a restart would trust it, so a steady base load stays trusted.
                at = parse_time(saved.get("at"))
                if at is not None and now - at < OFFSET_TRUSTED_FOR / 2:
                    continue
            if saved != value:
                changed[key] = value
        return changed

    def saved(self, site: Mapping[str, Any]) -> None:
        """`site` is journaled."""
        self._saved.update(site)
        self._pending.clear()
