"""The operator API's guards against slow parties, over real HTTP on loopback: a body that
stops arriving is refused (408) and journaled, and a compliance read that timed out holds
one worker thread, not one per request. The guards' limits are shortened for the test;
what is asserted is answers and counts, never durations."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.operator_api import handlers, server
from tests.conftest import API_TOKENS
from tests.energy_samples import FixedCompliance
from tests.system.test_operator_api import api_rig

pytestmark = pytest.mark.system


class Stuck(FixedCompliance):
    """A journal read that does not return until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.calls = 0

    def compliance(self, now: datetime) -> dict[str, Any]:
        self.calls += 1
        self.release.wait(30)
        return super().compliance(now)


async def test_system_a_timed_out_compliance_read_is_not_piled_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "COMPLIANCE_TIMEOUT_S", 0.2)
    async with api_rig(tmp_path, miners=2) as (r, api):
        assert r.daemon.api is not None
        source = Stuck()
        r.daemon.api.compliance = source
        try:
            status, body, _ = await api.call("GET", "/api/v1/compliance")
            assert (status, body["detail"]) == (
                503,
                "compliance not available: the energy account is slow",
            )
            for _ in range(3):  # the thread still reads: no other starts
                status, body, _ = await api.call("GET", "/api/v1/compliance")
                assert (status, body["detail"]) == (
                    503,
                    "compliance not available: an earlier read is still running",
                )
            assert source.calls == 1
        finally:
            source.release.set()
        stuck = r.daemon.api.compliance_stuck
        assert stuck is not None
        await asyncio.wait_for(asyncio.shield(stuck), 30)
        status, _, _ = await api.call("GET", "/api/v1/compliance")
        assert status == 200
        assert source.calls == 2


async def test_system_a_schedule_body_that_stops_arriving_is_a_408(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "BODY_TIMEOUT_S", 0.3)
    async with api_rig(tmp_path, miners=2, mode="surplus-only") as (r, _):
        assert r.daemon.api is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", r.daemon.api.port)
        try:
            writer.write(
                b"POST /api/v1/grants/schedule HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + API_TOKENS["operator"].encode() + b"\r\n"
                b"Content-Type: text/csv\r\nContent-Length: 1000\r\n\r\nstart,end,kw,auction\n"
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.read(4096), 30)
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 408"), head[:200]
        assert b"did not arrive within" in head
        rows = r.daemon.journal.rows(
            "SELECT verdict, detail FROM signals WHERE transport='schedule'"
        )
        assert [v for v, _ in rows] == ["rejected"]
        assert "did not arrive within" in rows[0][1]
        assert r.daemon.inbox.book.held == {}
