"""Every bad input is rejected with a reason, journaled, and changes nothing held."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.adapters.mqtt_signals import GridSide
from controller.intake import wire
from tests.conftest import KEY, Broker, load_site, site_dict
from tests.system.harness import Rig, rig

pytestmark = pytest.mark.system

Mutation = Callable[[dict[str, Any]], dict[str, Any]]


def changed(**changes: Any) -> Mutation:
    def mutate(signal: dict[str, Any]) -> dict[str, Any]:
        out = {**signal, **changes}
        return {k: v for k, v in out.items() if v is not ...}

    return mutate


BAD_BODIES: list[tuple[str, Mutation, str]] = [
    ("wrong type", changed(limit_kw="700"), "limit_kw: Input should be a valid number"),
    ("missing field", changed(deadline_s=...), "deadline_s: Field required"),
    ("extra field", changed(priority="high"), "priority: unknown field"),
    (
        "end before start",
        changed(start="2026-11-23T11:00:00Z", end="2026-11-23T10:30:00Z"),
        "end must be after start",
    ),
    ("negative kW", changed(limit_kw=-50), "limit_kw: Input should be greater than or equal"),
    ("no offset", changed(issued_at="2026-11-23T10:00:00"), "issued_at: timestamp needs a UTC"),
    ("unknown signal type", changed(type="shutdown"), "does not match any of the expected tags"),
]


async def held_state(r: Rig) -> tuple[object, int, int]:
    """What a rejected signal must not change: the book, the limit, the command count."""
    await r.step(0.5)
    return r.daemon.inbox.book, r.sup.limit.limit_w, r.sup.ledger.sent


async def start_with_a_curtailment(r: Rig) -> tuple[object, int, int]:
    status, _ = await r.post(*r.signed(r.curtailment(30, signal_id="evt-held")))
    assert status == 202
    await r.step(3)
    return await held_state(r)


@pytest.mark.parametrize(("name", "mutate", "reason"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_system_http_rejects_bad_signals(
    tmp_path: Path, name: str, mutate: Mutation, reason: str
) -> None:
    async with rig(load_site(site_dict(tmp_path, miners=6))) as r:
        before = await start_with_a_curtailment(r)
        status, problem = await r.post(*r.signed(mutate(r.curtailment(1))))
        assert status == 400, name
        assert problem["status"] == 400
        assert reason in problem["detail"]
        assert await held_state(r) == before
        rows = r.daemon.journal.rows("SELECT verdict, detail FROM signals ORDER BY seq")
        assert rows[-1][0] == "rejected"
        assert reason in rows[-1][1]
        assert r.daemon.recorder.acks[-1].status == "rejected"


async def test_system_http_authentication_and_size(tmp_path: Path) -> None:
    async with rig(load_site(site_dict(tmp_path, miners=6))) as r:
        before = await start_with_a_curtailment(r)
        body, headers = r.signed(r.curtailment(1))
        cases: list[tuple[bytes, dict[str, str], int, str]] = [
            (body, {**headers, wire.SIGNATURE_HEADER: "00" * 32}, 401, "does not match"),
            (
                body,
                {wire.TIMESTAMP_HEADER: headers[wire.TIMESTAMP_HEADER]},
                401,
                "missing X-Signature",
            ),
            (
                body,
                {wire.SIGNATURE_HEADER: headers[wire.SIGNATURE_HEADER]},
                401,
                "missing X-Signature-Timestamp",
            ),
            (body + b" ", headers, 401, "does not match"),
        ]
        stale_ts = int(r.clock.time()) - 31
        cases.append(
            (
                body,
                {
                    wire.TIMESTAMP_HEADER: str(stale_ts),
                    wire.SIGNATURE_HEADER: wire.sign(KEY, stale_ts, body),
                },
                401,
                "replay window is 30 s",
            )
        )
        huge = json.dumps({**r.curtailment(1), "pad": "x" * wire.MAX_BODY_BYTES}).encode()
        ts = int(r.clock.time())
        cases.append(
            (
                huge,
                {wire.TIMESTAMP_HEADER: str(ts), wire.SIGNATURE_HEADER: wire.sign(KEY, ts, huge)},
                413,
                "limit",
            )
        )
        for raw, hdrs, expected, reason in cases:
            status, problem = await r.post(raw, hdrs)
            assert status == expected, reason
            assert problem["type"].startswith("urn:curtaild:problem:")
            assert reason in problem["detail"]
        assert await held_state(r) == before


async def test_system_http_duplicate_and_stale_revisions(tmp_path: Path) -> None:
    async with rig(load_site(site_dict(tmp_path, miners=6))) as r:
        first = r.curtailment(30, revision=2)
        assert (await r.post(*r.signed(first)))[0] == 202
        await r.step(2)
        before = await held_state(r)
        status, reply = await r.post(*r.signed(first))
        assert (status, reply["status"]) == (200, "duplicate")
        status, problem = await r.post(*r.signed(r.curtailment(1, revision=1)))
        assert status == 409
        assert "older than revision 2" in problem["detail"]
        assert await held_state(r) == before
        assert [a.status for a in r.daemon.recorder.acks] == [
            "received",
            "reached",
            "duplicate",
            "rejected",
        ]


async def test_system_mqtt_rejects_bad_signals_with_acks(tmp_path: Path, broker: Broker) -> None:
    loaded = load_site(site_dict(tmp_path, miners=6, mqtt_port=broker.port))
    async with rig(loaded) as r:
        assert r.daemon.mqtt is not None
        await asyncio.wait_for(r.daemon.mqtt.connected.wait(), 10)
        before = await start_with_a_curtailment(r)
        async with GridSide(
            "127.0.0.1", broker.port, site_id="test-site", client_id="grid-bad-input"
        ) as grid:
            cases: list[tuple[bytes, str]] = [
                (
                    r.sealed(changed(limit_kw=-1)(r.curtailment(1, signal_id="evt-bad"))),
                    "limit_kw: Input should be greater than or equal to 0",
                ),
                (
                    r.sealed(r.curtailment(1, signal_id="evt-bad"), key=b"wrong"),
                    "does not match any configured source key",
                ),
                (r.sealed(r.curtailment(1, signal_id="evt-bad"), skew_s=-60), "replay window"),
                (b"definitely not json", "envelope:"),
                (
                    json.dumps({"ts": 1, "sig": "ab" * 32, "body": "{}", "x": 1}).encode(),
                    "x: unknown field",
                ),
                (b"{" + b" " * wire.MAX_BODY_BYTES + b"}", "limit is 65536"),
            ]
            for payload, reason in cases:
                count = len(grid.acks)
                await grid.publish(payload)
                async with asyncio.timeout(10):
                    while len(grid.acks) == count:
                        grid.ack_arrived.clear()
                        await grid.ack_arrived.wait()
                ack = grid.acks[-1]
                assert ack["status"] == "rejected"
                assert reason in ack["detail"], ack
            assert grid.acks[0]["id"] == "evt-bad"  # named where the body allowed it
        assert await held_state(r) == before
        rejected = r.daemon.journal.rows(
            "SELECT count(*) FROM signals WHERE verdict='rejected' AND transport='mqtt'"
        )
        assert rejected == [(len(cases),)]


async def test_system_http_client_leaving_mid_body_is_counted_and_unknown_paths_are_problems(
    tmp_path: Path,
) -> None:
    async with rig(load_site(site_dict(tmp_path, miners=6))) as r:
        http = r.daemon.http
        assert http is not None
        for _ in range(3):
            _, writer = await asyncio.open_connection("127.0.0.1", http.port)
            writer.write(
                b"POST /grid/v1/signals HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                b'{"type": "cur'
            )
            await writer.drain()
            writer.close()  # gone before the body is whole
            await writer.wait_closed()
        async with asyncio.timeout(10):
            while http.dropped < 3:  # noqa: ASYNC110 - counted by the adapter
                await asyncio.sleep(0.01)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{http.port}/grid/v1/nope") as reply,
        ):
            assert reply.status == 404
            assert reply.content_type == "application/problem+json"
        task = r.daemon._task
        assert task is not None
        assert not task.done()


async def test_system_http_oversize_bodies_are_journaled_or_counted(tmp_path: Path) -> None:
    """Refused on Content-Length before the body is read, and still accounted for."""
    async with rig(load_site(site_dict(tmp_path, miners=6))) as r:
        http = r.daemon.http
        assert http is not None
        inbox = r.daemon.inbox

        def accounted() -> int:
            [(rows,)] = r.daemon.journal.rows("SELECT count(*) FROM signals")
            return int(rows) + inbox.unjournaled

        before = accounted()
        huge = b"x" * (wire.MAX_BODY_BYTES + 1)
        for _ in range(3):
            status, problem = await r.post(huge, {})
            assert status == 413
            assert "the limit is 65536" in problem["detail"]
        assert accounted() == before + 3
