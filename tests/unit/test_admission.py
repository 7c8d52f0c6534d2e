"""The admission gate: FIFO places, no place lost to a cancellation, and a request's
deadline that starts only once it is admitted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from drivers.transport import admission, cgminer_tcp
from drivers.transport.admission import Gate

REPLY = b'{"STATUS":[{"STATUS":"S","Code":11,"Msg":"Summary"}],"SUMMARY":[{"GHS 5s":1.5}],"id":1}'


@pytest.fixture
def one_place() -> Iterator[None]:
    before = admission.limit()
    admission.set_limit(1)
    yield
    admission.set_limit(before)


async def test_gate_admits_in_arrival_order_and_hands_places_on() -> None:
    gate = Gate(2)
    order: list[int] = []
    release = asyncio.Event()

    async def user(n: int) -> None:
        async with gate:
            order.append(n)
            await release.wait()

    tasks = [asyncio.create_task(user(n)) for n in range(6)]
    await asyncio.sleep(0)
    assert order == [0, 1]
    assert gate.free == 0
    assert gate.waiting == 4
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]
    assert gate.free == 2
    assert gate.waiting == 0


async def test_gate_cancelled_waiter_loses_no_place() -> None:
    gate = Gate(1)
    held = asyncio.Event()
    release = asyncio.Event()
    entered: list[str] = []

    async def holder() -> None:
        async with gate:
            held.set()
            await release.wait()

    async def waiter(name: str) -> None:
        async with gate:
            entered.append(name)

    first = asyncio.create_task(holder())
    await held.wait()
    doomed = asyncio.create_task(waiter("doomed"))
    patient = asyncio.create_task(waiter("patient"))
    await asyncio.sleep(0)
    doomed.cancel()
    release.set()
    await asyncio.gather(first, patient)
    assert doomed.cancelled()
    assert entered == ["patient"]
    assert gate.free == 1


async def test_gate_place_handed_to_a_waiter_cancelled_before_it_ran_passes_on() -> None:
    gate = Gate(1)
    entered: list[str] = []

    async def waiter(name: str) -> None:
        async with gate:
            entered.append(name)

    await gate.__aenter__()
    doomed = asyncio.create_task(waiter("doomed"))
    patient = asyncio.create_task(waiter("patient"))
    await asyncio.sleep(0)
    await gate.__aexit__(None, None, None)  # hands the place to "doomed"...
    doomed.cancel()  # ...which is cancelled before it resumes
    await asyncio.gather(patient)
    assert doomed.cancelled()
    assert entered == ["patient"]
    assert gate.free == 1


async def test_request_deadline_starts_when_admitted(one_place: None) -> None:
    """With the only place held longer than the request's deadline, the request neither
    touches the device nor times out: it waits, then is served."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read(1024)
        writer.write(REPLY + b"\x00")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        gate = admission.gate()
        await gate.__aenter__()
        call = asyncio.create_task(
            cgminer_tcp.request("127.0.0.1", port, "summary", timeout_s=0.2, device="m1")
        )
        await asyncio.sleep(0.5)  # longer than the request's own deadline
        assert connections == 0
        assert not call.done()
        await gate.__aexit__(None, None, None)
        reply = await call
    assert reply["SUMMARY"][0]["GHS 5s"] == 1.5
    assert connections == 1


async def test_gate_resize_keeps_places_in_use_and_admits_at_once_when_grown() -> None:
    gate = Gate(2)
    await gate.__aenter__()
    await gate.__aenter__()
    gate.resize(1)  # both places stay held; one must come back before anyone enters
    entered: list[int] = []

    async def user(n: int) -> None:
        async with gate:
            entered.append(n)

    waiting = asyncio.create_task(user(1))
    await asyncio.sleep(0)
    await gate.__aexit__(None, None, None)
    await asyncio.sleep(0)
    assert entered == []  # the first release only paid back the shrink
    await gate.__aexit__(None, None, None)
    await waiting
    assert entered == [1]
    assert gate.free == 1
    gate.resize(3)
    assert gate.free == 3


async def test_set_limit_resizes_the_running_loops_gate() -> None:
    before = admission.limit()
    try:
        first = admission.gate()
        admission.set_limit(before + 5)
        assert admission.gate() is first  # one gate per loop, never two limits at once
        assert first.free == before + 5
    finally:
        admission.set_limit(before)
