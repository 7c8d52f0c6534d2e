"""A farm of all four firmware families curtails under a deadline, on logical time.

The slow families (a stock Antminer restarts its mining process; a Whatsminer powers its
hashboards down over seconds) are also the least efficient here, so plain efficiency order
would shed exactly the miners that cannot land by a ten-second deadline. The planner sheds
what lands in time first; a later, longer deadline then reaches every family.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from controller.core.signals import ObligationStatus
from drivers.types import Mode
from sim.antminer_stock import AntminerStockDevice
from tests.conftest import load_site, site_dict
from tests.system.harness import Rig, rig

pytestmark = pytest.mark.system

# (driver, extra config, efficiency J/TH): fast families efficient, slow ones not.
FAMILIES: tuple[tuple[str, dict[str, Any], float], ...] = (
    ("luxos", {}, 24.0),
    ("braiins-os", {"port": 8080}, 22.0),
    ("whatsminer-v2", {}, 33.0),
    ("whatsminer", {}, 32.0),  # probes the firmware: new firmware speaks API v3
    ("antminer-stock", {"web_port": 8080}, 35.0),
)
FAST = {"luxos", "braiins-os"}
PER_FAMILY = 4


def mixed_site(tmp_path: Path) -> dict[str, Any]:
    data = site_dict(tmp_path, miners=len(FAMILIES) * PER_FAMILY)
    for i, entry in enumerate(data["miners"]):
        driver, extra, efficiency = FAMILIES[i % len(FAMILIES)]
        entry.update(driver=driver, efficiency_j_th=efficiency, timeout_s=2.0, **extra)
    return data


def families_asleep(r: Rig) -> Counter[str]:
    driver = {m.id: m.driver for m in r.loaded.miners}
    return Counter(driver[m] for m in r.asleep())


async def test_system_mixed_farm_meets_a_deadline_then_sheds_every_family(tmp_path: Path) -> None:
    loaded = load_site(mixed_site(tmp_path))
    async with rig(loaded) as r:
        rated_w = {m.id: m.rated_power_w for m in loaded.miners}
        fast_w = sum(w for m, w in rated_w.items() if m in _ids(r, FAST))
        total_w = sum(rated_w.values())
        assert r.sup.draw.measured_w == pytest.approx(total_w, rel=0.05)
        pools = {
            m: [p["url"] for p in sim.device.conf["pools"]]
            for m, sim in r.farm.miners.items()
            if isinstance(sim.device, AntminerStockDevice)
        }

        # 1. Shed about half the fast families' draw within 10 s: only they can land in time.
        first_kw = round((total_w - 0.5 * fast_w) / 1000, 1)
        status, _ = await r.post(*r.signed(r.curtailment(first_kw, deadline_s=10)))
        assert status == 202
        ob = await r.settled("evt-0017#r1", within_s=15, wait_idle=False)
        assert ob.status is ObligationStatus.REACHED, ob
        assert ob.time_to_target_s is not None
        assert ob.time_to_target_s <= 10.0
        assert r.farm.total_power_w() <= first_kw * 1000  # the simulators' truth agrees
        asleep = families_asleep(r)
        assert asleep
        assert set(asleep) <= FAST, asleep  # the slow, inefficient units were not the answer

        # 2. A deep cut with a minute to reach it: every family sleeps, each its own way.
        deep_kw = round(0.1 * total_w / 1000, 1)
        await r.post(*r.signed(r.curtailment(deep_kw, revision=2, deadline_s=60)))
        ob = await r.settled("evt-0017#r2", within_s=65, dt=0.5, wait_idle=False)
        assert ob.status is ObligationStatus.REACHED, ob
        assert r.farm.total_power_w() <= deep_kw * 1000
        assert set(families_asleep(r)) == {driver for driver, _, _ in FAMILIES}
        for sim in r.farm.miners.values():
            device = sim.device
            if isinstance(device, AntminerStockDevice) and sim.physics.mode is Mode.SLEEPING:
                # Sleep went through the CGI with the whole config: the pools survived it.
                assert device.conf["bitmain-work-mode"] == "1"
                assert [p["url"] for p in device.conf["pools"]] == pools[sim.spec.id]

        # 3. The grid lifts the cut: every family wakes, at the bounded rate.
        cancel = {"type": "cancel", "id": "evt-0017", "revision": 3, "issued_at": _iso(r)}
        assert (await r.post(*r.signed(cancel)))[0] == 202
        await r.run_until(lambda: not r.asleep(), within_s=120, dt=0.5, wait_idle=False)
        failed = r.daemon.journal.rows(
            "SELECT miner_id, action, outcome, detail FROM commands WHERE outcome != 'ok'"
        )
        assert failed == []


def _ids(r: Rig, drivers: set[str]) -> set[str]:
    return {m.id for m in r.loaded.miners if m.driver in drivers}


def _iso(r: Rig) -> str:
    return r.clock.now().isoformat().replace("+00:00", "Z")
