"""Read-side bench: GET /api/v1/status and GET /metrics on a 10,000-miner daemon, over real
HTTP, between telemetry sweeps and during a fan-out.

    python -m bench.api [--size 10000] [--requests 200] [--repeats 3] [--farm luxos]
    python -m bench.api --root /path/to/another/curtaild   # the same bench, other code

The simulated fleet runs in two processes of its own (bench/simfleet.py), the daemon in a
third (bench/api_daemon.py: the real daemon with its operator API on loopback), and this
process is the client: aiohttp's, one keep-alive connection per endpoint, one request at
a time, as a dashboard or a Prometheus scrape does. Each request's time is from sending it
to having read the whole body, on this side.

Per repeat, a fresh daemon against a freshly reset fleet:
- *steady*: the daemon ready, telemetry sweeping on its own cadence (a sweep of 10,000
  miners every 5 s), no signal: `--requests` of each endpoint, alternating, `--gap-ms`
  apart (so the window spans several sweeps); each request is then counted *between
  sweeps* or *during a sweep*, by the sweeps' times the daemon reports;
- *fan-out*: a 0 kW curtailment arrives; both endpoints are asked, alternating, the same
  gap apart, until every miner's sleep has been sent and none is in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench import fanout, fleet

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOKEN = "bench-token"  # a viewer's; /api/v1/status needs one, /metrics is public here
ENDPOINTS = {"status": "/api/v1/status", "metrics": "/metrics"}


class DaemonProc:
    """bench/api_daemon.py in its own process, on the code under `root`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, fleet_file: Path, root: Path) -> tuple[DaemonProc, int]:
        env = dict(os.environ)
        # The bench's own modules from this tree; the daemon from `root`.
        env["PYTHONPATH"] = os.pathsep.join([str(root), str(ROOT)])
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "api_daemon.py"),
            str(fleet_file),
            hashlib.sha256(TOKEN.encode()).hexdigest(),
            cwd=root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        daemon = cls(proc)
        ready = await daemon.read(600)
        return daemon, int(ready["port"])

    async def read(self, within_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), within_s)
        if not line:
            raise RuntimeError("the daemon exited")
        message: dict[str, Any] = json.loads(line)
        return message

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": command}).encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ConnectionError):
                await self.send("quit")
            await asyncio.wait_for(self.proc.wait(), 60)


Sample = tuple[float, float]  # (sent at, CLOCK_MONOTONIC; milliseconds to the whole body)


async def timed(session: aiohttp.ClientSession, url: str, check: str) -> Sample:
    """One request: when it was sent, and its milliseconds to the whole body read."""
    started = time.monotonic()
    async with session.get(url) as response:
        body = await response.read()
    elapsed = (time.monotonic() - started) * 1000
    if response.status != 200 or check not in body.decode():
        raise RuntimeError(f"{url}: {response.status} {body[:200]!r}")
    return started, elapsed


async def ask_both(
    sessions: dict[str, aiohttp.ClientSession],
    urls: dict[str, str],
    samples: dict[str, list[Sample]],
    gap_s: float,
) -> None:
    for name in ENDPOINTS:
        samples[name].append(await timed(sessions[name], urls[name], CHECKS[name]))
        await asyncio.sleep(gap_s)


def split_by_sweeps(
    samples: list[Sample], sweeps: list[list[float]]
) -> tuple[list[float], list[float]]:
    """The milliseconds of the requests that overlapped no telemetry sweep, and of those
    that overlapped one."""
    between: list[float] = []
    during: list[float] = []
    for sent, ms in samples:
        end = sent + ms / 1000
        overlaps = any(s[0] <= end and (len(s) == 1 or s[1] >= sent) for s in sweeps)
        (during if overlaps else between).append(ms)
    return between, during


CHECKS = {"status": '"miners"', "metrics": "curtaild_miners"}


async def run_once(fleet_file: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    daemon, port = await DaemonProc.start(fleet_file, root)
    urls = {name: f"http://127.0.0.1:{port}{path}" for name, path in ENDPOINTS.items()}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    steady: dict[str, list[Sample]] = {name: [] for name in ENDPOINTS}
    during: dict[str, list[Sample]] = {name: [] for name in ENDPOINTS}
    gap_s = args.gap_ms / 1000
    try:
        sessions = {
            name: aiohttp.ClientSession(
                headers=headers, connector=aiohttp.TCPConnector(limit=1, force_close=False)
            )
            for name in ENDPOINTS
        }
        try:
            for name in ENDPOINTS:  # connect and warm up, not timed
                await timed(sessions[name], urls[name], CHECKS[name])
            for _ in range(args.requests):
                await ask_both(sessions, urls, steady, gap_s)
            await daemon.send("signal")
            t0 = (await daemon.read(60))["t0"]
            done = asyncio.ensure_future(daemon.read(600))
            while not done.done():
                await ask_both(sessions, urls, during, gap_s)
            fanout_s = done.result()["done"] - t0
        finally:
            for session in sessions.values():
                await session.close()
        await daemon.send("quit")
        sweeps = (await daemon.read(60))["sweeps"]
    finally:
        await daemon.stop()
    result: dict[str, Any] = {"fanout_s": fanout_s, "sweeps": sweeps}
    for name in ENDPOINTS:
        between, swept = split_by_sweeps(steady[name], sweeps)
        result.setdefault("between", {})[name] = between
        result.setdefault("sweep", {})[name] = swept
        result.setdefault("fanout", {})[name] = [ms for _, ms in during[name]]
    return result


PHASES = {
    "between": "between sweeps",
    "sweep": "during a telemetry sweep",
    "fanout": "during a fan-out",
}


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "max": ordered[-1],
    }


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="curtaild-bench-api-") as tmp_name:
        tmp = Path(tmp_name)
        hosts = fanout.hosts_for(args.size)
        miners = fleet.build(hosts, args.farm)
        fleet_file = tmp / "fleet.jsonl"
        fleet.write(fleet_file, miners)
        shards = fanout.start_fleet(miners, args.shards, tmp)
        try:
            for repeat in range(args.repeats):
                for label, root in args.roots:
                    for shard in shards:
                        shard.ask("reset")
                    await asyncio.sleep(1.0)  # let the previous run's sockets drain
                    result = await run_once(fleet_file, root, args)
                    result.update(repeat=repeat, code=label)
                    runs.append(result)
                    print_run(result)
        finally:
            for shard in shards:
                shard.stop()
    return runs


def print_run(result: dict[str, Any]) -> None:
    parts = []
    for phase in PHASES:
        for name in ENDPOINTS:
            if not result[phase][name]:
                continue
            s = summary(result[phase][name])
            parts.append(f"{phase} {name} {s['median']:.1f}/{s['p95']:.1f} ms (n={s['n']:.0f})")
    print(
        f"{result['code']:<8} #{result['repeat']}: "
        + ", ".join(parts)
        + f"; fan-out {result['fanout_s']:.2f} s",
        flush=True,
    )


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "farm": args.farm,
        "size": args.size,
    }
    (args.out / f"api-{stamp}.raw.json").write_text(
        json.dumps({"machine": machine, "runs": runs}, indent=1)
    )
    title = (
        f"Status and metrics at {args.size:,} {args.farm} miners, {stamp}, {machine['cpus']} "
        f"CPUs, Python {machine['python']}, {args.repeats} runs of {args.requests} requests "
        "per endpoint (steady) or as many as the fan-out lasted; the median over all requests, "
        "p95, and the spread of the per-run medians:"
    )
    lines = [
        title,
        "",
        "| code | phase | endpoint | requests | median | p95 | per-run medians |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, _ in args.roots:
        mine = [r for r in runs if r["code"] == label]
        for phase, said in PHASES.items():
            for name, path in ENDPOINTS.items():
                every = [t for r in mine for t in r[phase][name]]
                if not every:
                    continue
                medians = [statistics.median(r[phase][name]) for r in mine if r[phase][name]]
                s = summary(every)
                lines.append(
                    f"| {label} | {said} | `{path}` | {s['n']:.0f} | {s['median']:.1f} ms | "
                    f"{s['p95']:.1f} ms | {min(medians):.1f}-{max(medians):.1f} ms |"
                )
    text = "\n".join(lines)
    (args.out / "api-latest.md").write_text(text + "\n")
    print("\n" + text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200, help="per endpoint, steady")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="between requests")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", type=int, default=2, help="simulator processes")
    parser.add_argument("--farm", choices=fleet.FARMS, default="luxos")
    parser.add_argument(
        "--root",
        type=Path,
        action="append",
        default=[],
        help="also run the daemon from this tree (repeatable), in the same run",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.roots = [("this", ROOT)] + [(p.name, p.resolve()) for p in args.root]
    report(uvloop.run(bench(args)), args)


if __name__ == "__main__":
    main()
