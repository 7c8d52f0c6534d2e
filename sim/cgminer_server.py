"""A CGMiner-style API server for one simulated device on its own loopback address.

Framing as bitmaintech/cgminer `api.c` does it: one request per connection, the request in
JSON (any whitespace, parsed incrementally) or the plain `command|parameter` form, a reply
of JSON plus a trailing NUL, then the server closes. Wire faults are applied here.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Callable
from typing import Any, Protocol, cast

from sim.faults import Fault, FaultState
from sim.missing import Missing

MAX_REQUEST_BYTES = 64 * 1024
STALL_HOLD_S = 60.0  # a stalled device releases the socket eventually, like a kernel would

Reply = dict[str, Any]


class CgminerDevice(Protocol):
    """What a simulated firmware implements behind the server."""

    joinable: frozenset[str]

    def handle(self, command: str, parameter: str | None) -> Reply: ...

    def error(self, code: int, msg: str) -> Reply: ...


# cgminer api.c message codes shared by every cgminer-family firmware.
CODE_INVALID_COMMAND = 14
CODE_INVALID_JSON = 23
CODE_ACCESS_DENIED = 45


class TcpListener:
    """Listening, live fault changes and connection bookkeeping for one loopback
    endpoint; a subclass gives the protocol each connection speaks."""

    def __init__(
        self,
        host: str,
        port: int,
        fault: FaultState,
        *,
        rng: random.Random | None = None,
        observer: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.fault = fault
        self.rng = rng or random.Random(f"{host}:{port}")  # noqa: S311 - not crypto
        self.observer = observer  # told every command name (benchmarks count and time them)
        self.requests = 0
        self.connections = 0  # open right now
        self.peak_connections = 0  # most ever open at once (one-in-flight checks)
        self.held: set[asyncio.Transport] = set()  # connections kept open; aborted on stop
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        if self._server is None and self.fault.mode is not Fault.REFUSE:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                self._accept, self.host, self.port, reuse_address=True, backlog=256
            )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self.held):
            transport.abort()
        self.held.clear()

    async def set_fault(self, mode: Fault, *, slow_s: float | None = None) -> None:
        """Change the fault live; `refuse` stops listening, anything else listens again."""
        self.fault.mode = mode
        if slow_s is not None:
            self.fault.slow_s = slow_s
        if mode is Fault.REFUSE:
            await self.stop()
        else:
            await self.start()

    def counted(self, name: str) -> None:
        self.requests += 1
        if self.observer is not None:
            self.observer(name)

    def garbage(self) -> bytes:
        return bytes(self.rng.randrange(1, 256) for _ in range(self.rng.randrange(8, 64)))

    def _protocol(self) -> asyncio.Protocol:
        raise NotImplementedError

    def _accept(self) -> asyncio.Protocol:
        # A unit without power (outlet cut) or still booting has no API: reset at once.
        return _Dark() if self.fault.dark() else self._protocol()


class _Dark(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast("asyncio.Transport", transport).abort()


class CgminerServer(TcpListener):
    """Listens on host:port and answers like the device would, faults included."""

    def __init__(
        self,
        host: str,
        port: int,
        device: CgminerDevice,
        fault: FaultState,
        *,
        rng: random.Random | None = None,
        observer: Callable[[str], None] | None = None,
        missing: Missing | None = None,
    ) -> None:
        super().__init__(host, port, fault, rng=rng, observer=observer)
        self.device = device
        self.missing = missing or Missing()

    def _protocol(self) -> asyncio.Protocol:
        return _Connection(self)

    def respond(self, command: str, parameter: str | None) -> Reply:
        """The device's reply, with cgminer's `a+b` joins expanded."""
        self.counted(command)
        if "+" not in command:
            return self._one(command, parameter, lacking=self.missing.lacks(command))
        parts = list(dict.fromkeys(command.split("+")))  # duplicates skipped, as api.c does
        known = [p for p in parts if p not in self.missing.names]
        if any(p not in self.device.joinable for p in known):
            return self.device.error(CODE_ACCESS_DENIED, f"Access denied to '{command}' command")
        lacking = {p for p in parts if self.missing.lacks(p)}
        # A build without one of the commands answers that part alone (api.c MSG_INVCMD).
        joined: Reply = {p: [self._one(p, parameter, lacking=p in lacking)] for p in parts}
        joined["id"] = 1
        return joined

    def _one(self, command: str, parameter: str | None, *, lacking: bool) -> Reply:
        if lacking:
            return self.device.error(CODE_INVALID_COMMAND, "Invalid command")
        return cast("Reply", self.missing.strip(command, self.device.handle(command, parameter)))

    def render(self, reply: Reply) -> list[tuple[float, bytes, bool]]:
        """What goes on the wire: (delay, bytes, close after) steps, per the fault."""
        body = json.dumps(reply, separators=(",", ":")).encode()
        mode = self.fault.mode
        if mode is Fault.GARBAGE:
            return [(0.0, self.garbage() + b"\x00", True)]
        if mode is Fault.QUIRKS:
            return [(0.0, quirk(body) + b"\x00", True)]
        if mode is Fault.TRUNCATE:
            return [(0.0, body[: max(1, len(body) // 2)], True)]
        if mode is Fault.NO_CLOSE:
            return [(0.0, body + b"\x00", False)]
        if mode is Fault.SLOW:
            return [(self.fault.slow_s, body + b"\x00", True)]
        return [(0.0, body + b"\x00", True)]


def quirk(body: bytes) -> bytes:
    """Every malformation the reference lists from real firmware (§1.1), at once where the
    reply has a place for it: a leading comma, `[,{`, `}{` between objects, `,}`, embedded
    newlines, `""key` with no comma between a string and the next key, a bare `nan`."""
    text = body.decode()
    text = text.replace("},{", "}{", 1)  # bmminer stats
    text = text.replace("}]", ",}]", 1)  # trailing comma
    text = text.replace("[{", "[,{", 1)  # leading comma in a list
    text = re.sub(r'",(?="[A-Za-z_])', '"', text, count=1)  # btminer 2023-01-06
    text = text.replace(',"', ',\n"', 2)  # embedded newlines
    if text.startswith("{"):  # Avalon's bare non-finite numbers, in a field nobody reads
        text = '{"Temperature Probe":nan,' + text[1:] if text[1:2] == '"' else text
    return ("," + text).encode()  # a reply that starts with a comma


class _Connection(asyncio.Protocol):
    __slots__ = ("_buf", "_server", "_transport")

    def __init__(self, server: CgminerServer) -> None:
        self._server = server
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)
        server = self._server
        server.connections += 1
        server.peak_connections = max(server.peak_connections, server.connections)

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._buf += data
        if len(self._buf) > MAX_REQUEST_BYTES:
            self._answer(self._server.device.error(CODE_INVALID_JSON, "Request too large"))
            return
        try:
            request = parse_request(self._buf, eof=False)
        except ValueError:
            self._answer(self._server.device.error(CODE_INVALID_JSON, "Invalid JSON"))
            return
        if request is not None:
            self._dispatch(*request)

    def eof_received(self) -> bool:
        if self._transport is not None and not self._transport.is_closing() and self._buf:
            try:
                request = parse_request(self._buf, eof=True)
            except ValueError:
                self._answer(self._server.device.error(CODE_INVALID_JSON, "Invalid JSON"))
                return True
            if request is not None:
                self._dispatch(*request)
        return True  # keep the write side open for the reply

    def connection_lost(self, exc: Exception | None) -> None:
        del exc  # a client that vanishes mid-request is normal here
        self._server.connections -= 1
        if self._transport is not None:
            self._server.held.discard(self._transport)

    def _dispatch(self, command: str, parameter: str | None) -> None:
        self._buf = b""
        if self._server.fault.mode is Fault.STALL:
            self._hold(STALL_HOLD_S)
            return
        self._answer(self._server.respond(command, parameter))

    def _answer(self, reply: Reply) -> None:
        transport = self._transport
        if transport is None:
            return
        for delay, chunk, close in self._server.render(reply):
            if delay > 0:
                self._server.held.add(transport)
                asyncio.get_running_loop().call_later(delay, _send_late, transport, chunk, close)
                return
            transport.write(chunk)
            if close:
                transport.close()
            else:
                self._hold(STALL_HOLD_S)

    def _hold(self, seconds: float) -> None:
        transport = self._transport
        if transport is None:
            return
        self._server.held.add(transport)
        asyncio.get_running_loop().call_later(seconds, transport.close)


def _send_late(transport: asyncio.Transport, chunk: bytes, close: bool) -> None:
    if transport.is_closing():
        return
    transport.write(chunk)
    if close:
        transport.close()


def parse_request(buf: bytes, *, eof: bool) -> tuple[str, str | None] | None:
    """A complete request from `buf`, None if more bytes are needed, ValueError if invalid."""
    text = buf.decode("utf-8", errors="replace").lstrip()
    if not text:
        return None
    if not text.startswith("{"):
        line, newline, _ = text.partition("\n")
        if not newline and not eof:
            return None
        plain, bar, argument = line.strip().rstrip("\x00").partition("|")
        return plain, argument if bar else None
    end = _object_end(text)
    if end is None:
        if eof:
            raise ValueError("incomplete JSON")
        return None
    obj = json.loads(text[:end])
    command = obj.get("command") if isinstance(obj, dict) else None
    if not isinstance(command, str):
        raise ValueError("no command")  # noqa: TRY004 - the caller maps ValueError to code 23
    raw = obj.get("parameter")
    if raw is None or isinstance(raw, str):
        return command, raw
    return command, json.dumps(raw) if isinstance(raw, (list, dict)) else str(raw)


def _object_end(text: str) -> int | None:
    """Index just past the first complete top-level JSON object, or None if incomplete."""
    depth = 0
    in_string = False
    escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None
