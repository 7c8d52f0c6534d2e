"""CGMiner-style API over TCP: one JSON request per connection, a reply plus NUL, then close.

Real firmware bends the framing (no NUL, no close) and the JSON (trailing commas, `}{`,
bare `nan`); this module absorbs the quirks pyasic documents and turns everything else
into typed DriverErrors.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, cast

from drivers.deadline import within
from drivers.errors import (
    DeviceTimeoutError,
    ProtocolError,
    RejectedError,
    UnreachableError,
)
from drivers.transport import admission

# A reply larger than this is garbage or an attack; btminer error lists stay far below it.
MAX_REPLY_BYTES = 1 << 20

Reply = dict[str, Any]


_PLAIN = re.compile(r"[A-Za-z0-9 _.,:;=+@/-]*")


def encode(command: str, parameter: str | None = None) -> bytes:
    """The request bytes for one command (compact JSON)."""
    # Fast path for the common case, with nothing to escape; json.dumps costs several
    # times more and this runs four times per miner in a fleet-wide curtailment.
    if _PLAIN.fullmatch(command) and (parameter is None or _PLAIN.fullmatch(parameter)):
        if parameter is None:
            return f'{{"command":"{command}"}}'.encode()
        return f'{{"command":"{command}","parameter":"{parameter}"}}'.encode()
    body: dict[str, str] = {"command": command}
    if parameter is not None:
        body["parameter"] = parameter
    return json.dumps(body, separators=(",", ":")).encode()


async def request(
    host: str,
    port: int,
    command: str,
    parameter: str | None = None,
    *,
    timeout_s: float,
    device: str,
) -> Reply:
    """Send one command and return the parsed reply; raise DriverError on any failure."""
    raw = await exchange(
        host, port, encode(command, parameter), timeout_s=timeout_s, device=device, op=command
    )
    reply = decode(raw, device=device, op=command)
    check_status(reply, device=device, op=command)
    return reply


async def exchange(
    host: str, port: int, payload: bytes, *, timeout_s: float, device: str, op: str
) -> bytes:
    """One connection: send `payload`, return the reply bytes up to the NUL or close."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    proto = _Exchange(payload, done)
    transport: asyncio.BaseTransport | None = None
    try:
        async with admission.gate():
            with within(timeout_s):
                transport, _ = await loop.create_connection(lambda: proto, host, port)
                return await done
    except TimeoutError:
        stage = "no connection" if transport is None else "no complete reply"
        raise DeviceTimeoutError(device, op, f"{stage} within {timeout_s:g} s") from None
    except ConnectionRefusedError:
        raise UnreachableError(device, op, f"connection refused by {host}:{port}") from None
    except _ReplyTooLargeError:
        raise ProtocolError(device, op, f"reply larger than {MAX_REPLY_BYTES} bytes") from None
    except OSError as err:
        raise UnreachableError(device, op, f"{host}:{port}: {err.strerror or err}") from None
    finally:
        if transport is not None:
            transport.close()


async def request_parts(
    host: str,
    port: int,
    parts: tuple[str, ...],
    *,
    timeout_s: float,
    device: str,
) -> dict[str, Reply | RejectedError]:
    """The commands `parts` joined ("a+b") in one request: each one's reply, or the error
    the firmware answered for that part alone (a build without one of the commands says
    "Invalid command" in its part, as cgminer's api.c does). RejectedError if the firmware
    refuses the join as a whole (older builds do not join)."""
    command = "+".join(parts)
    raw = await exchange(
        host, port, encode(command), timeout_s=timeout_s, device=device, op=command
    )
    reply = decode(raw, device=device, op=command)
    if "STATUS" in reply:
        check_status(reply, device=device, op=command)
        raise ProtocolError(device, command, "a joined request answered as a single one")
    answers: dict[str, Reply | RejectedError] = {}
    for part in parts:
        value = reply.get(part)
        if not isinstance(value, list) or not value or not isinstance(value[0], dict):
            raise ProtocolError(device, command, f"joined reply has no {part!r} part")
        try:
            check_status(value[0], device=device, op=part)
        except RejectedError as err:
            answers[part] = err
        else:
            answers[part] = value[0]
    return answers


def decode(raw: bytes, *, device: str, op: str) -> Reply:
    """Parse a reply, repairing the JSON quirks real firmware is known to send."""
    text = raw.rstrip(b"\x00 \r\n\t").decode("utf-8", errors="replace")
    if not text:
        raise ProtocolError(device, op, "empty reply")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        try:
            parsed = json.loads(repair(text))
        except (ValueError, RecursionError):
            raise ProtocolError(
                device, op, f"unparseable reply ({len(raw)} bytes): {text[:60]!r}"
            ) from None
    if not isinstance(parsed, dict):
        raise ProtocolError(device, op, f"reply is a {type(parsed).__name__}, not an object")
    return parsed


_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_MISSING_COMMA_OBJECTS = re.compile(r"}\s*{")
_LEADING_COMMA_IN_LIST = re.compile(r"\[\s*,")
_MISSING_COMMA_KEYS = re.compile(r'""(?=[A-Za-z_])')
_BARE_NON_FINITE = re.compile(r"(:\s*)-?(?:inf|nan)\b", re.IGNORECASE)


def repair(text: str) -> str:
    """Undo the malformations pyasic's parser documents for cgminer-family firmware."""
    text = text.lstrip(", \r\n\t")
    text = text.replace("\n", " ").replace("\r", " ")
    text = _TRAILING_COMMA.sub(r"\1", text)
    text = _MISSING_COMMA_OBJECTS.sub("},{", text)
    text = _LEADING_COMMA_IN_LIST.sub("[", text)
    text = _MISSING_COMMA_KEYS.sub('","', text)
    return _BARE_NON_FINITE.sub(r"\1null", text)


def check_status(reply: Reply, *, device: str, op: str) -> None:
    """Raise RejectedError if the reply (or any part of a joined reply) reports an error."""
    status = reply.get("STATUS")
    if status is None:
        # A joined command ("a+b") nests one full reply per command.
        for part in reply.values():
            if isinstance(part, list) and part and isinstance(part[0], dict):
                check_status(part[0], device=device, op=op)
        return
    entry = status[0] if isinstance(status, list) and status else status
    if not isinstance(entry, dict):
        return
    if entry.get("STATUS") in ("E", "F"):
        code = entry.get("Code")
        raise RejectedError(
            device,
            op,
            f"code {code}: {entry.get('Msg', '')}",
            code=code if isinstance(code, int) else None,
        )


def section(reply: Reply, name: str, *, device: str, op: str) -> list[dict[str, Any]]:
    """The list under `name` (e.g. "POWER"), or a ProtocolError naming what is missing."""
    value = reply.get(name)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ProtocolError(device, op, f"reply has no {name} list")
    return value


class _ReplyTooLargeError(Exception):
    pass


class _Exchange(asyncio.Protocol):
    """Writes one request, collects the reply until NUL, a complete object, or EOF."""

    __slots__ = ("_chunks", "_done", "_payload", "_size", "_transport")

    def __init__(self, payload: bytes, done: asyncio.Future[bytes]) -> None:
        self._payload = payload
        self._done = done
        self._chunks: list[bytes] = []
        self._size = 0
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        cast("asyncio.WriteTransport", transport).write(self._payload)

    def data_received(self, data: bytes) -> None:
        if self._done.done():
            return
        nul = data.find(b"\x00")
        if nul >= 0:
            self._chunks.append(data[:nul])
            self._finish()
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > MAX_REPLY_BYTES:
            self._done.set_exception(_ReplyTooLargeError())
            return
        # Some firmware replies without the NUL and keeps the socket open: accept a reply
        # as soon as it is a complete JSON object rather than waiting for the deadline.
        if data.rstrip().endswith(b"}") and _complete_json(b"".join(self._chunks)):
            self._finish()

    def eof_received(self) -> bool:
        self._finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done.done():
            return
        if exc is not None and not self._chunks:
            self._done.set_exception(exc)
        else:
            self._finish()

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(b"".join(self._chunks))
        if self._transport is not None:
            self._transport.close()


def _complete_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


__all__ = [
    "MAX_REPLY_BYTES",
    "Reply",
    "check_status",
    "decode",
    "encode",
    "exchange",
    "repair",
    "request",
    "request_parts",
    "section",
]
