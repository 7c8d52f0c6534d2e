"""The daemon over miners whose firmware lacks optional endpoints: it still sees them, so
a deadline they meet is acked reached, and they wake after the cancel."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from controller.core.signals import ObligationStatus
from tests.conftest import API_TOKENS, api_section, load_site, site_dict
from tests.system.harness import iso, rig

pytestmark = pytest.mark.system

BOS_LACKS = ["/api/v1/miner/hw/hashboards", "/api/v1/performance/mode"]


async def test_system_braiins_os_without_hashboards_and_mode_meets_a_deadline_and_wakes(
    tmp_path: Path,
) -> None:
    # The field report: such miners stayed unknown at rated power, a 1 kW deadline was
    # acked missed while they drew 0.4 kW, and after the cancel they were never woken.
    data = site_dict(tmp_path, miners=6)
    for entry in data["miners"]:
        entry.update(driver="braiins-os", port=8080)
    data["simulation"]["missing"] = {entry["id"]: BOS_LACKS for entry in data["miners"]}
    loaded = load_site(data)
    async with rig(loaded) as r:
        views = r.daemon.readings.views()
        assert all(v.healthy and v.reading is not None for v in views), views
        assert all(v.reading.board_temps_c == () for v in views if v.reading is not None)
        status, _ = await r.post(*r.signed(r.curtailment(1.0, deadline_s=10)))
        assert status == 202
        ob = await r.settled("evt-0017#r1", within_s=15)
        assert ob.status is ObligationStatus.REACHED, ob
        assert r.farm.total_power_w() <= 1000
        assert len(r.asleep()) == 6
        acks = [(a.signal_id, a.status) for a in r.daemon.recorder.acks]
        assert acks == [("evt-0017", "received"), ("evt-0017", "reached")]

        cancel = {"type": "cancel", "id": "evt-0017", "revision": 2, "issued_at": iso(r.clock)}
        assert (await r.post(*r.signed(cancel)))[0] == 202
        await r.run_until(lambda: not r.asleep(), within_s=60)
        failed = r.daemon.journal.rows("SELECT miner_id, action FROM commands WHERE outcome!='ok'")
        assert failed == []
        for sim in r.farm.miners.values():
            assert sim.missing.asked.keys() == set(BOS_LACKS)
            assert set(sim.missing.asked.values()) == {1}  # learnt once per miner


async def test_system_a_miner_without_an_essential_endpoint_says_why_in_the_api(
    tmp_path: Path,
) -> None:
    data = site_dict(tmp_path, miners=2, api=api_section())
    for entry in data["miners"]:
        entry.update(driver="braiins-os", port=8080)
    data["simulation"]["missing"] = {"m001": ["/api/v1/miner/stats"]}
    async with rig(load_site(data)) as r, aiohttp.ClientSession() as session:
        assert r.daemon.api is not None
        url = f"http://127.0.0.1:{r.daemon.api.port}/api/v1/miners"
        headers = {"Authorization": f"Bearer {API_TOKENS['viewer']}"}
        async with session.get(url, headers=headers) as reply:
            assert reply.status == 200
            miners = {m["id"]: m for m in (await reply.json())["miners"]}
        assert miners["m000"]["health_reason"] is None
        assert miners["m001"]["health_reason"] == (
            "unsupported: the firmware lacks /api/v1/miner/stats, which every reading needs"
        )
        assert miners["m001"]["power_kw"] is None  # unknown: counted at its rating
