"""Fan-out benchmark: from a curtailment signal's arrival to every miner's acknowledged sleep.

    python -m bench.fanout [--sizes 1000 5000 10000] [--repeats 3] [--no-pyasic]

For each fleet size the simulated LuxOS fleet runs in separate processes (so it never
shares curtaild's event loop). Each contender then runs in a fresh process of its own,
against a freshly reset fleet: the bare uvloop loop, curtaild, and pyasic 0.79.0 from a
throwaway virtualenv. Every miner's sleep is confirmed on the simulator side. The first
command on the wire is timestamped by the simulator (CLOCK_MONOTONIC, shared by every
process on Linux) and compared with the contender's start.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYASIC_VENV = HERE / ".venv-pyasic"
PYASIC_PIN = "pyasic==0.79.0"
SLEEP_OPENERS = {"logon", "session", "curtail"}


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


def start_fleet(hosts: list[str], shards: int, tmp: Path) -> list[Shard]:
    fleet = []
    for k in range(shards):
        part = hosts[k::shards]
        path = tmp / f"shard-{k}.txt"
        path.write_text("\n".join(part))
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.simfleet", str(path)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        fleet.append(Shard(proc))
    for shard in fleet:
        line = shard._pipes()[1].readline()  # noqa: SLF001 - the "ready" line
        if not line:
            raise RuntimeError("a simulator shard failed to start")
    return fleet


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


def contender(method: str, hosts_file: Path, pyasic: Path | None) -> list[str]:
    if method == "bare":
        return [sys.executable, str(HERE / "bare.py"), str(hosts_file)]
    if method == "curtaild":
        return [sys.executable, "-m", "bench.ours", str(hosts_file)]
    assert pyasic is not None
    return [str(pyasic), str(HERE / "pyasic_fanout.py"), str(hosts_file)]


def run_once(
    method: str, fleet: list[Shard], hosts_file: Path, pyasic: Path | None
) -> dict[str, Any]:
    for shard in fleet:
        shard.ask("reset")
    time.sleep(1.0)  # let the previous run's sockets drain
    done = subprocess.run(
        contender(method, hosts_file, pyasic),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    stats = [shard.ask("stats") for shard in fleet]
    # A sleep starts with logon (pyasic: session); telemetry reads do not count.
    firsts = [t for s in stats for c, t in s["first_at"].items() if c in SLEEP_OPENERS]
    result["sleeping"] = sum(s["sleeping"] for s in stats)
    result["requests"] = sum(sum(s["commands"].values()) for s in stats)
    result["seconds"] = result["end"] - result["start"]
    result["first_command_ms"] = (
        (min(firsts) - result["start_monotonic"]) * 1000 if firsts else None
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", type=int, default=2, help="simulator processes")
    parser.add_argument("--no-pyasic", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    pyasic = None if args.no_pyasic else ensure_pyasic()
    methods = ["bare", "curtaild"] + (["pyasic"] if pyasic else [])
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="curtaild-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for size in args.sizes:
            hosts = hosts_for(size)
            hosts_file = tmp / f"hosts-{size}.txt"
            hosts_file.write_text("\n".join(hosts))
            fleet = start_fleet(hosts, args.shards, tmp)
            try:
                for repeat in range(args.repeats):
                    for method in methods:
                        result = run_once(method, fleet, hosts_file, pyasic)
                        result.update(size=size, repeat=repeat)
                        runs.append(result)
                        first = result["first_command_ms"]
                        print(
                            f"cpu {result['cpu_s']:.2f} s  ",
                            end="",
                        )
                        print(
                            f"{size:>6} {method:<9} #{repeat}: {result['seconds']:7.2f} s, "
                            f"{result['sleeping']}/{size} asleep, "
                            f"first command {first:.1f} ms, "
                            f"{result['requests'] / size:.1f} requests/miner"
                            + (f", errors {result['errors'][:2]}" if result["errors"] else ""),
                            flush=True,
                        )
            finally:
                for shard in fleet:
                    shard.stop()
    report(runs, methods, args)


def report(runs: list[dict[str, Any]], methods: list[str], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "shards": args.shards,
    }
    (args.out / f"fanout-{stamp}.raw.json").write_text(
        json.dumps({"machine": machine, "runs": runs}, indent=1)
    )
    title = (
        f"Fan-out, {stamp}, {machine['cpus']} CPUs, Python {machine['python']}, "
        f"{args.repeats} runs each, median (min-max):"
    )
    header = (
        "| miners | method | time to all acked | ratio to bare | CPU in window | "
        "CPU ratio | first command | all asleep | requests/miner |"
    )
    lines = [title, "", header, "|---|---|---|---|---|---|---|---|---|"]
    for size in args.sizes:
        medians: dict[str, float] = {}
        cpus: dict[str, float] = {}
        for method in methods:
            mine = [r for r in runs if r["size"] == size and r["method"] == method]
            secs = [r["seconds"] for r in mine]
            medians[method] = statistics.median(secs)
            firsts = [r["first_command_ms"] for r in mine if r["first_command_ms"] is not None]
            ratio = medians[method] / medians["bare"]
            cpus[method] = statistics.median(r["cpu_s"] for r in mine)
            cpu_ratio = cpus[method] / cpus["bare"]
            asleep = all(r["sleeping"] == size for r in mine)
            lines.append(
                f"| {size:,} | {method} | {medians[method]:.2f} s ({min(secs):.2f}-"
                f"{max(secs):.2f}) | {ratio:.2f}x | {cpus[method]:.2f} s | {cpu_ratio:.2f}x | "
                f"{statistics.median(firsts):.1f} ms | "
                f"{'yes' if asleep else 'NO'} | "
                f"{statistics.median(r['requests'] for r in mine) / size:.1f} |"
            )
    table = "\n".join(lines)
    (args.out / "fanout-latest.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
