"""The demo's grid operator: signed signals over MQTT and HTTP, and the acks they earn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from controller.adapters.mqtt_signals import GridSide
from controller.clock import SystemClock
from controller.intake import wire


class GridOperator:
    """The scripted grid operator's hands: signed signals over MQTT and HTTP, and their
    acknowledgements."""

    def __init__(
        self,
        grid: GridSide,
        key: bytes,
        clock: SystemClock,
        http_port: int,
        say: Callable[[str], None],
    ) -> None:
        self._grid = grid
        self._key = key
        self.clock = clock
        self._http = f"http://127.0.0.1:{http_port}/grid/v1/signals"
        self.say = say
        self.kinds: dict[str, str] = {}

    def curtailment(
        self, signal_id: str, revision: int, limit_kw: int, deadline_s: float
    ) -> dict[str, Any]:
        return {
            "type": "curtailment",
            "id": signal_id,
            "revision": revision,
            "issued_at": iso(self.clock.now()),
            "limit_kw": limit_kw,
            "deadline_s": deadline_s,
            "emergency": False,
        }

    def grant(self, signal_id: str, granted_kw: int, end: datetime) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "type": "grant",
            "id": signal_id,
            "revision": 1,
            "issued_at": iso(now),
            "start": iso(now),
            "end": iso(end),
            "granted_kw": granted_kw,
        }

    def cancel(self, signal_id: str, revision: int) -> dict[str, Any]:
        return {
            "type": "cancel",
            "id": signal_id,
            "revision": revision,
            "issued_at": iso(self.clock.now()),
        }

    async def mqtt(self, signal: dict[str, Any], what: str) -> None:
        body = json.dumps(signal).encode()
        self.kinds[f"{signal['id']}#r{signal['revision']}"] = signal["type"]
        self.say(f"grid -> MQTT: {what}")
        await self._grid.publish(wire.seal(self._key, int(self.clock.time()), body))
        ack = await self._grid.wait_ack(signal["id"], signal["revision"])
        self.say(f"ack: {ack['status']} ({ack['detail']})")

    async def heartbeat(self) -> None:
        body = json.dumps({"type": "heartbeat", "issued_at": iso(self.clock.now())}).encode()
        await self._grid.publish(wire.seal(self._key, int(self.clock.time()), body))

    async def post(self, signal: dict[str, Any], what: str) -> None:
        body = json.dumps(signal).encode()
        self.kinds[f"{signal['id']}#r{signal['revision']}"] = signal["type"]
        ts = int(self.clock.time())
        self.say(f"grid -> HTTP: {what}")
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                self._http,
                data=body,
                headers={
                    wire.TIMESTAMP_HEADER: str(ts),
                    wire.SIGNATURE_HEADER: wire.sign(self._key, ts, body),
                },
            ) as reply,
        ):
            self.say(f"HTTP {reply.status}: {await reply.text()}")

    async def reached(self, signal_id: str, revision: int, deadline_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            ack = await self._grid.wait_ack(signal_id, revision, timeout_s=deadline_s + 5)
            while ack["status"] not in ("reached", "missed"):
                ack = await self._next_verdict(signal_id, revision, deadline_s)
            self.say(f"ack: {ack['status']} ({ack['detail']})")

    async def _next_verdict(
        self, signal_id: str, revision: int, deadline_s: float
    ) -> dict[str, Any]:
        for status in ("reached", "missed"):
            with contextlib.suppress(TimeoutError):
                return await self._grid.wait_ack(
                    signal_id, revision, status, timeout_s=deadline_s / 2
                )
        return {"status": "missed", "detail": "no verdict acknowledged"}


async def until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    # Conditions span the daemon and the simulator; polling them is simpler than events.
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.25)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
