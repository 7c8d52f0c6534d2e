"""How the farm protects the grid and itself: the escalation ladder (down to cutting
outlets), the cold-weather rules per container, and the local under-frequency relay."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from controller.config.fields import ConfigModel, Ident, Kilowatts, Seconds


class EscalationCfg(ConfigModel):
    """The ladder: lower power target -> sleep -> cut the PDU outlet."""

    lower_first: bool = True
    # Outlets cut at once, and the pause between batches (waived under an emergency: a cut
    # draws no inrush, and a frequency trip wants its block shed now).
    cut_batch_size: Annotated[int, Field(ge=1, le=1000)] = 8
    cut_batch_spacing_s: Annotated[float, Field(ge=0, le=60, allow_inf_nan=False)] = 0.5
    # Outlets restored at once, and the pause between: every restored miner boots at once.
    restore_batch_size: Annotated[int, Field(ge=1, le=1000)] = 4
    restore_batch_spacing_s: Annotated[float, Field(ge=0, le=600, allow_inf_nan=False)] = 2.0
    restore_min_off_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 300.0
    # A restored miner boots, initialises and ramps up: rated power, not "stuck", meanwhile.
    restore_boot_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 600.0
    # Beyond the family's ramp-down (already a conservative bound) before a high outlet
    # reading counts as a lie; the planner counts it at the measured draw from the ramp's end.
    lie_grace_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    # How long a caught lie is remembered (across restarts too) before the outlet judges
    # the unit afresh: a day, so a firmware fixed or a unit swapped is not cut for good.
    # null: for good.
    lie_memory_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = 86_400.0
    pdu_interval_s: Seconds = 1.0
    switch_timeout_s: Seconds = 3.0


Celsius = Annotated[float, Field(ge=-80, le=80, allow_inf_nan=False)]
Duration = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ContainerSafetyCfg(ConfigModel):
    """One container's cold-weather rules; only the keys given override the site's."""

    hard_off_below_c: Celsius | None = -10.0  # no outlet cut below this ambient (None: off)
    floor_below_c: Celsius | None = 0.0  # the heater floor applies below this ambient
    floor_kw: Kilowatts = 0.0  # keep at least this much running there (lowest profile) ...
    floor_miners: Annotated[int, Field(ge=0)] = 0  # ... and at least this many miners
    warm_below_c: Celsius | None = 10.0  # boards colder than this wake gently
    warm_up_s: Duration = 120.0  # at the gentle level this long before stepping up
    min_on_s: Duration = 300.0  # a woken miner is shed last for this long
    min_off_s: Duration = 120.0  # a shed miner is not woken again before this


class SafetyCfg(ContainerSafetyCfg):
    """Cold-weather protection, dwell times and warm restarts (controller/core/safety.py)."""

    temperature_stale_after_s: Seconds = 300.0  # older ambient readings count as cold
    containers: dict[Ident, ContainerSafetyCfg] = Field(default_factory=dict)


def container_rules(cfg: SafetyCfg, name: str | None) -> ContainerSafetyCfg:
    """A container's rules: the site's, with the keys its own entry gives."""
    site = ContainerSafetyCfg(**cfg.model_dump(include=set(ContainerSafetyCfg.model_fields)))
    override = cfg.containers.get(name) if name is not None else None
    if override is None:
        return site
    return site.model_copy(update=override.model_dump(include=override.model_fields_set))


class FrequencyCfg(ConfigModel):
    """Local under-frequency response from the site meter's frequency."""

    nominal_hz: Literal[50, 60]
    trip_below_hz: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    trip_after_s: Annotated[float, Field(ge=0, le=60, allow_inf_nan=False)] = 0.5
    shed_kw: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    deadline_s: Seconds = 2.0
    recover_above_hz: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    recover_after_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 30.0
    restore_kw_per_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 10.0

    @model_validator(mode="after")
    def _thresholds(self) -> Self:
        low = self.nominal_hz * 0.9
        if not low <= self.trip_below_hz < self.nominal_hz:
            raise ValueError(
                f"trip_below_hz must be below the {self.nominal_hz} Hz nominal and above "
                f"{low:g} Hz (a {self.nominal_hz} Hz grid)"
            )
        if not self.trip_below_hz < self.recover_above_hz <= self.nominal_hz:
            raise ValueError(
                "recover_above_hz must lie above trip_below_hz and at most the nominal, "
                "or the response could flap"
            )
        return self
