"""curtaild itself: the real daemon (telemetry, journal, planner, LuxOS driver) on uvloop,
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

import uvloop
import yaml

from controller import logs, wire
from controller.app import Daemon
from controller.clock import SystemClock
from controller.config import parse

KEY = b"bench-key"


def site(hosts: list[str], journal: Path) -> str:
    os.environ["CURTAILD_BENCH_KEY"] = KEY.decode()
    miners = [
        {
            "id": f"b{i:05d}",
            "host": h,
            "driver": "luxos",
            "rated_power_w": 3250,
            "efficiency_j_th": 29.5,
            "container": f"c{i // 500}",
            "timeout_s": 5.0,
        }
        for i, h in enumerate(hosts)
    ]
    return yaml.safe_dump(
        {
            "site": {"id": "bench"},
            "grid": {"mode": "always-on", "cap_kw": len(hosts) * 4, "margin_kw": 1},
            "signals": {
                "sources": [{"id": "grid", "key": {"env": "CURTAILD_BENCH_KEY"}}],
                "http": {"listen": "127.0.0.1:0"},
            },
            "miners": miners,
            "journal": {"path": str(journal)},
            "logging": {"level": "WARNING", "format": "json"},
        }
    )


async def run(hosts: list[str]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        loaded = parse(site(hosts, Path(tmp) / "journal.db"))
        logs.configure(loaded.config.logging.level, loaded.config.logging.format, sys.stderr)
        async with Daemon(loaded, SystemClock(), tune_gc=True) as daemon:
            # Ready means the first telemetry sweep is in; the poller now idles until its
            # next interval, so the signal meets the daemon in its steady state.
            await asyncio.sleep(0.5)  # as in service: start-up tuning (gc) is done
            if attach := os.environ.get("BENCH_ATTACH_S"):  # time to attach a profiler
                print(f"pid {os.getpid()}", file=sys.stderr, flush=True)
                await asyncio.sleep(float(attach))
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
            signature = wire.sign(KEY, ts, body)
            profiler = cProfile.Profile() if os.environ.get("BENCH_PROFILE") else None
            if profiler is not None:
                profiler.enable()  # the fan-out window only, not start-up
            t0, m0, c0 = time.time(), time.monotonic(), time.process_time()
            outcome = daemon.inbox.submit_http(body, str(ts), signature)
            assert outcome.status == "received", outcome
            # Polled every 5 ms: an event hook into the supervisor would change what we measure.
            while daemon.supervisor.commands_sent < len(hosts):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            cpu = time.process_time() - c0
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(os.environ["BENCH_PROFILE"])
            # Command results reach the journal in a batch on the next cycle.
            query = "SELECT max(finished_at), count(*) FROM commands"
            async with asyncio.timeout(30):
                while (rows := daemon.journal.rows(query))[0][1] < len(hosts):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            acked = daemon.journal.rows("SELECT count(*) FROM commands WHERE outcome='ok'")
            failed = daemon.journal.rows(
                "SELECT outcome, detail FROM commands WHERE outcome!='ok' LIMIT 5"
            )
    end = datetime.fromisoformat(rows[0][0]).timestamp()
    return {
        "method": "curtaild",
        "start": t0,
        "start_monotonic": m0,
        "end": end,
        "cpu_s": cpu,
        "acked": acked[0][0],
        "errors": [f"{o}: {d}" for o, d in failed],
    }


if __name__ == "__main__":
    addresses = Path(sys.argv[1]).read_text().split()
    print(json.dumps(uvloop.run(run(addresses))))
