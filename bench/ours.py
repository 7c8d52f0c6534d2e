"""curtaild itself: the real daemon (telemetry, journal, planner, the real drivers) on uvloop,
from a signed curtailment handed to the inbox to every miner's verified sleep."""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
import yaml

from bench import trace
from bench.fleet import BenchMiner, read
from controller import logs
from controller.app import Daemon
from controller.clock import SystemClock
from controller.config import parse
from controller.intake import wire

KEY = b"bench-key"
# Each miner's first command (retries follow a failed one).
FIRST_TRIES = """
SELECT c.miner_id, c.finished_at, c.outcome, c.detail FROM commands c
JOIN (SELECT min(seq) AS seq FROM commands GROUP BY miner_id) f ON c.seq = f.seq
"""


def site(fleet: list[BenchMiner], journal: Path) -> str:
    os.environ["CURTAILD_BENCH_KEY"] = KEY.decode()
    miners = [
        {
            "id": m.id,
            "host": m.host,
            "port": m.port,
            "driver": m.driver,
            "rated_power_w": m.rated_power_w,
            "efficiency_j_th": m.efficiency_j_th,
            "container": m.container,
            "timeout_s": 5.0,
        }
        | ({"web_port": m.web_port} if m.web_port is not None else {})
        for m in fleet
    ]
    return yaml.safe_dump(
        {
            "site": {"id": "bench"},
            "grid": {"mode": "always-on", "cap_kw": len(fleet) * 4, "margin_kw": 1},
            "signals": {
                "sources": [{"id": "grid", "key": {"env": "CURTAILD_BENCH_KEY"}}],
                "http": {"listen": "127.0.0.1:0"},
            },
            "miners": miners,
            "journal": {"path": str(journal)},
            "logging": {"level": "WARNING", "format": "json"},
        }
        | {"control": _control_overrides()}
    )


def _control_overrides() -> dict[str, int]:
    """`control` settings to try out, e.g. BENCH_IO_CONCURRENCY=1024."""
    overrides = {}
    for key in ("command_concurrency", "io_concurrency"):
        if value := os.environ.get(f"BENCH_{key.upper()}"):
            overrides[key] = int(value)
    return overrides


def signed_curtailment() -> tuple[bytes, int, str]:
    """The bench's signal: to 0 kW within a minute, as the grid operator signs it."""
    body = json.dumps(
        {
            "type": "curtailment",
            "id": "bench-1",
            "revision": 1,
            "issued_at": datetime.now(UTC).isoformat(),
            "limit_kw": 0,
            "deadline_s": 60,
        }
    ).encode()
    ts = int(time.time())
    return body, ts, wire.sign(KEY, ts, body)


async def run(fleet: list[BenchMiner]) -> dict[str, object]:
    tracer = trace.install() if os.environ.get("BENCH_TRACE") else None
    with tempfile.TemporaryDirectory() as tmp:
        loaded = parse(site(fleet, Path(tmp) / "journal.db"))
        logs.configure(loaded.config.logging.level, loaded.config.logging.format, sys.stderr)
        async with Daemon(loaded, SystemClock(), tune_gc=True) as daemon:
            # Ready means the first telemetry sweep is in; the poller now idles until its
            # next interval, so the signal meets the daemon in its steady state.
            await asyncio.sleep(0.5)  # as in service: start-up tuning (gc) is done
            if attach := os.environ.get("BENCH_ATTACH_S"):  # time to attach a profiler
                print(f"pid {os.getpid()}", file=sys.stderr, flush=True)
                await asyncio.sleep(float(attach))
            body, ts, signature = signed_curtailment()
            profiler = cProfile.Profile() if os.environ.get("BENCH_PROFILE") else None
            if profiler is not None:
                profiler.enable()  # the fan-out window only, not start-up
            if tracer is not None:
                tracer.start()
            t0, m0, c0 = time.time(), time.monotonic(), time.process_time()
            outcome = daemon.inbox.submit_http(body, str(ts), signature)
            assert outcome.status == "received", outcome
            # Polled every 5 ms: an event hook into the supervisor would change what we measure.
            while daemon.supervisor.ledger.sent < len(fleet):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            cpu = time.process_time() - c0
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(os.environ["BENCH_PROFILE"])
            # Command results reach the journal in a batch on the next cycle. A stock
            # Antminer's sleep waits out a restart of its mining process before read-back.
            tried = "SELECT count(DISTINCT miner_id) FROM commands"
            async with asyncio.timeout(180):
                while daemon.journal.rows(tried)[0][0] < len(fleet):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            first_tries = daemon.journal.rows(FIRST_TRIES)
            # A failed first try is retried after a back-off; the deadline is met only when
            # every miner has acknowledged, retries included.
            ok = (
                "SELECT count(DISTINCT miner_id), max(finished_at) "
                "FROM commands WHERE outcome = 'ok'"
            )
            all_ok_at: float | None = None
            try:
                async with asyncio.timeout(180):
                    while (done := daemon.journal.rows(ok))[0][0] < len(fleet):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                all_ok_at = datetime.fromisoformat(done[0][1]).timestamp()
            except TimeoutError:
                pass  # reported as never: some miners did not sleep within three minutes
    return {
        "method": "curtaild",
        "start": t0,
        "start_monotonic": m0,
        "cpu_s": cpu,
        "all_ok_s": None if all_ok_at is None else all_ok_at - t0,
        **first_try_outcomes(fleet, first_tries, t0),
    } | ({"trace": tracer.summary()} if tracer is not None else {})


def first_try_outcomes(
    fleet: list[BenchMiner], first_tries: list[tuple[Any, ...]], t0: float
) -> dict[str, object]:
    """When each family's last first try ended, and what failed, from the journal."""
    driver = {m.id: m.driver for m in fleet}
    end = max(datetime.fromisoformat(at).timestamp() for _, at, _, _ in first_tries)
    family_end: dict[str, float] = {}
    family_failed: dict[str, dict[str, int]] = {}
    for miner_id, at, outcome, detail in first_tries:
        family = driver[miner_id]
        t = datetime.fromisoformat(at).timestamp()
        family_end[family] = max(t, family_end.get(family, t))
        if outcome != "ok":
            causes = family_failed.setdefault(family, {})
            cause = f"{outcome}: {detail}"
            causes[cause] = causes.get(cause, 0) + 1
    failed = [f"{o}: {d}" for _, _, o, d in first_tries if o != "ok"]
    return {
        "end": end,
        "acked": sum(o == "ok" for _, _, o, _ in first_tries),
        "errors": failed[:5],
        "family_s": {name: at - t0 for name, at in sorted(family_end.items())},
        "family_failed": family_failed,
    }


if __name__ == "__main__":
    print(json.dumps(uvloop.run(run(read(Path(sys.argv[1]))))))
