"""pyasic 0.79.0 doing the same job, run by the throwaway venv's python (never ours).

pyasic's LuxOS stop_mining sends session, logon and curtail sleep: no logoff and no
read-back, one request fewer per miner than curtaild and the bare loop. It reports True
even when a miner failed, so the benchmark counts sleeping miners on the simulator side.
"""

import asyncio
import json
import sys
import time
from pathlib import Path

import uvloop
from pyasic.miners.antminer import LUXMinerS19


async def run(hosts: list[str]) -> dict[str, object]:
    miners = [LUXMinerS19(h) for h in hosts]  # the RPC port is 4028 already
    t0, m0, c0 = time.time(), time.monotonic(), time.process_time()
    results = await asyncio.gather(*(m.stop_mining() for m in miners), return_exceptions=True)
    end, cpu = time.time(), time.process_time() - c0
    errors = [repr(r) for r in results if isinstance(r, BaseException) or r is False]
    return {
        "method": "pyasic",
        "start": t0,
        "start_monotonic": m0,
        "end": end,
        "cpu_s": cpu,
        "acked": len(hosts) - len(errors),
        "errors": errors[:5],
    }


if __name__ == "__main__":
    addresses = Path(sys.argv[1]).read_text().split()
    print(json.dumps(uvloop.run(run(addresses))))
