"""Chaos and soak: real `curtaild` processes against a simulated farm, a real broker, hostile
signals, kills, a dead broker, a full disk, a stepped clock and lying miners.

    python -m bench.chaos               # the full run, about 15 minutes (make chaos)
    python -m bench.chaos --short       # a few minutes, for CI (make chaos-short)
    python -m bench.chaos --only flood,kills --keep

One `curtaild sim` of the demo farm (config/sim-farm.yaml: 300 miners of the four families,
switched PDUs on container 1, a site meter) on a loopback /16 of its own, for the whole run;
per scenario a mosquitto broker and `curtaild run` processes, each on a site config of its
own (a fresh journal, its own ports). The farm runs in grid mode `always-on` (full power
under the site cap) except where a scenario needs surplus-only grants. The truth comes from
the simulator's control API, the daemon's journal (read-only), its retained MQTT status and
/metrics. Each scenario prints a JSON summary; the run exits 1 if any criterion failed, 2
if the rig itself could not run. A scenario that cannot run honestly here (no root for the
small file system, no libfaketime) is skipped and says why; CURTAILD_CHAOS_REQUIRE_ALL=1
turns a skip into a failure. SIGINT or SIGTERM cancels the run: every scenario's processes
are stopped, the small file system unmounted and the scratch folder removed on the way out
(a second signal kills the children at once); the run then exits 128 + the signal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.chaos_rig import Plan, Result, Rig, kill_all
from bench.chaos_scenarios import SCENARIOS

HERE = Path(__file__).resolve().parent
FULL = Plan(signals=10_000, kills=(0.1, 1.0, 3.0, 10.0, 25.0), outage_s=60.0)
SHORT = Plan(signals=1_500, kills=(0.1, 3.0), outage_s=10.0)


@contextlib.contextmanager
def cancelled_by_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM cancel the running task, so that every context manager on the
    way out stops its processes and unmounts what it mounted; a second signal kills every
    child's process group at once (and cancels again). The signals received, in order."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            print(f"chaos: {name}: stopping and cleaning up", file=sys.stderr, flush=True)
        else:
            print(f"chaos: {name} again: killing every child", file=sys.stderr, flush=True)
            kill_all()
        task.cancel()

    watched = (signal.SIGINT, signal.SIGTERM)
    for signum in watched:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield received
    finally:
        for signum in watched:
            loop.remove_signal_handler(signum)


async def run(plan: Plan, only: list[str], out: Path | None, *, keep: bool = False) -> int:
    """The run; 128 + the signal if one cancelled it (once it had cleaned up)."""
    with cancelled_by_signals() as received:
        try:
            return await run_all(plan, only, out, keep=keep)
        except asyncio.CancelledError:
            if not received:
                raise
    name = signal.Signals(received[0]).name
    print(f"chaos: interrupted by {name}; processes stopped, cleaned up", file=sys.stderr)
    return 128 + received[0]


async def run_all(plan: Plan, only: list[str], out: Path | None, *, keep: bool = False) -> int:
    results: list[Result] = []
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        tmp = Path(tempfile.mkdtemp(prefix="curtaild-chaos-"))
        if keep:
            print(f"chaos: logs and journals kept in {tmp}", file=sys.stderr)
        else:
            cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        async with Rig.up(tmp) as rig:
            print(
                f"chaos: {len(rig.loaded.miners)} miners ({rig.rated_kw:g} kW rated) on "
                f"{rig.subnet}.0.0/16; scenarios: {', '.join(only)}",
                file=sys.stderr,
                flush=True,
            )
            results.extend([await scenario(rig, plan, name) for name in only])
    require_all = os.environ.get("CURTAILD_CHAOS_REQUIRE_ALL") == "1"
    failed = [r.scenario for r in results if r.ok is False or (require_all and r.ok is None)]
    summary = {
        "ok": not failed,
        "failed": failed,
        "skipped": [r.scenario for r in results if r.ok is None],
        "duration_s": round(time.monotonic() - started, 1),
        "plan": {"signals": plan.signals, "kills": plan.kills, "outage_s": plan.outage_s},
        "machine": machine(),
    }
    print(json.dumps({"chaos": summary}, indent=2), flush=True)
    if out is not None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
        raw = {"summary": summary, "scenarios": [r.as_json() for r in results]}
        await asyncio.to_thread(save, out / f"chaos-{stamp}.raw.json", raw)
    return 1 if failed else 0


async def scenario(rig: Rig, plan: Plan, name: str) -> Result:
    result = Result(name)
    print(f"chaos: {name} ...", file=sys.stderr, flush=True)
    try:
        await SCENARIOS[name](rig, plan, result)
    except Exception as err:  # a scenario that cannot finish fails, and says where
        result.check("the scenario ran to its end", ok=False, error=repr(err))
    result.duration_s = time.monotonic() - result.started
    verdict = "skipped" if result.ok is None else "ok" if result.ok else "FAILED"
    print(f"chaos: {name} {verdict} in {result.duration_s:.0f} s", file=sys.stderr, flush=True)
    print(json.dumps(result.as_json(), indent=2, default=str), flush=True)
    return result


def save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        cwd=HERE,
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit or None,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="the CI form: a few minutes")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--signals", type=int, default=None, help="hostile signals in the flood")
    parser.add_argument(
        "--kills", default=None, help="seconds after the signal of each kill, e.g. 0.1,0.1,3"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="raw JSON goes here")
    parser.add_argument("--keep", action="store_true", help="keep the logs and journals")
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if not only:
        parser.error(f"--only names no scenario; known: {', '.join(SCENARIOS)}")
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    plan = SHORT if args.short else FULL
    if args.signals is not None:
        plan = dataclasses.replace(plan, signals=args.signals)
    if args.kills is not None:
        plan = dataclasses.replace(plan, kills=tuple(float(k) for k in args.kills.split(",")))
    try:
        code = asyncio.run(run(plan, only, args.out, keep=args.keep))
    except Exception as err:
        print(f"chaos: the rig failed: {err!r}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
