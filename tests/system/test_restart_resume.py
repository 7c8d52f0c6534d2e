"""A restart at any moment of a curtailment resumes where the first run left the ladder.

An outside round killed the daemon mid-curtailment and found the ladder's state lost:
lowered miners never raised after the cancel, ramping miners counted at their old draw
so the restarted daemon shed more, cut outlets the first run had not cut, and woke
miners while the curtailment still held. Here the first daemon is stopped dead (its
tasks cancelled: nothing flushed that was not already, exactly what the journal holds
after a kill -9) at moments from the first command on the wire to after the deadline.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from controller.clock import FakeClock
from controller.config import Loaded
from demo.farm import farm_from_config
from sim.faults import Fault
from tests.conftest import load_site, site_dict
from tests.system.harness import Rig, daemon_on

pytestmark = pytest.mark.system

PDU = "pdu-1"
# (driver, extra config, efficiency J/TH, rated W): LuxOS lowers in 5 s, Braiins sleeps
# in 3 s, a stock Antminer restarts its mining process (30 s) and has a switched outlet.
FAMILIES: tuple[tuple[str, dict[str, Any], float, int], ...] = (
    ("luxos", {}, 29.5, 3250),
    ("luxos", {}, 21.5, 3010),
    ("braiins-os", {"port": 8080}, 24.0, 3010),
    ("antminer-stock", {"web_port": 8080}, 33.0, 3050),
)
STEPS_BACK = ("wake", "warm", "raise", "restore")


def site(tmp_path: Path) -> Loaded:
    data = site_dict(tmp_path, miners=16, margin_kw=0.5)
    antminers = []
    for i, entry in enumerate(data["miners"]):
        driver, extra, efficiency, rated = FAMILIES[i % len(FAMILIES)]
        entry.update(driver=driver, efficiency_j_th=efficiency, rated_power_w=rated, **extra)
        entry["timeout_s"] = 2.0
        if driver == "antminer-stock":
            antminers.append(entry["id"])
    net = data["miners"][0]["host"].rsplit(".", 2)[0]
    data["pdus"] = [
        {
            "id": PDU,
            "host": f"{net}.250.1",
            "port": 1502,
            "map": "pdu-coil-24",
            "outlets": {n + 1: miner for n, miner in enumerate(antminers)},
        }
    ]
    data["escalation"] = {"lower_first": True, "pdu_interval_s": 0.5}
    data["control"]["wake_hold_after_shed_s"] = 5
    # The ladder alone: these restarts are judged by the sheds the ladder decided, and the
    # allocation would go on to swap miners once the deadline is met, restart or not
    # (tests/system/test_tuning.py restarts a retuned farm).
    data["tuning"] = {"enabled": False}
    return load_site(data)


def commands(r: Rig, *actions: str) -> list[tuple[str, str]]:
    marks = ",".join("?" * len(actions))
    rows = r.daemon.journal.rows(
        f"SELECT miner_id, action FROM commands WHERE action IN ({marks}) ORDER BY seq", actions
    )
    return [(str(m), str(a)) for m, a in rows]


def decided(r: Rig) -> dict[str, set[str]]:
    """Every miner each kind of action was decided for, over every decision journaled."""
    out: dict[str, set[str]] = {}
    for (seq,) in r.daemon.journal.rows("SELECT seq FROM decisions"):
        for miner, kind, _ in r.daemon.journal.decision_actions(int(seq)):
            out.setdefault(kind, set()).add(miner)
    return out


@pytest.mark.parametrize("kill_after_s", [0.0, 0.25, 1.0, 4.0, 15.0])
async def test_restart_mid_curtailment_resumes_the_ladder(
    tmp_path: Path, kill_after_s: float
) -> None:
    loaded = site(tmp_path)
    clock = FakeClock()
    farm = farm_from_config(loaded, clock.time)
    async with farm:
        async with daemon_on(loaded, clock, farm) as first:
            full_w = farm.total_power_w()
            limit_kw = round(full_w / 1000 * 0.45, 1)
            status, _ = await first.post(*first.signed(first.curtailment(limit_kw, deadline_s=10)))
            assert status == 202
            if kill_after_s:
                await first.step(kill_after_s, wait_idle=False)
            else:
                await asyncio.sleep(0.05)  # the first commands are on the wire
            first_decided = decided(first)
            assert first_decided.get("sleep") or first_decided.get("lower")
        # Dead: no flush, no goodbye. Back within two seconds.
        clock.advance(2)
        async with daemon_on(loaded, clock, farm) as second:
            await second.step(40, dt=0.5, wait_idle=False)
            assert second.sup.limit.limit_w == int(limit_kw * 1000)
            assert farm.total_power_w() <= limit_kw * 1000
            assert commands(second, *STEPS_BACK) == [], "woken while the curtailment holds"
            sheds = decided(second)
            for kind in ("sleep", "lower", "cut"):
                extra = sheds.get(kind, set()) - first_decided.get(kind, set())
                assert not extra, f"the restart added {kind} {sorted(extra)}"
            lowered = {v.spec.id for v in second.sup._readings.views() if v.lowered_at}
            if "lower" in first_decided and kill_after_s >= 1:
                assert lowered, "the lowered miners were forgotten"

            cancel = {"type": "cancel", "id": "evt-0017", "revision": 2}
            await second.post(*second.signed({**cancel, "issued_at": "2026-11-23T10:00:00Z"}))
            await second.run_until(
                lambda: farm.total_power_w() >= 0.97 * full_w,
                within_s=300,
                dt=1.0,
                wait_idle=False,
            )
            raised = {m for m, _ in commands(second, "raise")}
            assert lowered <= raised, "lowered miners stayed low after the cancel"


def resumed(r: Rig, first_seq: int) -> list[tuple[str, str, str]]:
    """Commands the restarted daemon sent or settled for decisions of an earlier run."""
    rows = r.daemon.journal.rows(
        "SELECT miner_id, action, outcome FROM commands WHERE decision_seq <= ? "
        "AND started_at < (SELECT max(at) FROM decisions) ORDER BY seq",
        (first_seq,),
    )
    return [(str(m), str(a), str(o)) for m, a, o in rows]


async def test_restart_with_commands_on_the_wire_carries_them_through_twice(
    tmp_path: Path,
) -> None:
    """Slow miners keep the first run's commands on the wire when it dies; the restart
    carries them through (counted as landed, not shed again), and a second death while
    it does so neither re-sends what had landed nor sheds anything new."""
    loaded = site(tmp_path)
    clock = FakeClock()
    farm = farm_from_config(loaded, clock.time)
    slow = [m.id for m in loaded.miners if m.driver in ("luxos", "antminer-stock")]
    async with farm:
        async with daemon_on(loaded, clock, farm) as first:
            full_w = farm.total_power_w()
            limit_kw = round(full_w / 1000 * 0.45, 1)
            for miner in slow:
                await farm.set_fault(miner, Fault.SLOW, slow_s=0.6)
            status, _ = await first.post(*first.signed(first.curtailment(limit_kw, deadline_s=10)))
            assert status == 202
            await asyncio.sleep(0.2)  # the sleeps are on the wire, none answered yet
            assert first.sup.ledger.in_flight > 0
            first_decided = decided(first)
            [(first_seq,)] = first.daemon.journal.rows("SELECT max(seq) FROM decisions")
        clock.advance(1)
        async with daemon_on(loaded, clock, farm, settle=False) as second:
            await asyncio.sleep(0.2)  # resumed, and on the wire again: die once more
            carried = second.sup.ledger.in_flight
        clock.advance(1)
        for miner in slow:
            await farm.set_fault(miner, Fault.NONE)
        async with daemon_on(loaded, clock, farm, settle=False) as third:
            # The dead runs' LuxOS write sessions would idle out after 60 s of the farm's
            # time; the restart releases them, so the sleeps land well before.
            await third.step(20, dt=0.5, wait_idle=False)
            assert all(m in third.asleep() for m in first_decided["sleep"])
            assert third.sup.limit.limit_w == int(limit_kw * 1000)
            assert farm.total_power_w() <= limit_kw * 1000
            assert commands(third, *STEPS_BACK) == [], "woken while the curtailment holds"
            sheds = decided(third)
            for kind in ("sleep", "lower", "cut"):
                extra = sheds.get(kind, set()) - first_decided.get(kind, set())
                assert not extra, f"a restart added {kind} {sorted(extra)}"
            settled = resumed(third, int(first_seq))
            assert settled, "nothing of the first run's was carried through"
            # Each of the first run's actions is settled once, by whichever run saw it.
            firsts = [(m, a) for m, a, _ in settled]
            assert len(firsts) == len(set(firsts)), settled
        assert carried > 0
