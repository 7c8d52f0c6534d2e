"""The HTTP transport reads whole replies and maps failures into the error tree."""

from __future__ import annotations

import asyncio
import json

import pytest

from drivers.errors import DeviceTimeoutError, ProtocolError, UnreachableError
from drivers.transport import admission, http
from tests.conftest import free_port

BODY = json.dumps({"watts": 3250, "pad": "x" * 3000}).encode()


async def serve(reply: list[bytes], pause_s: float = 0.05) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for part in reply:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(pause_s)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


def head(length: int) -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


async def get(port: int, timeout_s: float = 2.0) -> http.Response:
    return await http.request(
        "GET", f"http://127.0.0.1:{port}/", device="m1", op="read", timeout_s=timeout_s
    )


async def test_http_reply_in_pieces_is_read_whole() -> None:
    half = len(BODY) // 2
    server, port = await serve([head(len(BODY)) + BODY[:half], BODY[half:]])
    try:
        reply = await get(port)
        assert reply.json(device="m1", op="read")["watts"] == 3250
    finally:
        server.close()
        await http.close_sessions()


async def test_http_body_cut_short_is_a_protocol_error() -> None:
    server, port = await serve([head(len(BODY)) + BODY[:100]])
    try:
        with pytest.raises(ProtocolError, match="m1: read: connection broke mid-reply"):
            await get(port)
    finally:
        server.close()
        await http.close_sessions()


async def test_http_refused_and_silent_servers() -> None:
    with pytest.raises(UnreachableError, match=r"m1: read: 127\.0\.0\.1"):
        await get(free_port())
    server, port = await serve([b""], pause_s=5)  # reads the request, never answers
    try:
        with pytest.raises(DeviceTimeoutError, match=r"no complete reply within 0\.3 s"):
            await get(port, timeout_s=0.3)
    finally:
        server.close()
        await http.close_sessions()


def test_http_origin_brackets_ipv6_literals() -> None:
    assert http.origin("10.0.3.7", 80) == "http://10.0.3.7:80"
    assert http.origin("fd00::3:7", 8080) == "http://[fd00::3:7]:8080"


async def test_http_request_that_skips_admission_is_not_held_behind_a_full_gate() -> None:
    # A stock Antminer's config save waits out a restart: it must neither wait for a place
    # nor hold one. An ordinary request still waits its turn.
    server, port = await serve([head(len(BODY)) + BODY])
    gate = admission.gate()
    held = 0
    try:
        while gate.free:  # take every place
            await gate.__aenter__()
            held += 1
        url = f"http://127.0.0.1:{port}/"
        reply = await http.request("POST", url, device="m1", op="save", timeout_s=2.0, admit=False)
        assert reply.status == 200
        queued = asyncio.create_task(get(port))
        await asyncio.sleep(0.2)
        assert not queued.done()
        await gate.__aexit__(None, None, None)
        held -= 1
        assert (await queued).status == 200
    finally:
        for _ in range(held):
            await gate.__aexit__(None, None, None)
        server.close()
        await http.close_sessions()
