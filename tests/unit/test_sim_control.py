"""The simulator's control API: true state out, faults and ambient in."""

from __future__ import annotations

import aiohttp

from drivers.transport import cgminer_tcp
from sim.control import SimControl
from sim.faults import Fault
from tests.unit.conftest import MakeFarm, Time


async def test_sim_control_reads_state_and_injects_faults(make_farm: MakeFarm, clock: Time) -> None:
    farm = await make_farm(2, 3250, 29.5)
    control = SimControl(farm)
    await control.start()
    base = f"http://127.0.0.1:{control.port}/v1"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/miners") as reply:
                miners = await reply.json()
            assert [m["id"] for m in miners] == ["m0", "m1"]
            assert miners[0]["mode"] == "mining"
            assert miners[0]["power_w"] == 3250
            async with http.put(f"{base}/miners/m1/fault", json={"mode": "refuse"}) as reply:
                assert reply.status == 200
            assert farm.miners["m1"].fault.mode is Fault.REFUSE
            async with http.put(f"{base}/containers/c1/ambient", json={"ambient_c": -35}) as reply:
                assert reply.status == 200
            clock.now += 3600
            async with http.get(f"{base}/miners/m0") as reply:
                state = await reply.json()
            # Fans at their minimum: mining boards stay warm, just below the 60 degC target.
            assert 20 < state["board_temps_c"][0] < 60
            async with http.put(f"{base}/miners/m0/fault", json={"mode": "sparks"}) as reply:
                assert reply.status == 400
            async with http.get(f"{base}/miners/nope") as reply:
                assert reply.status == 404
            async with http.post(f"{base}/reset", json={"mode": "sleeping"}) as reply:
                assert (await reply.json())["reset"] == "sleeping"
            assert all(m.physics.mode.value == "sleeping" for m in farm.miners.values())
        host = farm.miners["m0"].spec.host
        events = await cgminer_tcp.request(host, 4028, "events", timeout_s=1, device="m0")
        assert events["EVENTS"][0]["Code"] == "SLEEP"
    finally:
        await control.stop()
