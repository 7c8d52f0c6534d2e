"""Whatsminer's two TCP endpoints and their wire faults. API v2 (4028): one JSON request per
connection ({"cmd": ...} or {"command": ...}, parsed incrementally), the reply, then close,
with no NUL (pyasic strips one if present; MicroBT's own sample client does not). API v3
(4433): 4-byte little-endian length + JSON both ways, several frames per connection.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
from collections.abc import Callable
from typing import cast

from sim.cgminer_server import TcpListener, quirk
from sim.cgminer_server import _object_end as object_end  # v2 frames a request as cgminer does
from sim.faults import Fault, FaultState
from sim.whatsminer.device import WhatsminerDevice
from sim.whatsminer.machine import dump
from sim.whatsminer.v2 import CODE_INVALID_JSON, V2Answer

IDLE_CLOSE_S = 10.0  # "no data within 10 seconds after the port is connected": closed
STALL_HOLD_S = 60.0
MAX_REQUEST_BYTES = 64 * 1024
MAX_FRAME_BYTES = 1 << 20


class _TcpServer(TcpListener):
    """An API endpoint of one Whatsminer."""

    def __init__(
        self,
        host: str,
        port: int,
        device: WhatsminerDevice,
        fault: FaultState,
        *,
        rng: random.Random | None = None,
        observer: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(host, port, fault, rng=rng, observer=observer)
        self.device = device


class _Connection(asyncio.Protocol):
    """A connection's bookkeeping: counted while open, aborted when the server stops."""

    def __init__(self, server: _TcpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self._pending = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        server = self.server
        server.held.add(self.transport)
        server.connections += 1
        server.peak_connections = max(server.peak_connections, server.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        del exc  # a client that vanishes mid-request is normal here
        self.answered()
        self.server.connections -= 1
        if self.transport is not None:
            self.server.held.discard(self.transport)

    def received(self) -> None:
        """A request arrived: in flight until its answer goes out or the client leaves."""
        if not self._pending:
            self._pending = True
            device = self.server.device
            device.in_flight += 1
            device.peak_in_flight = max(device.peak_in_flight, device.in_flight)

    def answered(self) -> None:
        if self._pending:
            self._pending = False
            self.server.device.in_flight -= 1

    def hold(self, seconds: float) -> None:
        """Keep the socket open without answering, then let it go like a kernel would."""
        if self.transport is not None:
            asyncio.get_running_loop().call_later(seconds, self.transport.close)

    def send(self, chunk: bytes, *, close: bool, delay: float = 0.0) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._late, chunk, close)
            return
        self.answered()
        transport.write(chunk)
        if close:
            transport.close()

    def _late(self, chunk: bytes, close: bool) -> None:
        self.send(chunk, close=close)
        self.sent_late()

    def sent_late(self) -> None:
        """A delayed reply went out."""


class WhatsminerV2Server(_TcpServer):
    """API v2: one request per connection, the reply, then close (no NUL)."""

    def _protocol(self) -> asyncio.Protocol:
        return _V2Connection(self)


class _V2Connection(_Connection):
    _idle: asyncio.TimerHandle | None = None
    _answered = False  # one request per connection: anything after it is ignored

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._idle = asyncio.get_running_loop().call_later(IDLE_CLOSE_S, self._idle_close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing() or self._answered:
            return
        self.buf += data
        text = self.buf.decode("utf-8", errors="replace").lstrip()
        if not text:
            return
        if not text.startswith("{") or len(self.buf) > MAX_REQUEST_BYTES:
            self._reply(
                V2Answer("", self.server.device.v2_error(CODE_INVALID_JSON, "json cmd err"))
            )
            return
        end = object_end(text)
        if end is None:
            return  # more to come
        try:
            request = json.loads(text[:end])
        except ValueError:
            request = None
        self._reply(self.server.device.handle_v2(request))

    def eof_received(self) -> bool:
        if self.buf and not self._answered:
            device = self.server.device
            self._reply(V2Answer("", device.v2_error(CODE_INVALID_JSON, "json cmd err")))
        return True  # keep the write side open for the reply

    def _reply(self, answer: V2Answer) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._answered = True
        self.buf = b""
        self.received()
        server = self.server
        server.counted(answer.name)
        mode = server.fault.mode
        if mode is Fault.STALL or answer.body is None:
            self.hold(STALL_HOLD_S)
            return
        body = answer.body
        if mode is Fault.GARBAGE:
            self.send(server.garbage(), close=True)
        elif mode is Fault.QUIRKS:
            self.send(quirk(body), close=True)
        elif mode is Fault.TRUNCATE:
            self.send(body[: max(1, len(body) // 2)], close=True)
        elif mode is Fault.NO_CLOSE:
            self.send(body, close=False)
            self.hold(STALL_HOLD_S)
        elif mode is Fault.SLOW:
            self.send(body, close=True, delay=server.fault.slow_s)
        else:
            self.send(body, close=True)

    def _idle_close(self) -> None:
        if self.transport is not None and not self._answered:
            self.transport.close()


class WhatsminerV3Server(_TcpServer):
    """API v3: length-prefixed JSON frames, several per connection, until the client goes."""

    def _protocol(self) -> asyncio.Protocol:
        return _V3Connection(self)


class _V3Connection(_Connection):
    _busy = False  # a reply is still pending: later frames wait their turn

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._drain()

    def eof_received(self) -> bool:
        return self._busy  # answer what is pending, then close

    def sent_late(self) -> None:
        self._busy = False
        self._drain()

    def _drain(self) -> None:
        while not self._busy and len(self.buf) >= 4:  # noqa: PLR2004 - the length prefix
            (size,) = struct.unpack("<I", self.buf[:4])
            if size > MAX_FRAME_BYTES:
                if self.transport is not None:
                    self.transport.close()  # not a frame we can ever read
                return
            if len(self.buf) < 4 + size:
                return
            body, self.buf = self.buf[4 : 4 + size], self.buf[4 + size :]
            self._answer(body)

    def _answer(self, body: bytes) -> None:
        self.received()
        server = self.server
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        reply = server.device.handle_v3(request)
        server.counted(str(reply.get("desc") or "?"))
        frame = dump(reply)
        mode = server.fault.mode
        if mode is Fault.STALL:
            self._busy = True
            self.hold(STALL_HOLD_S)
        elif mode is Fault.GARBAGE:
            self.send(server.garbage(), close=True)
        elif mode is Fault.QUIRKS:
            frame = quirk(frame)
            self.send(struct.pack("<I", len(frame)) + frame, close=False)
        elif mode is Fault.TRUNCATE:
            self.send(struct.pack("<I", len(frame)) + frame[: len(frame) // 2], close=True)
        elif mode is Fault.SLOW:
            self._busy = True
            self.send(struct.pack("<I", len(frame)) + frame, close=False, delay=server.fault.slow_s)
        else:
            # no-close changes nothing here: frames carry their length and the connection
            # stays open for the next one anyway, until the client closes it.
            self.send(struct.pack("<I", len(frame)) + frame, close=False)
