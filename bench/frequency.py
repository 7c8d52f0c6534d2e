"""Under-frequency benchmark: from a frequency dip at the site meter to commands and cuts.

    python -m bench.frequency [--repeats 5] [--config config/sim-farm.yaml] [--out DIR]

Per repeat, a fresh simulated farm (the demo's: miners of all four families, switched PDUs
on container 1, a site meter) and a fresh daemon on the real clock. The farm runs at full
power under the site cap (grid mode `always-on`, so no grid signal is involved), with no
simulated faults. Once the meter-measured draw is steady and nothing is in flight, the
simulated meter's frequency drops below the relay's trip threshold, and the bench records,
from that instant:

- when the daemon's meter poll first reads the low frequency,
- when the relay trips (the supervisor's first frequency event),
- when the first command reaches a device (a simulated miner's first sleep-opening
  request, or a simulated PDU's first outlet write, whichever is first),
- when the first and the last outlet of the shed are cut (the PDU simulator's own time
  of each write), and when the daemon has verified the last one,
- when a meter reading the daemon took is first at or below the relay's limit, and the
  relay obligation's own verdict (its time to target, measured by the meter, from the trip).

Every figure is reported from the dip and from the trip: the trip time (`trip_after_s`)
is part of the response by design. All processes are one here (farm and daemon share a
loop, as in `curtaild demo`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
import yaml

from bench.fanout import SLEEP_OPENERS
from controller import logs
from controller.app import Daemon
from controller.clock import SystemClock
from controller.config import Loaded, parse
from controller.loop.measure import MeterSample
from controller.loop.supervisor import Supervisor
from demo.farm import farm_from_config
from sim.farm import SimFarm
from sim.modbus import SimMeter, SimPdu

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CONFIG = ROOT / "config" / "sim-farm.yaml"
DIP_BELOW_HZ = 0.2  # the dip: this far below the trip threshold (49.3 Hz on the demo grid)
SETTLE_TIMEOUT_S = 60.0
STEADY_S = 2.0  # the draw within STEADY_BAND for this long, nothing in flight
STEADY_BAND = 0.01
AFTER_TIMEOUT_S = 40.0  # the shed must be over (limit reached on the meter, wire idle) by then
QUIET_S = 1.0  # nothing in flight for this long: the shed is over


@dataclass
class Probe:
    """What the bench sees of the daemon's meter polls (chained before the relay)."""

    trip_below_hz: float
    limit_w: Callable[[], int | None]
    low_seen_at: datetime | None = None
    under_limit_at: datetime | None = None
    samples: list[tuple[datetime, float, float]] = field(default_factory=list)

    def wrap(
        self, inner: Callable[[MeterSample | None], None]
    ) -> Callable[[MeterSample | None], None]:
        def on_meter(sample: MeterSample | None) -> None:
            if sample is not None:
                self._see(sample)
            inner(sample)

        return on_meter

    def _see(self, sample: MeterSample) -> None:
        reading = sample.reading
        hz = reading.frequency_hz
        self.samples.append((sample.at, reading.import_w, hz))
        if self.low_seen_at is None and hz < self.trip_below_hz:
            self.low_seen_at = sample.at
        limit = self.limit_w()
        if self.under_limit_at is None and limit is not None and reading.import_w <= limit:
            self.under_limit_at = sample.at


def bench_config(path: Path, tmp: Path) -> Loaded:
    """The farm at full power without any grid signal, no faults, a scratch journal."""
    data = yaml.safe_load(path.read_text())
    for source in data["signals"]["sources"]:
        env = source["key"].get("env")
        if env:
            os.environ.setdefault(env, secrets.token_hex(32))  # never used: no signal is sent
    data["journal"]["path"] = str(tmp / "journal.db")
    data["signals"].pop("mqtt", None)
    data["signals"]["http"] = {"listen": "127.0.0.1:0"}  # the daemon needs one source path
    data["grid"]["mode"] = "always-on"  # full power up to the site cap, no grant needed
    simulation = data.setdefault("simulation", {})
    simulation["start_mode"] = "mining"
    simulation["faults"] = {}
    if "frequency" not in data:
        raise SystemExit(f"{path}: no frequency section, nothing to measure")
    return parse(yaml.safe_dump(data), origin=str(path))


async def run_once(config: Path, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="curtaild-bench-freq-") as tmp:
        loaded = bench_config(config, Path(tmp))
        freq = loaded.config.frequency
        meter_cfg = loaded.config.meter
        assert freq is not None
        assert meter_cfg is not None
        clock = SystemClock()
        farm = farm_from_config(loaded, clock.time)
        meter = farm.devices[meter_cfg.id]
        assert isinstance(meter, SimMeter)
        pdus = [d for d in farm.devices.values() if isinstance(d, SimPdu)]
        async with farm, Daemon(loaded, clock, tune_gc=True) as daemon:
            sup = daemon.supervisor
            settled_s = await settle(daemon, farm)
            probe = Probe(freq.trip_below_hz, lambda: _relay_limit(sup))
            inner = daemon.measurements.on_meter
            assert inner is not None
            daemon.measurements.on_meter = probe.wrap(inner)
            draw_before_w = sup.draw.measured_w
            commands_before = sup.ledger.sent
            farm.reset_counters()
            cuts_before = {p.name: len(p.switches) for p in pdus}
            switches_before = len(sup.outlets.switches)
            dip_hz = freq.trip_below_hz - DIP_BELOW_HZ
            # t0 on every clock a timestamp below comes from: the farm's command counters
            # (time.monotonic), each PDU simulator's own time_fn, the daemon's clock.
            t0_mono = time.monotonic()
            t0_pdus = {p.name: p.time_fn() for p in pdus}
            t0_wall = clock.time()
            meter.set_frequency(dip_hz)
            await wait_shed_over(sup, probe, AFTER_TIMEOUT_S)
            meter.set_frequency(freq.nominal_hz)
            result = measure(
                sup,
                farm,
                pdus,
                probe,
                t0=(t0_mono, t0_wall, t0_pdus),
                before=(cuts_before, switches_before),
            )
            result.update(
                repeat=repeat,
                dip_hz=dip_hz,
                settle_s=settled_s,
                draw_before_kw=(draw_before_w or 0) / 1000,
                commands_completed=sup.ledger.sent - commands_before,
                commands_failed=sup.ledger.failed,
                escalations={k: len(v) for k, v in sup.commands.escalations.items()},
            )
            return result


async def settle(daemon: Daemon, farm: SimFarm) -> float:
    """Wait until the meter's draw is steady and no command is in flight."""
    sup = daemon.supervisor
    started = time.monotonic()
    steady_since: float | None = None
    reference = 0.0
    while time.monotonic() - started < SETTLE_TIMEOUT_S:
        await asyncio.sleep(0.1)
        measured = sup.draw.measured_w
        now = time.monotonic()
        busy = sup.ledger.in_flight > 0 or sup.pending_deadlines()
        if measured is None or busy or abs(measured - reference) > STEADY_BAND * reference:
            steady_since, reference = None, float(measured or 0)
            continue
        steady_since = steady_since or now
        if now - steady_since >= STEADY_S:
            return now - started
    raise RuntimeError(
        f"the farm never settled: measured {sup.draw.measured_w} W, "
        f"in flight {sup.ledger.in_flight}, "
        f"true draw {farm.total_power_w():.0f} W"
    )


async def wait_shed_over(sup: Supervisor, probe: Probe, timeout_s: float) -> None:
    """Until the relay's obligation is judged, the meter has read a draw within the relay's
    limit (slow sleeps may get it there long after the deadline) and the wire has been
    quiet for a while; or the timeout."""
    deadline = time.monotonic() + timeout_s
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        judged = sup.draw.frequency_events and not any(
            o.kind == "under-frequency" for o in sup.deadlines.pending
        )
        now = time.monotonic()
        if not judged or sup.ledger.in_flight or probe.under_limit_at is None:
            quiet_since = None
            continue
        quiet_since = quiet_since or now
        if now - quiet_since >= QUIET_S:
            return


def _relay_limit(sup: Supervisor) -> int | None:
    for ob in [*sup.deadlines.pending, *sup.deadlines.finished]:
        if ob.kind == "under-frequency":
            return ob.limit_w
    return None


def measure(
    sup: Supervisor,
    farm: SimFarm,
    pdus: list[SimPdu],
    probe: Probe,
    *,
    t0: tuple[float, float, dict[str, float]],
    before: tuple[dict[str, int], int],
) -> dict[str, Any]:
    t0_mono, t0_wall, t0_pdus = t0
    cuts_before, _ = before

    def since(at: datetime | None) -> float | None:
        return None if at is None else at.timestamp() - t0_wall

    trip = sup.draw.frequency_events[0] if sup.draw.frequency_events else None
    trip_s = since(trip[0]) if trip is not None else None
    writes = sorted(
        (t - t0_pdus[p.name], p.name, outlet)
        for p in pdus
        for t, outlet, on in p.switches[cuts_before[p.name] :]
        if not on
    )
    sleeps = {c: t - t0_mono for c, t in farm.first_at.items() if c in SLEEP_OPENERS}
    first_sleep = min(sleeps.values(), default=None)
    firsts = [t for t in (first_sleep, writes[0][0] if writes else None) if t is not None]
    # By time, not by index: the supervisor keeps only its latest switches.
    verified = [at for at, _, on in sup.outlets.switches if not on and at.timestamp() >= t0_wall]
    relay = [
        o for o in [*sup.deadlines.finished, *sup.deadlines.pending] if o.kind == "under-frequency"
    ]
    ob = relay[0] if relay else None
    return {
        "low_seen_s": since(probe.low_seen_at),
        "trip_s": trip_s,
        "trip_hz": trip[2] if trip is not None else None,
        "first_command_s": min(firsts, default=None),
        "first_sleep_command_s": first_sleep,
        "sleep_openers": {c: round(t, 4) for c, t in sorted(sleeps.items(), key=lambda kv: kv[1])},
        "first_cut_s": writes[0][0] if writes else None,
        "last_cut_s": writes[-1][0] if writes else None,
        "cuts": len(writes),
        "last_cut_verified_s": since(max(verified)) if verified else None,
        "meter_under_limit_s": since(probe.under_limit_at),
        "relay_limit_kw": ob.limit_w / 1000 if ob is not None else None,
        "obligation_status": ob.status.value if ob is not None else None,
        "obligation_time_to_target_s": ob.time_to_target_s if ob is not None else None,
        "obligation_deadline_s": ob.deadline_s if ob is not None else None,
        "draw_at_deadline_kw": (
            ob.measured_w / 1000 if ob is not None and ob.measured_w is not None else None
        ),
        "frequency_events": [(since(at), what, hz) for at, what, hz in sup.draw.frequency_events],
        "meter_samples": [(since(at), round(w), hz) for at, w, hz in probe.samples],
    }


def print_run(r: dict[str, Any]) -> None:
    def ms(key: str) -> str:
        value = r.get(key)
        return "-" if value is None else f"{value * 1000:.0f} ms"

    print(
        f"#{r['repeat']}: settled in {r['settle_s']:.1f} s at {r['draw_before_kw']:.0f} kW; "
        f"dip to {r['dip_hz']:g} Hz: seen {ms('low_seen_s')}, trip {ms('trip_s')}, "
        f"first command {ms('first_command_s')}, first cut {ms('first_cut_s')}, "
        f"last cut {ms('last_cut_s')} ({r['cuts']} cuts), meter under the relay's "
        f"{r['relay_limit_kw']} kW {ms('meter_under_limit_s')}; relay deadline "
        f"{r['obligation_status']} (at it: {r['draw_at_deadline_kw']} kW); "
        f"escalations {r['escalations']}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    logs.configure("WARNING", "console", stream=sys.stderr)
    for noisy in ("transitions", "aiohttp", "pymodbus"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    runs = []
    for repeat in range(args.repeats):
        result = uvloop.run(run_once(args.config, repeat))
        print_run(result)
        runs.append(result)
    report(runs, args)


# (label, key) in the order the events happen; each is reported from the dip and the trip.
EVENTS = (
    ("the daemon's meter poll reads the low frequency", "low_seen_s"),
    ("the relay trips", "trip_s"),
    ("first command reaches a device", "first_command_s"),
    ("first outlet cut (at the PDU)", "first_cut_s"),
    ("last outlet cut (at the PDU)", "last_cut_s"),
    ("last cut verified by the daemon", "last_cut_verified_s"),
    ("a meter reading at or below the relay's limit", "meter_under_limit_s"),
)


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "config": str(args.config),
        "code": code_version(),
    }
    (args.out / f"frequency-{stamp}.raw.json").write_text(
        json.dumps({"machine": machine, "runs": runs}, indent=1)
    )
    text = "\n".join(table(runs, machine, stamp))
    (args.out / "frequency-latest.md").write_text(text + "\n")
    print("\n" + text)


def code_version() -> str:
    """The commit measured, "-dirty" if the product code had uncommitted changes."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--exclude", "*"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "controller", "drivers"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return done.stdout.strip().removesuffix("-dirty") + ("-dirty" if dirty else "")


def table(runs: list[dict[str, Any]], machine: dict[str, Any], stamp: str) -> list[str]:
    n = len(runs)
    title = (
        f"Under-frequency response, {stamp}, code {machine.get('code', 'unknown')}, "
        f"{machine['cpus']} CPUs, Python {machine['python']}, {n} runs, median (max):"
    )
    lines = [title, "", "| event | from the dip | from the trip |", "|---|---|---|"]
    for label, key in EVENTS:
        dip = [r[key] for r in runs if r[key] is not None]
        trip = [
            r[key] - r["trip_s"]
            for r in runs
            if r[key] is not None and r["trip_s"] is not None and r[key] >= r["trip_s"]
        ]
        missing = f" ({n - len(dip)} of {n} never)" if len(dip) < n else ""
        lines.append(f"| {label}{missing} | {_spread(dip)} | {_spread(trip)} |")
    reached = [
        r["obligation_time_to_target_s"]
        for r in runs
        if r["obligation_time_to_target_s"] is not None
    ]
    statuses = ", ".join(
        f"{status} {count}"
        for status, count in sorted(Counter(str(r["obligation_status"]) for r in runs).items())
    )
    lines.append(
        f"| the relay's obligation reached, as the daemon tracks it ({statuses} of {n}) "
        f"| - | {_spread(reached)} |"
    )
    sleeps = statistics.median(r["escalations"].get("sleep", 0) for r in runs)
    lowers = statistics.median(r["escalations"].get("lower", 0) for r in runs)
    waited = [
        r["trip_s"] - r["low_seen_s"]
        for r in runs
        if r["trip_s"] is not None and r["low_seen_s"] is not None
    ]
    cuts = statistics.median(r["cuts"] for r in runs)
    failed = sum(r["commands_failed"] for r in runs)
    summary = (
        f"The relay tripped {_spread(waited)} after the first low reading. "
        f"Draw before the dip {_median(runs, 'draw_before_kw')} kW (meter); the relay's limit "
        f"{_median(runs, 'relay_limit_kw')} kW (the draw at the trip less the shed block); "
        f"draw at the relay's {_median(runs, 'obligation_deadline_s', '.3g')} s deadline "
        f"{_median(runs, 'draw_at_deadline_kw')} kW. Shed per run: "
        f"{cuts:g} outlets cut, {sleeps:g} miners slept, {lowers:g} lowered; "
        f"failed commands over all runs: {failed}."
    )
    return [*lines, "", summary]


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) * 1000:.0f} ms ({max(values) * 1000:.0f})"


def _median(runs: list[dict[str, Any]], key: str, fmt: str = ".1f") -> str:
    values = [r[key] for r in runs if r[key] is not None]
    return format(statistics.median(values), fmt) if values else "-"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
