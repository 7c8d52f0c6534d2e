"""The allocation on the simulated farm, over real LuxOS and Braiins OS+ protocols, on
logical time: a cap's deadline is met by the ladder as before, then the farm is retuned
toward the most hashrate that fits, never over the limit; what it set and learned
survives a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.clock import FakeClock
from controller.core.signals import ObligationStatus
from demo.farm import farm_from_config
from sim.faults import Fault
from tests.conftest import load_site, site_dict
from tests.system.harness import daemon_on, rig

pytestmark = pytest.mark.system


def capped_site(tmp_path: Path, **tuning: Any) -> dict[str, Any]:
    data = site_dict(tmp_path, miners=16, margin_kw=1.0, efficiencies=(21.5, 29.5))
    for i, entry in enumerate(data["miners"]):
        if i % 2:
            entry["driver"] = "braiins-os"
    data["tuning"] = {"dwell_s": 30, **tuning}
    return data


async def test_a_cap_is_held_with_more_hashrate_once_its_deadline_is_met(tmp_path: Path) -> None:
    loaded = load_site(capped_site(tmp_path))
    async with rig(loaded) as r:
        limit_w = round(r.farm.total_power_w() * 0.6, -2)
        status, _ = await r.post(*r.signed(r.curtailment(limit_w / 1000, deadline_s=30)))
        assert status == 202
        ob = await r.settled("evt-0017#r1", within_s=40)
        assert ob.status is ObligationStatus.REACHED
        await r.step(5)
        ladder_ths = r.farm.hashrate_ths()  # what the ladder alone holds
        assert ladder_ths > 0
        peak_w = 0.0
        for _ in range(72):  # six minutes: Braiins retargets over two
            await r.step(5, dt=0.5)
            peak_w = max(peak_w, r.farm.total_power_w())
        assert peak_w <= limit_w  # the simulator's truth, after the deadline
        held_ths = r.farm.hashrate_ths()
        assert held_ths > ladder_ths * 1.03
        journal = r.daemon.journal
        tunes = journal.rows("SELECT outcome FROM commands WHERE action='tune'")
        assert tunes
        assert {outcome for (outcome,) in tunes} == {"ok"}
        retunes = [
            reason
            for (seq,) in journal.rows("SELECT seq FROM decisions")
            for _, kind, reason in journal.decision_actions(seq)
            if kind == "tune"
        ]
        assert retunes
        assert all(reason.startswith("retune to ") for reason in retunes)
        expected = r.sup.plan.expected_ths
        assert expected == pytest.approx(held_ths, rel=0.1)
        targets = {v.spec.id: v.target_w for v in r.daemon.readings.views() if v.target_w}
        assert targets


async def test_tuning_off_holds_the_cap_with_the_ladder_alone(tmp_path: Path) -> None:
    loaded = load_site(capped_site(tmp_path, enabled=False))
    async with rig(loaded) as r:
        limit_w = round(r.farm.total_power_w() * 0.6, -2)
        await r.post(*r.signed(r.curtailment(limit_w / 1000, deadline_s=30)))
        ob = await r.settled("evt-0017#r1", within_s=40)
        assert ob.status is ObligationStatus.REACHED
        await r.step(120, dt=0.5)
        assert r.farm.total_power_w() <= limit_w
        assert not r.daemon.journal.rows("SELECT seq FROM commands WHERE action='tune'")


async def test_targets_and_learned_curves_survive_a_restart(tmp_path: Path) -> None:
    loaded = load_site(capped_site(tmp_path))
    clock = FakeClock()
    farm = farm_from_config(loaded, clock.time)
    async with farm:
        async with daemon_on(loaded, clock, farm) as first:
            limit_w = round(farm.total_power_w() * 0.6, -2)
            await first.post(*first.signed(first.curtailment(limit_w / 1000, deadline_s=30)))
            await first.settled("evt-0017#r1", within_s=40)
            await first.step(240, dt=0.5)
            book = first.sup.curves
            assert book.learned > 0
            learned = book.to_json()
            assert learned
            targets = {v.spec.id: v.target_w for v in first.daemon.readings.views() if v.target_w}
            assert targets
        async with daemon_on(loaded, clock, farm) as second:
            assert second.sup.curves.to_json() == learned
            restored = {v.spec.id: v.target_w for v in second.daemon.readings.views() if v.target_w}
            assert restored == targets
            await second.step(30, dt=0.5)
            assert farm.total_power_w() <= limit_w


async def test_a_kill_in_the_middle_of_a_retune_keeps_the_limit(tmp_path: Path) -> None:
    """The daemon is stopped dead (its tasks cancelled, nothing flushed that was not
    already: what the journal holds after a kill -9) while retunes are on the wire; the
    next run holds the limit at every step and goes on retuning."""
    loaded = load_site(capped_site(tmp_path))
    clock = FakeClock()
    farm = farm_from_config(loaded, clock.time)
    async with farm:
        async with daemon_on(loaded, clock, farm) as first:
            limit_w = round(farm.total_power_w() * 0.6, -2)
            await first.post(*first.signed(first.curtailment(limit_w / 1000, deadline_s=30)))
            await first.settled("evt-0017#r1", within_s=40)
            # Every request slow in real time, so the retunes are surely on the wire when
            # the daemon dies (each takes several requests).
            for miner in farm.miners:
                await farm.set_fault(miner, Fault.SLOW, slow_s=0.3)

            journal = first.daemon.journal
            decided = len(journal.rows("SELECT seq FROM decisions"))

            def retuning() -> bool:
                rows = journal.rows("SELECT seq FROM decisions")[decided:]
                return any(
                    kind == "tune"
                    for (seq,) in rows
                    for _, kind, _ in journal.decision_actions(seq)
                )

            await first.run_until(retuning, within_s=60, dt=0.25, wait_idle=False)
        clock.advance(2)
        for miner in farm.miners:
            await farm.set_fault(miner, Fault.NONE)
        async with daemon_on(loaded, clock, farm, settle=False) as second:
            peak_w = 0.0
            for _ in range(120):
                await second.step(0.5, wait_idle=False)
                peak_w = max(peak_w, farm.total_power_w())
            assert peak_w <= limit_w
            assert second.sup.limit.limit_w == limit_w
            assert farm.hashrate_ths() > 0
            seen = second.daemon.journal.rows(
                "SELECT count(*) FROM commands WHERE outcome='seen-after-restart'"
            )
            assert seen[0][0] > 0  # the first run's commands on the wire, settled by readings
            # No grid shed in the second run: the limit held without one, and a resumed
            # allocation sleep is none.
            assert not any(second.sup.commands.escalations.values())
