"""One shard of the benchmark's simulated fleet (`bench/fleet.py`), in its own process.

Controlled over stdin/stdout, one JSON object per line:
  {"cmd": "reset"}  every miner mining at full draw, no sessions, counters cleared
  {"cmd": "stats"}  miners per mode, requests and first request time (monotonic) per command,
                    and the shard's CPU time sampled every 50 ms since the reset
  {"cmd": "quit"}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import uvloop

from bench.fleet import BenchMiner, read
from drivers.types import Mode
from sim.farm import SimFarm, SimMinerSpec


def specs(fleet: list[BenchMiner]) -> list[SimMinerSpec]:
    return [
        SimMinerSpec(
            m.id,
            m.driver,
            m.host,
            m.port,
            m.container,
            m.rated_power_w,
            m.efficiency_j_th,
            web_port=m.web_port,
        )
        for m in fleet
    ]


SAMPLE_S = 0.05


async def sample_cpu(samples: list[tuple[float, float]]) -> None:
    """(monotonic, process CPU) pairs, so the harness can tell the shard's CPU in any
    window: on a 2-core machine a saturated simulator, not the contender, can be the limit."""
    while True:
        samples.append((time.monotonic(), time.process_time()))
        await asyncio.sleep(SAMPLE_S)


async def serve(fleet: list[BenchMiner]) -> None:
    farm = SimFarm(specs(fleet), time_fn=time.time)
    await farm.start()
    samples: list[tuple[float, float]] = []
    sampler = asyncio.create_task(sample_cpu(samples), name="cpu-sampler")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    say({"ready": len(farm.miners)})
    try:
        while line := await reader.readline():
            command = json.loads(line)["cmd"]
            if command == "reset":
                farm.reset(Mode.MINING)
                samples.clear()
                say({"ok": True})
            elif command == "stats":
                modes = farm.modes()
                say(
                    {
                        "mining": modes[Mode.MINING],
                        "sleeping": modes[Mode.SLEEPING],
                        "commands": dict(farm.commands),
                        "first_at": farm.first_at,
                        "cpu_samples": samples,
                    }
                )
            elif command == "quit":
                break
    finally:
        sampler.cancel()
        await farm.stop()


def say(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("fleet_file", type=Path, help="JSON lines, as bench.fleet.write makes")
    args = parser.parse_args()
    uvloop.run(serve(read(args.fleet_file)))


if __name__ == "__main__":
    main()
