"""Fan-out benchmark: from a curtailment signal's arrival to every miner's acknowledged sleep.

    python -m bench.fanout [--sizes 1000 5000 10000] [--repeats 3] [--no-pyasic]
    python -m bench.fanout --farm mixed [--sizes 1000 5000 10000]

For each fleet size the simulated fleet runs in separate processes (so it never shares
curtaild's event loop). `--farm luxos` (the default) is all LuxOS; `--farm mixed` blends
the four families as the demo farm does, and only curtaild can drive it. Each contender
then runs in a fresh process of its own, against a freshly reset fleet: the bare uvloop
loop, curtaild, and pyasic 0.79.0 from a throwaway virtualenv. Every miner's sleep is
confirmed on the simulator side. The first command on the wire is timestamped by the
simulator (CLOCK_MONOTONIC, shared by every process on Linux) and compared with the
contender's start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from bench import fleet

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYASIC_VENV = HERE / ".venv-pyasic"
PYASIC_PIN = "pyasic==0.79.0"
# The first request of a sleep, per family; telemetry reads do not count.
SLEEP_OPENERS = {
    "logon",  # LuxOS (curtaild)
    "session",  # LuxOS (pyasic)
    "curtail",
    "PUT /api/v1/actions/pause",  # Braiins OS+ REST
    "power_off",  # Whatsminer API v2 (its token was fetched by an earlier read)
    "set.miner.service",  # Whatsminer API v3
    "GET /cgi-bin/get_miner_conf.cgi",  # stock Antminer
}


def hosts_for(count: int) -> list[str]:
    """Distinct loopback addresses, 250 per /24: 127.100.0.1 ... 127.100.39.250."""
    return [f"127.{100 + (i // 250) // 250}.{(i // 250) % 250}.{1 + i % 250}" for i in range(count)]


@dataclass
class Shard:
    proc: subprocess.Popen[str]

    def ask(self, command: str) -> dict[str, Any]:
        stdin, stdout = self._pipes()
        stdin.write(json.dumps({"cmd": command}) + "\n")
        stdin.flush()
        reply: dict[str, Any] = json.loads(stdout.readline())
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            stdin, _ = self._pipes()
            stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            stdin.flush()
            self.proc.wait(30)

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        return self.proc.stdin, self.proc.stdout


def start_fleet(miners: list[fleet.BenchMiner], shards: int, tmp: Path) -> list[Shard]:
    started = []
    for k in range(shards):
        path = tmp / f"shard-{k}.jsonl"
        fleet.write(path, miners[k::shards])
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.simfleet", str(path)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(Shard(proc))
    for shard in started:
        line = shard._pipes()[1].readline()  # noqa: SLF001 - the "ready" line
        if not line:
            raise RuntimeError("a simulator shard failed to start")
    return started


def ensure_pyasic() -> Path | None:
    python = PYASIC_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {PYASIC_VENV.relative_to(ROOT)} with {PYASIC_PIN} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PYASIC_VENV)], check=True)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", PYASIC_PIN, "uvloop"], check=False
        )
        if done.returncode != 0:
            print("pyasic could not be installed; skipping it", flush=True)
            return None
    return python


ROOTS: dict[str, Path] = {}  # other trees of curtaild to run as well, by name (--root)


def contender(method: str, files: tuple[Path, Path], pyasic: Path | None) -> list[str]:
    hosts_file, fleet_file = files
    if method == "bare":
        return [sys.executable, str(HERE / "bare.py"), str(hosts_file)]
    if method == "curtaild":
        return [sys.executable, "-m", "bench.ours", str(fleet_file)]
    assert pyasic is not None
    return [str(pyasic), str(HERE / "pyasic_fanout.py"), str(hosts_file)]


def run_once(
    method: str, shards: list[Shard], files: tuple[Path, Path], pyasic: Path | None
) -> dict[str, Any]:
    for shard in shards:
        shard.ask("reset")
    time.sleep(1.0)  # let the previous run's sockets drain
    # "curtaild@NAME": curtaild from another tree (--root), e.g. the code before a change.
    root = ROOTS.get(method.partition("@")[2], ROOT)
    done = subprocess.run(
        contender(method.partition("@")[0], files, pyasic),
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["method"] = method  # curtaild@NAME says only "curtaild" of itself
    stats = [shard.ask("stats") for shard in shards]
    firsts = [t for s in stats for c, t in s["first_at"].items() if c in SLEEP_OPENERS]
    result["sleeping"] = sum(s["sleeping"] for s in stats)
    result["requests"] = sum(sum(s["commands"].values()) for s in stats)
    by_command: dict[str, int] = {}
    for s in stats:
        for command, count in s["commands"].items():
            by_command[command] = by_command.get(command, 0) + count
    result["by_command"] = dict(sorted(by_command.items(), key=lambda kv: -kv[1]))
    result["seconds"] = result["end"] - result["start"]
    window = (result["start_monotonic"], result["start_monotonic"] + result["seconds"])
    result["sim_cpu_s"] = sum(_cpu_in(s["cpu_samples"], *window) for s in stats)
    result["first_command_ms"] = (
        (min(firsts) - result["start_monotonic"]) * 1000 if firsts else None
    )
    # Every request's first arrival (telemetry reads too), for a look at what went first.
    first_at: dict[str, float] = {}
    for s in stats:
        for command, t in s["first_at"].items():
            first_at[command] = min(t, first_at.get(command, t))
    result["first_at_ms"] = {
        c: round((t - result["start_monotonic"]) * 1000, 1)
        for c, t in sorted(first_at.items(), key=lambda kv: kv[1])
    }
    return result


def _cpu_in(samples: list[list[float]], start: float, end: float) -> float:
    """A shard's CPU seconds between two monotonic instants, from its 50 ms samples."""
    before = [cpu for t, cpu in samples if t <= start] or [samples[0][1]]
    after = [cpu for t, cpu in samples if t >= end] or [samples[-1][1]]
    return after[0] - before[-1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", type=int, default=2, help="simulator processes")
    parser.add_argument("--farm", choices=fleet.FARMS, default="luxos")
    parser.add_argument("--no-pyasic", action="store_true")
    parser.add_argument(
        "--root",
        type=Path,
        action="append",
        default=[],
        help="also run curtaild from this tree (repeatable), as curtaild@<its folder name>",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="timestamp curtaild's path to the first command (bench/trace.py)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.trace:
        os.environ["BENCH_TRACE"] = "1"  # inherited by the curtaild contender
    ROOTS.update((p.resolve().name, p.resolve()) for p in args.root)
    others = [f"curtaild@{name}" for name in ROOTS]
    if args.farm == "luxos":
        pyasic = None if args.no_pyasic else ensure_pyasic()
        methods = ["bare", "curtaild", *others] + (["pyasic"] if pyasic else [])
    else:  # neither the bare loop nor pyasic speaks every family's write path
        pyasic, methods = None, ["curtaild", *others]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="curtaild-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for size in args.sizes:
            hosts = hosts_for(size)
            miners = fleet.build(hosts, args.farm)
            files = (tmp / f"hosts-{size}.txt", tmp / f"fleet-{size}.jsonl")
            files[0].write_text("\n".join(hosts))
            fleet.write(files[1], miners)
            shards = start_fleet(miners, args.shards, tmp)
            try:
                for repeat in range(args.repeats):
                    for method in methods:
                        result = run_once(method, shards, files, pyasic)
                        result.update(size=size, repeat=repeat, farm=args.farm)
                        runs.append(result)
                        print_run(result)
            finally:
                for shard in shards:
                    shard.stop()
    report(runs, methods, args)


def print_run(result: dict[str, Any]) -> None:
    size = result["size"]
    families = result.get("family_s") or {}
    print(
        f"{size:>6} {result['method']:<9} #{result['repeat']}: {result['seconds']:7.2f} s, "
        f"cpu {result['cpu_s']:.2f} s (simulators {result['sim_cpu_s']:.2f} s), "
        f"{result['sleeping']}/{size} asleep, "
        f"first command {result['first_command_ms']:.1f} ms, "
        f"{result['requests'] / size:.1f} requests/miner"
        + ("".join(f", {k} {v:.2f} s" for k, v in families.items()) if len(families) > 1 else "")
        + (f", all ok after retries {result['all_ok_s']:.2f} s" if result.get("all_ok_s") else "")
        + (f", errors {result['errors'][:2]}" if result["errors"] else "")
        + (f"\n         trace {result['trace']}" if result.get("trace") else ""),
        flush=True,
    )


def report(runs: list[dict[str, Any]], methods: list[str], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "shards": args.shards,
        "farm": args.farm,
    }
    suffix = "" if args.farm == "luxos" else f"-{args.farm}"
    (args.out / f"fanout{suffix}-{stamp}.raw.json").write_text(
        json.dumps({"machine": machine, "runs": runs}, indent=1)
    )
    title = (
        f"Fan-out ({args.farm} farm), {stamp}, {machine['cpus']} CPUs, "
        f"Python {machine['python']}, {args.repeats} runs each, median (min-max):"
    )
    if args.farm == "luxos":
        table = _luxos_table(runs, methods, args)
    else:
        table = _mixed_table(runs, methods, args)
    text = "\n".join([title, "", *table])
    (args.out / f"fanout{suffix}-latest.md").write_text(text + "\n")
    print("\n" + text)


def _luxos_table(
    runs: list[dict[str, Any]], methods: list[str], args: argparse.Namespace
) -> list[str]:
    header = (
        "| miners | method | time to all acked | ratio to bare | CPU in window | "
        "CPU ratio | first command | all asleep | requests/miner |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for size in args.sizes:
        medians: dict[str, float] = {}
        cpus: dict[str, float] = {}
        for method in methods:
            mine = [r for r in runs if r["size"] == size and r["method"] == method]
            secs = [r["seconds"] for r in mine]
            medians[method] = statistics.median(secs)
            ratio = medians[method] / medians["bare"]
            cpus[method] = statistics.median(r["cpu_s"] for r in mine)
            cpu_ratio = cpus[method] / cpus["bare"]
            lines.append(
                f"| {size:,} | {method} | {_spread(secs)} | {ratio:.2f}x | "
                f"{cpus[method]:.2f} s | {cpu_ratio:.2f}x | {_first(mine)} | "
                f"{_asleep(mine, size)} | {_requests(mine, size)} |"
            )
    return lines


def _mixed_table(
    runs: list[dict[str, Any]], methods: list[str], args: argparse.Namespace
) -> list[str]:
    families = sorted({name for r in runs for name in r["family_s"]})
    header = (
        "| miners | method | time to all acked | curtaild CPU | simulators' CPU | first command | "
        + " | ".join(f"{name} acked" for name in families)
        + " | failed first tries | all acked, retries included | all asleep | requests/miner |"
    )
    lines = [header, "|" + "---|" * (10 + len(families))]
    for size in args.sizes:
        for method in methods:
            mine = [r for r in runs if r["size"] == size and r["method"] == method]
            lines.append(f"| {size:,} | {method} | " + _mixed_row(mine, families, size))
    return lines


def _mixed_row(mine: list[dict[str, Any]], families: list[str], size: int) -> str:
    per_family = " | ".join(
        _spread([r["family_s"][name] for r in mine if name in r["family_s"]]) for name in families
    )
    failed = [
        sum(n for causes in r["family_failed"].values() for n in causes.values()) for r in mine
    ]
    return (
        f"{_spread([r['seconds'] for r in mine])} | "
        f"{statistics.median(r['cpu_s'] for r in mine):.2f} s | "
        f"{statistics.median(r['sim_cpu_s'] for r in mine):.2f} s | {_first(mine)} | "
        f"{per_family} | {statistics.median(failed):g} ({min(failed)}-{max(failed)}) | "
        f"{_spread([r['all_ok_s'] for r in mine if r['all_ok_s'] is not None])}"
        f"{'' if all(r['all_ok_s'] is not None for r in mine) else ' (some never)'} | "
        f"{_asleep(mine, size)} | {_requests(mine, size)} |"
    )


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def _first(runs: list[dict[str, Any]]) -> str:
    firsts = [r["first_command_ms"] for r in runs if r["first_command_ms"] is not None]
    if not firsts:
        return "-"
    return f"{statistics.median(firsts):.1f} ms ({min(firsts):.0f}-{max(firsts):.0f})"


def _asleep(runs: list[dict[str, Any]], size: int) -> str:
    return "yes" if all(r["sleeping"] == size for r in runs) else "NO"


def _requests(runs: list[dict[str, Any]], size: int) -> str:
    return f"{statistics.median(r['requests'] for r in runs) / size:.1f}"


if __name__ == "__main__":
    main()
