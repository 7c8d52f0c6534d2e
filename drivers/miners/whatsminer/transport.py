"""API v3's framed transport: a 4-byte little-endian length and JSON each way, several
frames on one connection, its failures turned into DriverErrors."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from drivers.deadline import within
from drivers.errors import DeviceTimeoutError, ProtocolError, UnreachableError
from drivers.transport import admission, cgminer_tcp
from drivers.transport.cgminer_tcp import Reply

V3_MAX_FRAME_BYTES = 1 << 20  # btminer's largest replies (error lists) stay far below this

_T = TypeVar("_T")


class _FrameTooLargeError(Exception):
    pass


class Link:
    """One connection to API v3: a frame out, a frame back, as often as needed. Each
    exchange has the endpoint's deadline, as a request of any other family has: a read
    is three or four frames on one connection."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout_s = timeout_s

    async def call(self, request: dict[str, Any], *, device: str, op: str) -> Reply:
        body = json.dumps(request, separators=(",", ":")).encode()
        with within(self._timeout_s):
            self._writer.write(struct.pack("<I", len(body)) + body)
            (size,) = struct.unpack("<I", await self._reader.readexactly(4))
            if size > V3_MAX_FRAME_BYTES:
                raise _FrameTooLargeError(size)
            raw = await self._reader.readexactly(size)
        reply = cgminer_tcp.decode(raw, device=device, op=op)
        if not isinstance(reply.get("code"), int):
            raise ProtocolError(device, op, "reply has no code")
        return reply


async def session(
    host: str,
    port: int,
    timeout_s: float,
    steps: Callable[[Link], Awaitable[_T]],
    *,
    device: str,
    op: str,
) -> _T:
    """One connection under one deadline, its failures turned into DriverErrors."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with admission.gate():
            with within(timeout_s):
                reader, writer = await asyncio.open_connection(host, port)
            return await steps(Link(reader, writer, timeout_s))
    except TimeoutError:
        stage = "no connection" if writer is None else "no complete reply"
        raise DeviceTimeoutError(device, op, f"{stage} within {timeout_s:g} s") from None
    except ConnectionRefusedError:
        raise UnreachableError(device, op, f"connection refused by {host}:{port}") from None
    except asyncio.IncompleteReadError as err:
        raise ProtocolError(
            device, op, f"connection closed {len(err.partial)} bytes into a frame"
        ) from None
    except _FrameTooLargeError as err:
        raise ProtocolError(device, op, f"frame of {err} bytes announced") from None
    except OSError as err:
        raise UnreachableError(device, op, f"{host}:{port}: {err.strerror or err}") from None
    finally:
        if writer is not None:
            writer.close()
