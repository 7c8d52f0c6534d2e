"""What loading gives: Loaded, the validated config with its miners expanded and secrets
resolved, and the core's rules (grid policy, plan, cold weather, frequency) made from it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta

from controller.config.protection import ContainerSafetyCfg, container_rules
from controller.config.site import SiteConfig
from controller.core.frequency import FrequencyRules
from controller.core.model import PlanRules, Tuning
from controller.core.safety import ColdRules, Safety
from controller.core.signals import GridPolicy, SourcePolicy
from drivers.modbus_map import RegisterMap


@dataclass(frozen=True, slots=True)
class MinerConfig:
    """One miner after ranges are expanded and secrets resolved."""

    id: str
    driver: str
    host: str
    port: int
    container: str
    rated_power_w: int
    efficiency_j_th: float
    timeout_s: float
    username: str | None
    password: str | None
    entry: int  # index into `miners` where it was declared
    web_port: int | None = None


@dataclass(frozen=True, slots=True)
class Loaded:
    """A validated config with everything derived from it."""

    config: SiteConfig
    miners: tuple[MinerConfig, ...]
    source_keys: dict[str, bytes]
    mqtt_password: str | None
    origin: str
    outlets: dict[str, tuple[str, int]] = field(default_factory=dict)  # miner -> (pdu, outlet)
    maps: dict[str, RegisterMap] = field(default_factory=dict)  # Modbus device id -> its map

    def grid_policy(self) -> GridPolicy:
        grid = self.config.grid
        return GridPolicy(
            mode=grid.mode,
            cap_w=_watts(grid.cap_kw),
            base_allowance_w=_watts(grid.base_allowance_kw),
            grant_end_lead=timedelta(seconds=grid.grant_end_lead_s),
            response_deadline=timedelta(seconds=grid.response_deadline_s),
            sources=tuple(
                SourcePolicy(
                    id=s.id,
                    heartbeat_timeout=(
                        timedelta(seconds=s.heartbeat_timeout_s) if s.heartbeat_timeout_s else None
                    ),
                    on_stale=s.on_stale,
                    stale_limit_w=_watts(s.stale_limit_kw)
                    if s.stale_limit_kw is not None
                    else None,
                )
                for s in self.config.signals.sources
            ),
        )

    def plan_rules(self) -> PlanRules:
        control = self.config.control
        return PlanRules(
            margin_w=_watts(self.config.grid.margin_kw),
            stale_after=timedelta(seconds=self.config.telemetry.stale_after_s),
            wake_headroom_w=_watts(control.wake_headroom_kw),
            wake_window=timedelta(seconds=1),
            wake_max_per_window=control.wake_max_per_s,
            wake_max_w_per_window=_watts(control.wake_max_kw_per_s),
            wake_hold_after_shed=timedelta(seconds=control.wake_hold_after_shed_s),
            lower_first=self.config.escalation.lower_first,
            restore_min_off=timedelta(seconds=self.config.escalation.restore_min_off_s),
            restore_boot=timedelta(seconds=self.config.escalation.restore_boot_s),
            safety=self.safety(),
            tuning=self.tuning(),
        )

    def tuning(self) -> Tuning | None:
        cfg = self.config.tuning
        if not cfg.enabled:
            return None
        return Tuning(
            hysteresis=cfg.hysteresis,
            max_changes=cfg.max_changes,
            dwell=timedelta(seconds=cfg.dwell_s),
            headroom=cfg.headroom,
            max_drop=cfg.max_drop,
        )

    def safety(self) -> Safety | None:
        cfg = self.config.safety
        if cfg is None:
            return None
        stale = timedelta(seconds=cfg.temperature_stale_after_s)
        containers = {
            name: _cold_rules(container_rules(cfg, name), stale) for name in cfg.containers
        }
        return Safety(_cold_rules(container_rules(cfg, None), stale), containers)

    def frequency_rules(self) -> FrequencyRules | None:
        f = self.config.frequency
        if f is None:
            return None
        return FrequencyRules(
            nominal_hz=f.nominal_hz,
            trip_below_hz=f.trip_below_hz,
            trip_after=timedelta(seconds=f.trip_after_s),
            shed_w=_watts(f.shed_kw),
            recover_above_hz=f.recover_above_hz,
            recover_after=timedelta(seconds=f.recover_after_s),
            restore_w_per_s=f.restore_kw_per_s * 1000,
            deadline=timedelta(seconds=f.deadline_s),
        )


def _cold_rules(cfg: ContainerSafetyCfg, stale: timedelta) -> ColdRules:
    return ColdRules(
        hard_off_below_c=cfg.hard_off_below_c,
        floor_below_c=cfg.floor_below_c,
        floor_w=_watts(cfg.floor_kw),
        floor_miners=cfg.floor_miners,
        warm_below_c=cfg.warm_below_c,
        warm_up=timedelta(seconds=cfg.warm_up_s),
        min_on=timedelta(seconds=cfg.min_on_s),
        min_off=timedelta(seconds=cfg.min_off_s),
        temperature_stale_after=stale,
    )


def _watts(kw: float) -> int:
    # Round limits down: a fraction of a watt must never round a limit up.
    return math.floor(kw * 1000 + 1e-6)
