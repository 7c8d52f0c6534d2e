"""Cold-weather protection, dwell times and warm restarts: the rules and their judgements.

Pure. A container at -35 °C must not go dark: condensation after a hard power-off,
boards and sensors that fail a cold boot, hydro loops that freeze. So, per container:
- no outlet is cut below its hard-off temperature, unless an emergency needs it and no
  other step can meet the deadline (then it is an alarm);
- below its floor temperature a heater floor keeps some power running there, at the
  lowest power profile, inside the limit (the grid limit wins: sleep, never cut, alarm);
- a miner whose boards are cold wakes gently and steps up after a warm-up;
- no miner cycles faster than its minimum on and off times.
A temperature that is missing or older than `temperature_stale_after` counts as cold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controller.core.model import MinerView
from drivers.types import Mode


@dataclass(frozen=True, slots=True)
class ColdRules:
    """One container's rules. A threshold of None switches its rule off."""

    hard_off_below_c: float | None = None  # no outlet cut below this ambient
    floor_below_c: float | None = None  # the heater floor applies below this ambient
    floor_w: int = 0  # keep at least this much running (at the lowest profile) ...
    floor_miners: int = 0  # ... and at least this many miners
    warm_below_c: float | None = None  # boards colder than this wake gently
    warm_up: timedelta = timedelta(minutes=2)  # held at the gentle level this long
    min_on: timedelta = timedelta(0)  # a woken miner runs at least this long ...
    min_off: timedelta = timedelta(0)  # ... and a shed one rests at least this long
    temperature_stale_after: timedelta = timedelta(minutes=5)

    @property
    def has_floor(self) -> bool:
        return self.floor_below_c is not None and (self.floor_w > 0 or self.floor_miners > 0)


@dataclass(frozen=True, slots=True)
class Safety:
    """The site's rules, with per-container overrides."""

    default: ColdRules = ColdRules()
    containers: Mapping[str, ColdRules] = field(default_factory=dict)

    def rules(self, container: str) -> ColdRules:
        return self.containers.get(container, self.default)


class Climate:
    """One plan's judgement of every container: its temperature and which rules bind.

    Built once per plan (a handful of containers), so the per-miner questions the
    planner asks on its walk are dictionary look-ups.
    """

    __slots__ = ("_safety", "cold", "hard_off", "now", "rules", "temps")

    def __init__(
        self,
        safety: Safety,
        ambient: Mapping[str, tuple[float, datetime]],
        now: datetime,
        containers: Iterable[str],
    ) -> None:
        self._safety = safety
        self.now = now
        self.rules: dict[str, ColdRules] = {}
        self.temps: dict[str, float | None] = {}  # None: missing or stale, so cold
        self.hard_off: dict[str, bool] = {}  # below the hard-off temperature
        self.cold: dict[str, bool] = {}  # below the floor temperature
        for container in containers:
            if container in self.rules:
                continue
            rules = self.rules[container] = safety.rules(container)
            seen = ambient.get(container)
            temp = None
            if seen is not None and now - seen[1] <= rules.temperature_stale_after:
                temp = seen[0]
            self.temps[container] = temp
            self.hard_off[container] = _below(temp, rules.hard_off_below_c)
            self.cold[container] = _below(temp, rules.floor_below_c)

    def floor_needs(self) -> dict[str, list[int]]:
        """Each cold container with a heater floor: [watts, miners] still to be found."""
        return {
            container: [rules.floor_w, rules.floor_miners]
            for container, rules in self.rules.items()
            if self.cold[container] and rules.has_floor
        }

    def describe(self, container: str) -> str:
        temp = self.temps.get(container)
        if temp is None:
            return f"{container} has no fresh temperature (counts as cold)"
        return f"{container} at {temp:g} °C"

    def cut_refusal(self, view: MinerView) -> str | None:
        """Why the cold forbids cutting this miner's outlet, or None."""
        container = view.spec.container
        if not self.hard_off.get(container, False):
            return None
        limit = self.rules[container].hard_off_below_c
        return f"cold: {self.describe(container)}, below the hard-off {limit:g} °C"

    def young(self, view: MinerView) -> bool:
        """Woken (or restored) less than its minimum on-time ago: shed it last."""
        min_on = self.rules[view.spec.container].min_on
        if not min_on:
            return False
        reading, since = view.reading, view.mode_since
        mining = reading is not None and reading.mode is Mode.MINING
        if mining and since is not None and self.now - since < min_on:
            return True
        restored = view.restored_at
        return restored is not None and self.now - restored < min_on

    def rested(self, view: MinerView, since: datetime | None) -> bool:
        """Shed at `since` at least its minimum off-time ago (None: long ago)."""
        min_off = self.rules[view.spec.container].min_off
        return since is None or self.now - since >= min_off

    def boards_cold(self, view: MinerView, fresh: bool) -> str | None:
        """Why this miner's boards are too cold for a full-power start, or None. A reading
        that is not fresh, or one without board temperatures, counts as cold."""
        threshold = self.rules[view.spec.container].warm_below_c
        if threshold is None:
            return None
        reading = view.reading
        if not fresh or reading is None or not reading.board_temps_c:
            return f"boards of unknown temperature (below {threshold:g} °C assumed)"
        coldest = min(reading.board_temps_c)
        if coldest < threshold:
            return f"boards at {coldest:g} °C, below {threshold:g} °C"
        return None


def _below(temp: float | None, threshold: float | None) -> bool:
    if threshold is None:
        return False
    return temp is None or temp < threshold
