"""One shard of the benchmark's simulated LuxOS fleet, in its own process.

Controlled over stdin/stdout, one JSON object per line:
  {"cmd": "reset"}  every miner mining at full draw, no sessions, counters cleared
  {"cmd": "stats"}  miners per mode, requests and first request time (monotonic) per command
  {"cmd": "quit"}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import uvloop

from drivers.sim.farm import SimFarm, SimMinerSpec
from drivers.types import Mode


def specs(hosts: list[str]) -> list[SimMinerSpec]:
    return [
        SimMinerSpec(f"b{i:05d}", "luxos", host, 4028, f"c{i // 500}", 3250, 29.5)
        for i, host in enumerate(hosts)
    ]


async def serve(hosts: list[str]) -> None:
    farm = SimFarm(specs(hosts), time_fn=time.time)
    await farm.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    say({"ready": len(farm.miners)})
    try:
        while line := await reader.readline():
            command = json.loads(line)["cmd"]
            if command == "reset":
                farm.reset(Mode.MINING)
                say({"ok": True})
            elif command == "stats":
                modes = farm.modes()
                say(
                    {
                        "mining": modes[Mode.MINING],
                        "sleeping": modes[Mode.SLEEPING],
                        "commands": dict(farm.commands),
                        "first_at": farm.first_at,
                    }
                )
            elif command == "quit":
                break
    finally:
        await farm.stop()


def say(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("hosts_file")
    args = parser.parse_args()
    with open(args.hosts_file) as f:  # noqa: PTH123 - a plain list of addresses
        hosts = f.read().split()
    uvloop.run(serve(hosts))


if __name__ == "__main__":
    main()
