"""Winter at -35 °C on the simulator, on a fake clock: a frozen farm is woken gently and
staggered, curtailed deep without a cut, keeps its heater floors through a cancelled
grant, and restores without a failed cold boot or a breaker trip. Without warm restarts
the same farm's cold boots fail: the protection is what makes the difference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.core.model import ActionKind
from controller.core.signals import ObligationStatus
from tests.conftest import load_site, site_dict
from tests.system.harness import Rig, iso, rig

pytestmark = pytest.mark.system

MINERS = 16
FLOOR_KW = 4.0  # two LuxOS units at their lowest profile
BASE_LOAD_KW = 1.0
WAKE_KW_PER_S = 10.0


def winter_site(tmp_path: Path, **safety: Any) -> Any:
    """Sixteen LuxOS miners in two containers at -35 °C, each container with an ambient
    sensor; container c1's miners on a switched PDU; a site meter; surplus-only."""
    data = site_dict(
        tmp_path,
        miners=MINERS,
        mode="surplus-only",
        base_allowance_kw=14.0,
        margin_kw=1.0,
        start_mode="sleeping",
    )
    data["grid"]["grant_end_lead_s"] = 40
    data["grid"]["response_deadline_s"] = 20
    net = data["miners"][0]["host"].rsplit(".", 2)[0]
    c1 = [m["id"] for m in data["miners"] if m["container"] == "c1"]
    data["pdus"] = [
        {
            "id": "pdu-1",
            "host": f"{net}.250.1",
            "port": 1502,
            "map": "pdu-coil-24",
            "outlets": {n + 1: miner for n, miner in enumerate(c1)},
        }
    ]
    data["meter"] = {
        "id": "site-meter",
        "host": f"{net}.250.2",
        "port": 1502,
        "map": "meter-float32",
        "interval_s": 0.5,
        "stale_after_s": 3,
        "update_lag_s": 0.5,
    }
    data["sensors"] = [
        {
            "id": f"{c}-ambient",
            "host": f"{net}.250.{3 + i}",
            "port": 1502,
            "map": "sensor-temp",
            "container": c,
            "interval_s": 5,
        }
        for i, c in enumerate(("c1", "c2"))
    ]
    data["safety"] = {
        "hard_off_below_c": -20,
        "floor_below_c": 0,
        "floor_kw": FLOOR_KW,
        "warm_below_c": 10,
        "warm_up_s": 30,
        "min_on_s": 60,
        "min_off_s": 20,
        "temperature_stale_after_s": 30,
        **safety,
    }
    data["control"].update(
        {"wake_max_per_s": 4, "wake_max_kw_per_s": WAKE_KW_PER_S, "wake_headroom_kw": 1}
    )
    data["escalation"] = {"lower_first": True, "pdu_interval_s": 1.0, "restore_min_off_s": 30}
    data["simulation"].update(
        {
            "default_ambient_c": -35,
            "ambient_c": {"c1": -35, "c2": -35},
            "meter": {"base_load_kw": BASE_LOAD_KW, "update_interval_s": 0.5},
        }
    )
    return load_site(data)


def draw_kw(r: Rig, container: str) -> float:
    return r.farm.power_by_container_w().get(container, 0.0) / 1000


def floors_held(r: Rig) -> bool:
    return all(draw_kw(r, c) >= FLOOR_KW for c in ("c1", "c2"))


def rated_kw(r: Rig) -> float:
    return sum(m.rated_power_w for m in r.loaded.miners) / 1000


def cancel(signal_id: str, revision: int, r: Rig) -> dict[str, Any]:
    return {"type": "cancel", "id": signal_id, "revision": revision, "issued_at": iso(r.clock)}


def planned(r: Rig, kind: ActionKind) -> list[str]:
    rows = r.daemon.journal.rows("SELECT miner_id, action FROM commands WHERE outcome = 'ok'")
    return [miner for miner, k in rows if k == kind.value]


async def test_a_frozen_farm_is_curtailed_and_restored_without_harm(tmp_path: Path) -> None:
    async with rig(winter_site(tmp_path)) as r:
        # Asleep at -35 °C: the heater floors wake gently inside the base allowance.
        await r.run_until(lambda: floors_held(r), within_s=120)
        assert planned(r, ActionKind.WAKE) == []
        assert len(planned(r, ActionKind.WARM)) >= 4

        await r.post(*r.signed(r.grant(rated_kw(r) * 1.1, end_in_s=3600)))
        await r.run_until(lambda: r.farm.total_power_w() >= 0.9 * rated_kw(r) * 1000, 240)
        assert r.farm.failed_cold_boots() == 0
        assert len(set(planned(r, ActionKind.WARM))) == MINERS  # every board was cold
        await r.step(35)  # the last warm-up
        assert set(planned(r, ActionKind.RAISE)) == set(planned(r, ActionKind.WARM))
        assert r.farm.peak_start_w_per_s() <= WAKE_KW_PER_S * 1000

        deep = round(rated_kw(r) * 0.3, 1)
        await r.post(*r.signed(r.curtailment(deep, deadline_s=45)))
        ob = await r.settled("evt-0017#r1", within_s=60)
        assert ob.status is ObligationStatus.REACHED, ob
        assert r.farm.cuts == []  # nothing went dark at -35 °C
        await r.step(5)
        assert floors_held(r)
        assert planned(r, ActionKind.LOWER)  # the floors' keepers, at their lowest profile

        await r.post(
            *r.signed(
                {
                    "type": "cancel",
                    "id": "korem-h10",
                    "revision": 2,
                    "issued_at": r.clock.now().isoformat().replace("+00:00", "Z"),
                }
            )
        )
        await r.run_until(lambda: not r.sup.pending_deadlines(), within_s=60)
        assert all(o.status is ObligationStatus.REACHED for o in r.sup.deadlines.finished), list(
            r.sup.deadlines.finished
        )
        await r.step(30)
        assert floors_held(r)  # the base allowance carries both floors
        alarms = r.daemon.journal.rows(
            "SELECT at, subject, detail FROM events WHERE kind = 'alarm'"
        )
        assert r.sup.alarms.counts["heater-floor"] == 0, alarms

        await r.post(*r.signed(cancel("evt-0017", 2, r)))  # the event is over too
        await r.step(5)
        await r.post(*r.signed(r.grant(rated_kw(r) * 1.1, end_in_s=3600, signal_id="korem-h11")))
        await r.run_until(lambda: r.farm.total_power_w() >= 0.9 * rated_kw(r) * 1000, 240)
        assert r.farm.failed_cold_boots() == 0
        assert r.farm.breaker_trips() == 0
        assert r.farm.cuts == []
        assert r.farm.peak_start_w_per_s() <= WAKE_KW_PER_S * 1000


async def test_without_warm_restarts_the_same_farm_fails_cold_boots(tmp_path: Path) -> None:
    async with rig(winter_site(tmp_path, warm_below_c=None, floor_kw=0)) as r:
        await r.post(*r.signed(r.grant(rated_kw(r) * 1.1, end_in_s=3600)))
        await r.step(20)
        assert r.farm.failed_cold_boots() > 0
        assert planned(r, ActionKind.WARM) == []


async def awake(r: Rig) -> float:
    """Wake the frozen farm under a grant; the limit that only c1's outlets can meet in 2 s."""
    await r.post(*r.signed(r.grant(rated_kw(r) * 1.1, end_in_s=3600)))
    await r.run_until(lambda: r.farm.total_power_w() >= 0.9 * rated_kw(r) * 1000, 240)
    await r.step(35)
    return round((r.sup.draw.measured_w or 0) / 1000 - 0.7 * draw_kw(r, "c1"), 1)


async def test_a_deadline_only_cuts_could_meet_is_not_met_by_cuts_in_the_cold(
    tmp_path: Path,
) -> None:
    async with rig(winter_site(tmp_path, floor_kw=0)) as r:
        limit = await awake(r)
        # LuxOS needs ~5 s to ramp down; c1's outlets could make 2 s, but c1 is too cold.
        await r.post(*r.signed(r.curtailment(limit, deadline_s=2)))
        await r.settled("evt-0017#r1", within_s=10)
        await r.step(10)
        assert r.farm.cuts == []
        assert r.sup.alarms.counts["cold-cut"] == 0
        c1 = {m.id for m in r.loaded.miners if m.container == "c1"}
        assert r.asleep() & c1  # slept instead, late: the deadline gives way, not the cold


async def test_an_emergency_nothing_else_meets_may_cut_in_the_cold_with_an_alarm(
    tmp_path: Path,
) -> None:
    async with rig(winter_site(tmp_path, floor_kw=0)) as r:
        limit = await awake(r)
        await r.post(*r.signed(r.curtailment(limit, deadline_s=2, emergency=True)))
        ob = await r.settled("evt-0017#r1", within_s=10)
        assert ob.status is ObligationStatus.REACHED, ob
        assert r.farm.cuts
        cut = {miner for _, miner, _ in r.sup.alarms.cold_cuts}
        assert cut == {miner for _, miner, _, _ in r.farm.cuts}
        assert all(ambient < -20 for _, _, _, ambient in r.farm.cuts)
        events = r.daemon.journal.rows("SELECT subject FROM events WHERE kind = 'alarm'")
        assert {subject for (subject,) in events} >= cut
