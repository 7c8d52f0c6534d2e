"""The CGMiner TCP transport against raw loopback servers that bend the framing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from drivers.errors import DeviceTimeoutError, ProtocolError, RejectedError, UnreachableError
from drivers.transport import cgminer_tcp
from sim.cgminer_server import quirk
from tests.conftest import free_port

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
REPLY = b'{"STATUS":[{"STATUS":"S","Code":11,"Msg":"Summary"}],"SUMMARY":[{"GHS 5s":1.5}],"id":1}'


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Behaviour], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(behaviour: Behaviour) -> int:
        server = await asyncio.start_server(behaviour, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()


async def call(port: int, timeout_s: float = 1.0) -> cgminer_tcp.Reply:
    return await cgminer_tcp.request("127.0.0.1", port, "summary", timeout_s=timeout_s, device="m1")


def reply_with(data: bytes, *, close: bool = True, read: bool = True) -> Behaviour:
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if read:
            await reader.read(1024)
        writer.write(data)
        await writer.drain()
        if close:
            writer.close()
        else:
            await asyncio.sleep(5)

    return behaviour


async def test_transport_reply_with_nul_then_close(
    serve: Callable[[Behaviour], Awaitable[int]],
) -> None:
    reply = await call(await serve(reply_with(REPLY + b"\x00")))
    assert reply["SUMMARY"][0]["GHS 5s"] == 1.5


async def test_transport_reply_without_nul_then_close(
    serve: Callable[[Behaviour], Awaitable[int]],
) -> None:
    assert "SUMMARY" in await call(await serve(reply_with(REPLY)))


async def test_transport_reply_then_socket_left_open(
    serve: Callable[[Behaviour], Awaitable[int]],
) -> None:
    # With the NUL or without: a complete reply is accepted without waiting for close.
    for data in (REPLY + b"\x00", REPLY):
        started = asyncio.get_running_loop().time()
        assert "SUMMARY" in await call(await serve(reply_with(data, close=False)), 3.0)
        assert asyncio.get_running_loop().time() - started < 2.5


async def test_transport_sends_compact_json(serve: Callable[[Behaviour], Awaitable[int]]) -> None:
    seen: list[bytes] = []

    async def capture(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(1024))
        writer.write(REPLY + b"\x00")
        writer.close()

    port = await serve(capture)
    await cgminer_tcp.request("127.0.0.1", port, "curtail", "sid1,sleep", timeout_s=1, device="m1")
    assert seen == [b'{"command":"curtail","parameter":"sid1,sleep"}']


@pytest.mark.parametrize(
    "quirky",
    [
        b'{"STATUS":[{"STATUS":"S","Code":70,},],"STATS":[{"a":1}{"b":2}],"id":1}',
        b'{"STATUS":[{"STATUS":"S"}],\n"SUMMARY":[{"x":1,\n"y":2}],"id":1}',
        b'{"STATUS":[{"STATUS":"S"}],"LIST":[,{"a":1}],"id":1}',
        b'{"STATUS":[{"STATUS":"S"}],"TEMP":[{"temp0":"23""temp1":"24"}],"id":1}',
        b'{"STATUS":[{"STATUS":"S"}],"AVALON":[{"t":nan,"u":-inf}],"id":1}',
        b',{"STATUS":[{"STATUS":"S"}],"id":1}',
    ],
)
async def test_transport_repairs_known_json_quirks(
    serve: Callable[[Behaviour], Awaitable[int]], quirky: bytes
) -> None:
    reply = await call(await serve(reply_with(quirky + b"\x00")))
    assert reply["STATUS"][0]["STATUS"] == "S"


async def test_transport_refused_is_unreachable() -> None:
    with pytest.raises(UnreachableError, match="connection refused") as err:
        await call(free_port())
    assert err.value.device == "m1"
    assert err.value.kind == "unreachable"


async def test_transport_stall_is_a_timeout(serve: Callable[[Behaviour], Awaitable[int]]) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    with pytest.raises(DeviceTimeoutError, match=r"no complete reply within 0\.3 s"):
        await call(await serve(stall), 0.3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x93\xff\x00garbage\x01\x02\x00", "unparseable reply"),
        (REPLY[: len(REPLY) // 2], "unparseable reply"),
        (b"", "empty reply"),
        (b"[1,2,3]\x00", "not an object"),
    ],
)
async def test_transport_garbage_is_a_protocol_error(
    serve: Callable[[Behaviour], Awaitable[int]], data: bytes, message: str
) -> None:
    with pytest.raises(ProtocolError, match=message):
        await call(await serve(reply_with(data)))


async def test_transport_oversized_reply_is_a_protocol_error(
    serve: Callable[[Behaviour], Awaitable[int]],
) -> None:
    junk = b"[" + b"1," * cgminer_tcp.MAX_REPLY_BYTES
    with pytest.raises(ProtocolError, match="larger than"):
        await call(await serve(reply_with(junk, close=False)), 5.0)


async def test_transport_error_status_is_rejected(
    serve: Callable[[Behaviour], Awaitable[int]],
) -> None:
    error = b'{"STATUS":[{"STATUS":"E","Code":45,"Msg":"Access denied"}],"id":1}\x00'
    with pytest.raises(RejectedError, match="code 45: Access denied") as err:
        await call(await serve(reply_with(error)))
    assert err.value.code == 45


async def test_transport_joined_reply_error_part_is_rejected(
    serve: Callable[[Behaviour], Awaitable[int]],
) -> None:
    joined = (
        b'{"power":[{"STATUS":[{"STATUS":"S"}],"POWER":[{"Watts":1}]}],'
        b'"summary":[{"STATUS":[{"STATUS":"E","Code":14,"Msg":"Invalid command"}]}],'
        b'"id":1}\x00'
    )
    with pytest.raises(RejectedError) as err:
        await call(await serve(reply_with(joined)))
    assert err.value.code == 14


def test_transport_absurd_nesting_is_a_protocol_error() -> None:
    raw = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(ProtocolError, match="unparseable reply"):
        cgminer_tcp.decode(raw, device="m1", op="read")


def test_simulator_quirks_are_every_listed_malformation_and_all_repairable() -> None:
    # The simulators' `quirks` fault must send what real firmware sends (reference §1.1),
    # or the drivers' repair is tested against nothing.
    body = (
        b'{"STATUS":[{"STATUS":"S","Msg":"Summary"},{"Code":11}],'
        b'"SUMMARY":[{"MHS 5s":1.5,"Power":3000}],"id":1}'
    )
    bent = quirk(body).decode()
    for malformation in (",{", "[,{", "}{", ",}", "\n", '""Msg', ":nan"):
        assert malformation in bent, malformation
    assert bent.startswith(",")
    repaired = json.loads(cgminer_tcp.repair(bent))
    assert repaired.pop("Temperature Probe") is None
    assert repaired == json.loads(body)
