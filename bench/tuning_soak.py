"""The tuning soak (issue 16): a 60 % cap held for 30 minutes, with the allocation and
with today's plan (the ladder alone), on the same simulated farm and the same draws.

    python -m bench.tuning_soak [--miners 10000] [--minutes 30] [--cap 0.6] [--seed 7] [--json]

In-process, on a fake clock, no sockets. The plant (bench/soak_plant.py) is the
simulator's physics; the control side is the real core and the real telemetry record:
every second the fleet is read into `controller.loop.telemetry.Readings` (as a sweep
records it), a Snapshot is built as the supervisor builds it, `planner.plan` decides, and
each action is sent as the dispatch sends it (pending, then its verified read-back through
`Readings.commanded` 0.2 s later, which keeps `lowered_at`, `target_w`, `tuned_at` and
`mode_since` as the daemon does). The fleet runs at rated; at +60 s a cap of `cap` of the
fleet's rating arrives with a 60 s deadline, reached once the true draw (the meter) is
within the limit; the cap holds for `minutes`. The draw is sampled at 5 Hz.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import statistics
import sys
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.allocate import EFFICIENCY, FAMILIES, RATED_W, model_curves
from bench.soak_plant import Plant, Unit
from controller.core.curves import Curve, seed_curve
from controller.core.model import (
    SHEDS,
    Action,
    ActionKind,
    Limit,
    MinerSpec,
    PlanRules,
    Snapshot,
    Tuning,
    coming_back_w,
)
from controller.core.planner import plan, shed_order
from controller.loop.telemetry import Readings
from drivers.types import Mode

BASE = datetime(2026, 12, 1, tzinfo=UTC)
SUBSTEPS = 5  # draw samples per second (the site meter polls at 4 Hz)
LATENCY_STEPS = 1  # a command's verified read-back lands 0.2 s after it is sent
CAP_AT_S = 60
DEADLINE_S = 60
# Ten-miner cycle: six LuxOS, three Braiins OS+ (power-target families the allocation
# moves), one Whatsminer (sleep and wake only: the ladder's).
MIX = ("luxos",) * 6 + ("braiins-os",) * 3 + ("whatsminer",)
# The daemon's defaults (controller/config: ControlCfg, TuningCfg, telemetry, grid).
RULES = PlanRules(
    margin_w=0,
    stale_after=timedelta(seconds=15),
    wake_headroom_w=5_000,
    wake_window=timedelta(seconds=1),
    wake_max_per_window=10,
    wake_max_w_per_window=50_000,
    wake_hold_after_shed=timedelta(seconds=30),
)
TUNING = Tuning(hysteresis=0.01, max_changes=200, dwell=timedelta(minutes=5))


@dataclass(frozen=True, slots=True)
class Farm:
    specs: tuple[MinerSpec, ...]
    units: tuple[Unit, ...]
    curves: Mapping[str, Curve]  # miner id -> its model's seeded curve (shared objects)
    models: Mapping[str, str]  # miner id -> model key, for distinct curves


def _model_key(driver: str, rated: int, eff: float) -> str:
    return f"{driver}-{rated}-{eff}"


ONE_MODEL = ("luxos", 3250, 29.5)  # an S19j Pro-class LuxOS farm: the ladder's own source


def farm(n: int, *, prior: bool = False, one_model: bool = False) -> Farm:
    """`n` miners in MIX's proportions over bench.allocate's nine models per family, each
    sharing its model's seeded curve: LuxOS from the profiles its firmware lists; Braiins
    OS+ on the simulator's physics at its power targets (what learning converges to), or
    with `prior`, as core.curves seeds them before anything is measured. `one_model`: a
    farm of one model (ONE_MODEL), where only the settings can win hashrate."""
    seeded = {spec.id: (spec, curve) for spec, curve in model_curves()}
    if prior:
        seeded = {
            key: (spec, seed_curve(spec) if spec.driver == "braiins-os" else curve)
            for key, (spec, curve) in seeded.items()
        }
    profiles = {name: make for name, _, make in FAMILIES}
    specs, units, curves, models = [], [], {}, {}
    for i in range(n):
        driver = MIX[i % len(MIX)]
        rated = RATED_W[(i // len(MIX)) % len(RATED_W)]
        eff = EFFICIENCY[(i // (len(MIX) * len(RATED_W))) % len(EFFICIENCY)]
        if one_model:
            driver, rated, eff = ONE_MODEL
        key = _model_key(driver, rated, eff)
        model_spec, curve = seeded[key]
        spec = MinerSpec(f"m{i:05d}", driver, f"c{i // 500}", rated, eff, model_spec.traits)
        levels: tuple[int, ...] = ()
        if driver == "luxos":  # the profiles' watts, as the driver picks among them
            levels = tuple(sorted(round(w) for _, w, _ in profiles[driver](rated, eff)))
        specs.append(spec)
        units.append(Unit(spec, round(rated / eff, 1), levels))  # as the sim's model_for
        curves[spec.id] = curve
        models[spec.id] = key
    return Farm(tuple(specs), tuple(units), curves, models)


def distinct_curves(f: Farm, seed: int) -> dict[str, Curve]:
    """A curve per miner, each a little off its model's (as learned curves would be), so
    no two are the same object: the allocation's grouping by curve finds nothing to share."""
    rng = random.Random(seed)
    return {
        miner_id: Curve(
            tuple(
                s if k == 0 else s._replace(hashrate_ths=s.hashrate_ths * rng.uniform(0.98, 1.02))
                for k, s in enumerate(curve.settings)
            )
        )
        for miner_id, curve in f.curves.items()
    }


@dataclass(slots=True)
class Window:
    """Samples of the true draw and hashrate from `start_s` on."""

    start_s: float
    n: int = 0
    draw_w: float = 0.0
    ths: float = 0.0

    def add(self, t: float, draw: float, ths: float) -> None:
        if t >= self.start_s:
            self.n += 1
            self.draw_w += draw
            self.ths += ths

    def figures(self) -> dict[str, float]:
        hours = self.n / SUBSTEPS / 3600
        mean_w = self.draw_w / self.n if self.n else 0.0
        return {
            "minutes": round(hours * 60, 2),
            "mean_phs": round(self.ths / self.n / 1000, 3) if self.n else 0.0,
            "mean_mw": round(mean_w / 1e6, 4),
            "energy_kwh": round(mean_w * hours / 1000, 1),
        }


@dataclass(slots=True)
class Result:
    label: str
    miners: int
    limit_w: int
    rating_w: float
    whole: Window
    last: Window
    reached_s: float | None = None
    missed: bool = False
    over_samples: int = 0  # samples above the limit after the deadline was met or missed
    over_max_w: float = 0.0  # the most the draw was over it then (0: never)
    peak_w: float = 0.0  # the highest draw after the deadline
    commands: Counter[str] = field(default_factory=Counter)  # sent after the deadline was met
    late_commands: Counter[str] = field(default_factory=Counter)  # in the last 10 minutes
    changed: set[str] = field(default_factory=set)
    after_s: float = 0.0  # seconds from the deadline being met to the end
    plan_ms: list[tuple[float, float, bool]] = field(default_factory=list)  # (t, ms, retuned)
    minutes: list[tuple[float, float]] = field(default_factory=list)  # per minute: PH/s, MW
    captured: tuple[Snapshot, Limit] | None = None  # the first plan that retuned

    def report(self) -> dict[str, Any]:
        cap = [ms for t, ms, _ in self.plan_ms if t >= CAP_AT_S]
        reached = self.reached_s
        steady = [ms for t, ms, _ in self.plan_ms if reached is not None and t > reached]
        retuned = [ms for _, ms, r in self.plan_ms if r]
        per_hour = 3600 / self.after_s if self.after_s else 0.0
        return {
            "label": self.label,
            "miners": self.miners,
            "limit_mw": round(self.limit_w / 1e6, 4),
            "rating_mw": round(self.rating_w / 1e6, 4),
            "whole": self.whole.figures(),
            "last": self.last.figures(),
            "deadline_met": not self.missed and reached is not None,
            "reached_s": None if reached is None else round(reached - CAP_AT_S, 1),
            "over_samples": self.over_samples,
            "over_max_w": round(self.over_max_w),
            "headroom_min_w": round(self.limit_w - self.peak_w),
            "commands_after": dict(self.commands),
            "commands_last_10_min": dict(self.late_commands),
            "miners_changed": len(self.changed),
            "changes_per_miner_hour": round(
                sum(self.commands.values()) / self.miners * per_hour, 4
            ),
            "plan_first_ms": round(cap[0], 2) if cap else None,
            "plan_ms": _spread(cap),
            "plan_steady_ms": _spread(steady),
            "plan_retune_ms": _spread(retuned),
            "per_minute_phs": [round(p, 3) for p, _ in self.minutes],
            "per_minute_mw": [round(w, 4) for _, w in self.minutes],
        }


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 2),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "max": round(ordered[-1], 2),
    }


Flight = dict[int, list[tuple[int, Action, datetime]]]  # by landing step: (unit, action, sent)


def soak(  # noqa: C901, PLR0912, PLR0915 - one loop, in one place so its order reads down
    f: Farm,
    *,
    cap: float,
    minutes: float,
    tuned: bool,
    noise: float = 0.005,
    seed: int = 7,
    curves: Mapping[str, Curve] | None = None,
    rules: PlanRules = RULES,
) -> Result:
    """One soak: the fleet at rated, the cap at CAP_AT_S, held for `minutes`; `rules` as
    the site's (its tuning is set by `tuned`)."""
    plant = Plant(f.units, noise=noise, rng=random.Random(seed))
    readings = Readings({s.id: s for s in f.specs})
    index = {s.id: i for i, s in enumerate(f.specs)}
    rules = replace(rules, tuning=TUNING if tuned else None)
    curves = f.curves if curves is None else curves
    limit_w = round(cap * plant.rating_w)
    site = Limit(round(plant.rating_w * 1.1), ("site cap",))
    due_s = CAP_AT_S + DEADLINE_S
    end_s = CAP_AT_S + round(minutes * 60)
    tail_s = max(CAP_AT_S, end_s - 20 * 60)
    result = Result(
        "with allocation" if tuned else "today's plan",
        len(f.specs),
        limit_w,
        plant.rating_w,
        Window(CAP_AT_S),
        Window(tail_s),
    )
    recent: deque[tuple[datetime, int]] = deque()
    last_shed: datetime | None = None
    flight: Flight = {}
    order: tuple[int, ...] | None = None
    judged_from: float | None = None  # the deadline met or missed: violations count from here
    minute: list[tuple[float, float]] = []
    for step in range(end_s * SUBSTEPS + 1):
        t = step / SUBSTEPS
        at = BASE + timedelta(seconds=t)
        for i, action, sent in flight.pop(step, ()):  # read-backs landing now
            plant.apply(i, action.kind, action.target_w, t)
            reading = plant.read(i, t)
            readings.commanded(action.miner_id, action.kind, reading, at, since=sent)
        draw, ths = plant.sample(t)
        if t >= CAP_AT_S:  # the meter: the deadline, violations, the windows
            if judged_from is None and draw <= limit_w:
                judged_from = result.reached_s = t
            elif judged_from is None and t > due_s:
                judged_from, result.missed = t, True
            if judged_from is not None:
                result.peak_w = max(result.peak_w, draw)
                if draw > limit_w:
                    result.over_samples += 1
                    result.over_max_w = max(result.over_max_w, draw - limit_w)
            if t < end_s:
                result.whole.add(t, draw, ths)
                result.last.add(t, draw, ths)
                minute.append((ths, draw))
                if len(minute) == 60 * SUBSTEPS:
                    result.minutes.append(
                        (
                            sum(h for h, _ in minute) / len(minute) / 1000,
                            sum(w for _, w in minute) / len(minute) / 1e6,
                        )
                    )
                    minute = []
        if step % SUBSTEPS or t >= end_s:
            continue
        # The supervisor's tick: a telemetry sweep recorded, then a plan, then the dispatch.
        for i, spec in enumerate(f.specs):
            readings.record(spec.id, plant.read(i, t), at)
        views = readings.views()
        if order is None:
            order = shed_order(views)  # the fleet never changes: sorted once, as the daemon
        while recent and at - recent[0][0] >= rules.wake_window:
            recent.popleft()
        snapshot = Snapshot(at, views, tuple(recent), last_shed, order=order, curves=curves)
        limit = site
        if t >= CAP_AT_S:
            due = BASE + timedelta(seconds=due_s) if judged_from is None else None
            limit = Limit(limit_w, (f"cap {cap:.0%} of rating",), due)
        started = time.perf_counter()
        found = plan(snapshot, limit, rules)
        ms = (time.perf_counter() - started) * 1000
        retuned = any(a.kind is ActionKind.TUNE for a in found.actions)
        result.plan_ms.append((t, ms, retuned))
        if retuned and result.captured is None:
            result.captured = (snapshot, limit)
        for action in found.actions:  # as Dispatch._account, then the command goes out
            i = index[action.miner_id]
            kind, view = action.kind, views[i]
            asleep = view.reading is not None and view.reading.mode is Mode.SLEEPING
            if kind is ActionKind.TUNE:
                if action.target_w is not None and asleep:
                    recent.append((at, action.target_w))  # woken at its target
            elif kind in SHEDS:
                last_shed = at
            else:
                recent.append((at, coming_back_w(view.spec, kind)))
            readings.set_pending(action.miner_id, kind, target_w=action.target_w)
            flight.setdefault(step + LATENCY_STEPS, []).append((i, action, at))
            if result.reached_s is not None:
                result.commands[kind.value] += 1
                result.changed.add(action.miner_id)
                if t >= end_s - 600:
                    result.late_commands[kind.value] += 1
    if result.reached_s is not None:
        result.after_s = end_s - result.reached_s
    return result


def timed(
    snapshot: Snapshot, limit: Limit, rules: PlanRules, repeats: int
) -> dict[str, float] | None:
    """plan() on one snapshot, `repeats` times: median, p95 and max milliseconds."""
    found = []
    for _ in range(repeats):
        started = time.perf_counter()
        plan(snapshot, limit, rules)
        found.append((time.perf_counter() - started) * 1000)
    return _spread(found)


def profiled(snapshot: Snapshot, limit: Limit, rules: PlanRules, top: int = 14) -> str:
    """cProfile of plan() on one snapshot: the functions that dominate, by own time."""
    profile = cProfile.Profile()
    profile.runcall(plan, snapshot, limit, rules)
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def timings(f: Farm, captured: tuple[Snapshot, Limit] | None, seed: int) -> dict[str, Any]:
    """plan() on the first snapshot the allocation retuned, three ways: today's plan, the
    allocation on seeded curves (one per model), and on a distinct curve per miner."""
    if captured is None:
        return {}
    snapshot, limit = captured
    learned = replace(snapshot, curves=distinct_curves(f, seed))
    tuned = replace(RULES, tuning=TUNING)
    return {
        "at_s": round((snapshot.taken_at - BASE).total_seconds() - CAP_AT_S, 1),
        "today": timed(snapshot, limit, RULES, 15),
        "seeded": timed(snapshot, limit, tuned, 15),
        "distinct": timed(learned, limit, tuned, 15),
    }


def _row(name: str, a: object, b: object, change: str = "") -> str:
    return f"| {name} | {a} | {b} | {change} |"


def _pct(a: float, b: float) -> str:
    return f"{100 * (b / a - 1):+.1f} %" if a else ""


def _ms(spread: Mapping[str, float] | None) -> str:
    if spread is None:
        return "-"
    return f"{spread['median']:.1f} / {spread['p95']:.1f} / {spread['max']:.1f} (n={spread['n']:g})"


def table(today: Mapping[str, Any], tuned: Mapping[str, Any], times: Mapping[str, Any]) -> str:
    """The two runs side by side, as markdown."""
    lines = [
        _row("", "today's plan", "with allocation", "change"),
        "|---|---|---|---|",
    ]
    for key, name in (("last", "last 20 min"), ("whole", "whole hold")):
        a, b = today[key], tuned[key]
        lines += [
            _row(
                f"mean hashrate, {name}",
                f"{a['mean_phs']:.2f} PH/s",
                f"{b['mean_phs']:.2f} PH/s",
                _pct(a["mean_phs"], b["mean_phs"]),
            ),
            _row(
                f"mean draw / energy, {name}",
                f"{a['mean_mw']:.3f} MW / {a['energy_kwh']:,.0f} kWh",
                f"{b['mean_mw']:.3f} MW / {b['energy_kwh']:,.0f} kWh",
                _pct(a["energy_kwh"], b["energy_kwh"]),
            ),
        ]

    def deadline(r: Mapping[str, Any]) -> str:
        return f"met in {r['reached_s']:g} s" if r["deadline_met"] else "MISSED"

    def changes(r: Mapping[str, Any]) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["commands_after"].items())) or "none"
        return f"{r['changes_per_miner_hour']:.3f} ({kinds})"

    def late(r: Mapping[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(r["commands_last_10_min"].items())) or "0"

    lines += [
        _row("deadline (60 s)", deadline(today), deadline(tuned)),
        _row(
            "samples over the limit after it (5 Hz)",
            today["over_samples"],
            tuned["over_samples"],
        ),
        _row(
            "least headroom after it",
            f"{today['headroom_min_w'] / 1000:,.1f} kW",
            f"{tuned['headroom_min_w'] / 1000:,.1f} kW",
        ),
        _row("changes per miner per hour (after it)", changes(today), changes(tuned)),
        _row("commands in the last 10 min", late(today), late(tuned)),
        _row("miners changed after it", today["miners_changed"], tuned["miners_changed"]),
        _row("plan() first after the cap, ms", today["plan_first_ms"], tuned["plan_first_ms"]),
        _row(
            "plan() after the cap, ms median / p95 / max",
            _ms(today["plan_ms"]),
            _ms(tuned["plan_ms"]),
        ),
        _row("plan() once met, ms", _ms(today["plan_steady_ms"]), _ms(tuned["plan_steady_ms"])),
        _row("plan() that retuned, ms", "-", _ms(tuned["plan_retune_ms"])),
    ]
    if times:
        lines += [
            "",
            (
                f"plan() on the first snapshot that retuned (+{times['at_s']:g} s), 15 runs, "
                "ms median / p95 / max:"
            ),
            "",
            "| rules | curves | plan() |",
            "|---|---|---|",
            f"| today's plan | - | {_ms(times['today'])} |",
            f"| with allocation | one per model (seeded) | {_ms(times['seeded'])} |",
            f"| with allocation | one per miner (distinct, learned) | {_ms(times['distinct'])} |",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--miners", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--cap", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--noise", type=float, default=0.005, help="readings' noise, +/- share")
    parser.add_argument(
        "--prior", action="store_true", help="Braiins OS+ curves as seeded, not on the physics"
    )
    parser.add_argument(
        "--distinct", action="store_true", help="run the soak on a distinct curve per miner"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the retuning plan")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--fleet",
        choices=("mixed", "one-model"),
        default="mixed",
        help="the mixed fleet, or one LuxOS model throughout",
    )
    args = parser.parse_args(argv)
    f = farm(args.miners, prior=args.prior, one_model=args.fleet == "one-model")
    curves = distinct_curves(f, args.seed) if args.distinct else None
    runs: dict[str, Result] = {}
    wall: dict[str, float] = {}
    for tuned in (False, True):
        started = time.perf_counter()
        run = soak(
            f,
            cap=args.cap,
            minutes=args.minutes,
            tuned=tuned,
            noise=args.noise,
            seed=args.seed,
            curves=curves,
        )
        wall[run.label] = round(time.perf_counter() - started, 1)
        runs["tuned" if tuned else "today"] = run
        print(f"{run.label}: {wall[run.label]} s", file=sys.stderr)
    times = timings(f, runs["tuned"].captured, args.seed)
    reports = {key: run.report() for key, run in runs.items()}
    mix = Counter(s.driver for s in f.specs)
    if args.json:
        doc = {
            "args": vars(args),
            "mix": dict(mix),
            "runs": reports,
            "timings": times,
            "wall_s": wall,
        }
        print(json.dumps(doc, indent=1))
    else:
        head = reports["today"]
        print(
            f"{args.miners} miners ({', '.join(f'{n} {d}' for d, n in mix.items())}), "
            f"rating {head['rating_mw']:.3f} MW, cap {args.cap:.0%} = {head['limit_mw']:.3f} MW "
            f"at +{CAP_AT_S} s, {DEADLINE_S} s deadline, held {args.minutes:g} min\n"
        )
        print(table(reports["today"], reports["tuned"], times))
    captured = runs["tuned"].captured
    if args.profile and captured is not None:
        snapshot, limit = captured
        learned = replace(snapshot, curves=distinct_curves(f, args.seed))
        tuned_rules = replace(RULES, tuning=TUNING)
        for name, snap in (("seeded", snapshot), ("distinct", learned)):
            print(f"\ncProfile, plan() with allocation, {name} curves:", file=sys.stderr)
            print(profiled(snap, limit, tuned_rules), file=sys.stderr)


if __name__ == "__main__":
    main()
