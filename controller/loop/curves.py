"""Each miner's efficiency curve as the allocation plans on it: seeded per model from the
config, learned from settled telemetry, journaled with the site state so a restart keeps
what was learned.

Per model, not per miner: miners of one model (family, rated power, efficiency) share one
curve object, learned from all of their settled readings. The allocator walks the miners
of one curve as a group: on the soak bench a plan of 10,000 miners costs several times
less on shared curves than on a curve per miner (bench/README.md, "Tuning soak"); and one
model's readings pooled are far less noisy than one unit's. A unit that draws more than
its model's curve says costs budget, never the limit: the allocation counts the
difference as draw it does not move (core/tuning.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog

from controller.core.curves import Curve, curve_from_dict, curve_to_dict, learn, seed_curve
from controller.core.model import MinerSpec, MinerView
from controller.core.tuning import Shapes
from drivers.types import Mode

log = structlog.get_logger("curtaild.curves")

# Settled readings are sampled this often (a walk over the fleet), and each model's
# samples at a setting are folded into its curve as one measurement this often.
SAMPLE_EVERY = timedelta(seconds=10)
FOLD_EVERY = timedelta(minutes=1)


def model_key(spec: MinerSpec) -> str:
    return f"{spec.driver}/{spec.rated_power_w}W/{spec.efficiency_j_th:g}J/TH"


class CurveBook:
    """The curves by miner, and what was learned since the last journal flush."""

    def __init__(
        self, specs: Mapping[str, MinerSpec], *, stale_after: timedelta, boot: timedelta
    ) -> None:
        self._stale_after = stale_after
        self._boot = boot
        self._models: dict[str, list[str]] = {}  # model -> its miners
        self._by_model: dict[str, Curve] = {}
        for miner_id, spec in specs.items():
            key = model_key(spec)
            if key not in self._by_model:
                self._by_model[key] = seed_curve(spec)
            self._models.setdefault(key, []).append(miner_id)
        self._seeds = dict(self._by_model)
        self.curves: dict[str, Curve] = {}
        self._share(self._by_model)
        # (model, setting) -> [watts summed, TH/s summed, samples]
        self._sums: dict[tuple[str, str], list[float]] = {}
        self._keys = {m: model_key(s) for m, s in specs.items()}
        self._sampled_at: datetime | None = None
        self._folded_at: datetime | None = None
        self.learned = 0  # measurements folded in since start

    def _share(self, curves: Mapping[str, Curve]) -> None:
        for key, curve in curves.items():
            for miner_id in self._models[key]:
                self.curves[miner_id] = curve

    def model_curves(self) -> dict[str, Curve]:
        return dict(self._by_model)

    def observe(self, now: datetime, views: Iterable[MinerView]) -> None:
        """Sample the settled readings (every SAMPLE_EVERY) and fold each model's samples
        into its curve (every FOLD_EVERY)."""
        if self._sampled_at is not None and now - self._sampled_at < SAMPLE_EVERY:
            return
        self._sampled_at = now
        if self._folded_at is None:
            self._folded_at = now
        fresh_from = now - self._stale_after
        shapes = Shapes()
        for view in views:
            if not _settled(view, now, fresh_from, now - self._boot):
                continue
            key = self._keys[view.spec.id]
            curve = self._by_model[key]
            here = shapes.of(curve, view.spec).index(view)
            reading = view.reading
            assert reading is not None  # _settled
            outlet = view.outlet
            if outlet is not None and outlet.on and outlet.read_at >= fresh_from:
                watts = outlet.power_w  # the outlet measures; the firmware estimates
            elif view.spec.traits.reports_power:
                watts = float(reading.power_w)
            else:  # no watts of its own: learn its hashrate only
                watts = curve.settings[here].power_w
            sums = self._sums.setdefault((key, curve.settings[here].name), [0.0, 0.0, 0])
            sums[0] += watts
            sums[1] += reading.hashrate_ths
            sums[2] += 1
        if now - self._folded_at >= FOLD_EVERY:
            self._fold()
            self._folded_at = now

    def _fold(self) -> None:
        changed: dict[str, Curve] = {}
        for (key, name), (watts, ths, n) in self._sums.items():
            curve = changed.get(key, self._by_model[key])
            try:
                changed[key] = learn(curve, name, watts / n, ths / n)
            except ValueError as err:  # a reading no curve can hold: said, not learned
                log.warning("curve measurement refused", model=key, error=str(err))
                continue
            self.learned += 1
        self._sums.clear()
        if changed:
            self._by_model.update(changed)
            self._share(changed)

    def to_json(self) -> dict[str, Any]:
        """The learned curves, by model, for the journal's site state (only curves that
        have learned something: a seed is rebuilt from the config)."""
        return {
            key: curve_to_dict(curve)
            for key, curve in self._by_model.items()
            if curve is not self._seeds[key]
        }

    def restore(self, saved: object) -> list[str]:
        """The curves a run before the restart learned. A model no longer in the config is
        dropped; one whose settings differ from its seed (the config changed its family or
        rating) starts again from the seed; a row that is not a curve is refused. Returns
        what was refused, for the log."""
        refused: list[str] = []
        if not isinstance(saved, Mapping):
            return ["curves: not a mapping"] if saved is not None else []
        restored: dict[str, Curve] = {}
        for key, data in saved.items():
            seed = self._seeds.get(key)
            if seed is None or not isinstance(data, Mapping):
                continue
            try:
                curve = curve_from_dict(data)
            except (ValueError, OverflowError) as err:  # whatever the row holds: refused
                refused.append(f"{key}: {err}")
                continue
            if [s.name for s in curve.settings] != [s.name for s in seed.settings]:
                refused.append(f"{key}: its settings changed since it was learned")
                continue
            restored[key] = curve
        self._by_model.update(restored)
        self._share(restored)
        return refused


def _settled(view: MinerView, now: datetime, fresh_from: datetime, booted_by: datetime) -> bool:
    """Read fresh, mining, nothing in flight, and every change it made has landed and
    ramped: only such a reading says what a setting draws and hashes."""
    reading = view.reading
    if (
        reading is None
        or reading.mode is not Mode.MINING
        or view.read_at is None
        or view.read_at < fresh_from
        or view.pending is not None
        or view.lying is not None
        or view.cut_at is not None
        or (view.restored_at is not None and view.restored_at > booted_by)
        or (view.warming_until is not None and now < view.warming_until)
    ):
        return False
    traits = view.spec.traits
    retarget = timedelta(seconds=traits.retarget_s)
    if (
        view.mode_since is not None
        and view.read_at - view.mode_since < timedelta(seconds=traits.ramp_up_s) + retarget
    ):
        return False
    for changed in (view.lowered_at, view.tuned_at):
        if changed is not None and view.read_at - changed < retarget:
            return False
    return True
