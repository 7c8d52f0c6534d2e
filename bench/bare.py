"""The floor: a bare uvloop loop sending each miner exactly the requests curtaild sends to
sleep a LuxOS miner (logon, curtail sleep, logoff, an events+power read-back) and nothing else:
no timeouts, no error handling, no journal, no planning."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import uvloop

LOGON = b'{"command":"logon"}'
READ = b'{"command":"events+power"}'


class _Exchange(asyncio.Protocol):
    def __init__(self, payload: bytes, done: asyncio.Future[bytes]) -> None:
        self.payload = payload
        self.done = done
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.payload)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\x00" in data and not self.done.done():
            self.done.set_result(self.buf.split(b"\x00", 1)[0])
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        del exc
        if not self.done.done():
            self.done.set_result(self.buf)


async def request(host: str, payload: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    await loop.create_connection(lambda: _Exchange(payload, done), host, 4028)
    return await done


async def sleep_one(host: str) -> None:
    sid = json.loads(await request(host, LOGON))["SESSION"][0]["SessionID"]
    await request(host, json.dumps({"command": "curtail", "parameter": f"{sid},sleep"}).encode())
    await request(host, json.dumps({"command": "logoff", "parameter": sid}).encode())
    json.loads(await request(host, READ))


async def run(hosts: list[str]) -> dict[str, object]:
    t0, m0, c0 = time.time(), time.monotonic(), time.process_time()
    results = await asyncio.gather(*(sleep_one(h) for h in hosts), return_exceptions=True)
    end, cpu = time.time(), time.process_time() - c0
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {
        "method": "bare",
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
