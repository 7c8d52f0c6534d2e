"""A signed curtailment over HTTP and over MQTT brings the simulated farm under the limit
before the deadline, on logical time; a restart mid-curtailment resumes from the journal."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest

from controller.adapters.mqtt_signals import GridSide
from controller.clock import FakeClock
from controller.core.signals import ObligationStatus
from demo.farm import farm_from_config
from drivers.types import Mode
from sim.faults import Fault
from tests.conftest import Broker, load_site, site_dict
from tests.system.harness import daemon_on, rig

pytestmark = pytest.mark.system


async def test_system_http_curtailment_meets_its_deadline(tmp_path: Path) -> None:
    loaded = load_site(site_dict(tmp_path, miners=24))
    async with rig(loaded) as r:
        draw_kw = r.sup.draw.measured_w / 1000
        assert draw_kw == pytest.approx(sum(m.rated_power_w for m in loaded.miners) / 1000)
        limit_kw = round(draw_kw * 0.4, 1)
        status, reply = await r.post(*r.signed(r.curtailment(limit_kw)))
        assert (status, reply["status"]) == (202, "received")
        sent = r.clock.now()
        ob = await r.settled("evt-0017#r1", within_s=15)
        took = (r.clock.now() - sent).total_seconds()
        assert ob.status is ObligationStatus.REACHED
        assert ob.time_to_target_s is not None
        assert ob.time_to_target_s <= 10.0
        assert took <= 10.0
        assert r.farm.total_power_w() <= limit_kw * 1000  # the simulator's truth agrees
        # The least efficient miners went to sleep; the most efficient kept mining.
        by_eff = {m.id: m.efficiency_j_th for m in loaded.miners}
        asleep = r.asleep()
        assert asleep
        assert min(by_eff[m] for m in asleep) >= max(by_eff[m] for m in by_eff if m not in asleep)
        acks = [(a.signal_id, a.status) for a in r.daemon.recorder.acks]
        assert acks == [("evt-0017", "received"), ("evt-0017", "reached")]


async def test_system_decision_is_journaled_before_its_commands(tmp_path: Path) -> None:
    loaded = load_site(site_dict(tmp_path, miners=8))
    async with rig(loaded) as r:
        await r.post(*r.signed(r.curtailment(10)))
        await r.step(2)
        journal = r.daemon.journal
        [(seq, decided)] = journal.rows("SELECT seq, at FROM decisions WHERE cause='signal'")
        actions = journal.decision_actions(seq)
        commands = journal.rows("SELECT decision_seq, started_at, outcome FROM commands")
        assert len(commands) == len(actions) > 0
        assert {kind for _, kind, _ in actions} == {"sleep"}
        assert {c[0] for c in commands} == {seq}
        assert all(
            datetime.fromisoformat(c[1]) >= datetime.fromisoformat(decided) for c in commands
        )
        assert {c[2] for c in commands} == {"ok"}
        [signal_row] = journal.rows("SELECT seq, verdict FROM signals")
        assert signal_row[1] == "received"


async def test_system_mqtt_curtailment_meets_its_deadline(tmp_path: Path, broker: Broker) -> None:
    loaded = load_site(site_dict(tmp_path, miners=16, mqtt_port=broker.port, http=False))
    async with rig(loaded) as r:
        assert r.daemon.mqtt is not None
        await asyncio.wait_for(r.daemon.mqtt.connected.wait(), 10)
        async with GridSide(
            "127.0.0.1", broker.port, site_id="test-site", client_id="grid-test-1"
        ) as grid:
            limit_kw = round(r.sup.draw.measured_w / 1000 * 0.5, 1)
            await grid.publish(r.sealed(r.curtailment(limit_kw)))
            assert (await grid.wait_ack("evt-0017", 1))["status"] == "received"
            waiting = asyncio.create_task(grid.wait_ack("evt-0017", 1, "reached", timeout_s=30))
            took = await r.run_until(waiting.done, within_s=10)
            ack = await waiting
            assert took <= 10.0
            assert "(firmware)" in ack["detail"]
            assert r.farm.total_power_w() <= limit_kw * 1000
            await r.step(1.5)  # the retained status is published once a second
            await asyncio.sleep(0.2)
            assert grid.status is not None
            assert grid.status["state"] == "online"
            assert grid.status["limit_kw"] == limit_kw


async def test_system_mqtt_reconnects_and_resubscribes(tmp_path: Path, own_broker: Broker) -> None:
    loaded = load_site(site_dict(tmp_path, miners=4, mqtt_port=own_broker.port, http=False))
    async with rig(loaded) as r:
        mqtt = r.daemon.mqtt
        assert mqtt is not None
        await asyncio.wait_for(mqtt.connected.wait(), 10)
        own_broker.stop()
        await asyncio.sleep(0.5)
        own_broker.start()
        async with asyncio.timeout(20):
            while mqtt.connects < 2 or not mqtt.connected.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        async with GridSide(
            "127.0.0.1", own_broker.port, site_id="test-site", client_id="grid-test-2"
        ) as grid:
            await grid.publish(r.sealed(r.curtailment(1)))
            assert (await grid.wait_ack("evt-0017", 1))["status"] == "received"


async def test_system_restart_mid_curtailment_restores_and_wakes_nothing(tmp_path: Path) -> None:
    # The ladder alone: with the allocation on, the held limit would be re-allocated once
    # its deadline is met, restart or not (tests/system/test_tuning.py restarts that).
    loaded = load_site(site_dict(tmp_path, miners=12, tuning={"enabled": False}))
    clock = FakeClock()
    farm = farm_from_config(loaded, clock.time)
    async with farm:
        async with daemon_on(loaded, clock, farm) as first:
            limit_kw = round(first.sup.draw.measured_w / 1000 * 0.3, 1)
            await first.post(*first.signed(first.curtailment(limit_kw, deadline_s=10)))
            await first.run_until(lambda: bool(first.sup.deadlines.finished), within_s=10)
            asleep = first.asleep()
            assert asleep
        # The daemon is gone; time passes; the farm keeps sleeping (LuxOS sleep persists).
        clock.advance(30)
        async with daemon_on(loaded, clock, farm) as second:
            assert "evt-0017" in second.daemon.inbox.book.held
            assert second.sup.limit.limit_w == int(limit_kw * 1000)
            await second.step(40)
            assert second.asleep() == asleep
            wakes = second.daemon.journal.rows("SELECT count(*) FROM commands WHERE action='wake'")
            assert wakes == [(0,)]
            assert farm.total_power_w() <= limit_kw * 1000


async def test_system_cancel_restores_the_farm_at_a_bounded_rate(tmp_path: Path) -> None:
    data = site_dict(tmp_path, miners=30)
    data["control"].update(wake_max_per_s=4, wake_hold_after_shed_s=2)
    loaded = load_site(data)
    async with rig(loaded) as r:
        await r.post(*r.signed(r.curtailment(5)))
        await r.run_until(lambda: len(r.asleep()) == 30, within_s=10)
        status, _ = await r.post(
            *r.signed(
                {
                    "type": "cancel",
                    "id": "evt-0017",
                    "revision": 2,
                    "issued_at": "2026-11-23T10:00:00Z",
                }
            )
        )
        assert status == 202
        woken_per_second = []
        for _ in range(12):
            before = len(r.asleep())
            await r.step(1, dt=0.25)
            woken_per_second.append(before - len(r.asleep()))
        assert max(woken_per_second) <= 4
        assert sum(woken_per_second) == 30
        assert r.asleep() == set()


async def test_system_unhealthy_miners_count_at_rated_power(tmp_path: Path) -> None:
    data = site_dict(tmp_path, miners=10, faults={"m003": "garbage", "m007": "stall"})
    loaded = load_site(data)
    async with rig(loaded) as r:
        await r.step(3)
        views = {v.spec.id: v for v in r.daemon.readings.views()}
        assert not views["m003"].healthy
        assert views["m003"].health_reason is not None
        assert views["m003"].health_reason.startswith("protocol: unparseable reply")
        assert views["m007"].health_reason is not None
        assert views["m007"].health_reason.startswith("timeout:")
        assert all(views[m].healthy for m in views if m not in ("m003", "m007"))
        status = r.status()
        assert status["miners"]["unhealthy"] == 2
        assert status["miners"]["unknown"] == 2
        # Unknown miners are counted at rated power even though they may be drawing less.
        expected = sum(m.rated_power_w for m in loaded.miners)
        assert r.sup.draw.measured_w == expected


async def test_system_lying_miner_is_reported_and_others_cover_for_it(tmp_path: Path) -> None:
    loaded = load_site(site_dict(tmp_path, miners=8, faults={"m003": "lie"}, efficiencies=(30.0,)))
    async with rig(loaded) as r:
        limit_kw = round(r.sup.draw.measured_w / 1000 * 0.5, 1)
        await r.post(*r.signed(r.curtailment(limit_kw)))
        await r.run_until(lambda: bool(r.sup.deadlines.finished), within_s=10)
        assert r.sup.deadlines.finished[0].status is ObligationStatus.REACHED
        assert r.farm.miners["m003"].physics.mode is Mode.MINING
        lying = r.daemon.readings.view("m003")
        assert lying.health_reason is not None
        assert lying.health_reason.startswith("lying:")
        outcomes = r.daemon.journal.rows("SELECT outcome FROM commands WHERE miner_id='m003'")
        assert ("lying",) in outcomes
        assert r.farm.total_power_w() <= limit_kw * 1000


async def test_system_grant_end_brings_the_farm_under_the_base_allowance(tmp_path: Path) -> None:
    data = site_dict(
        tmp_path,
        miners=10,
        mode="surplus-only",
        base_allowance_kw=3.5,
        start_mode="sleeping",
        margin_kw=0.5,
    )
    data["grid"]["grant_end_lead_s"] = 10
    loaded = load_site(data)
    async with rig(loaded) as r:
        assert r.sup.limit.limit_w == 3500
        await r.post(*r.signed(r.grant(40, end_in_s=40)))
        await r.run_until(lambda: not r.asleep(), within_s=15)
        ob = await r.settled("korem-h10#r1#end", within_s=45)
        assert ob.status is ObligationStatus.REACHED
        assert ob.reached_at is not None
        assert ob.reached_at <= ob.due_at
        assert r.farm.total_power_w() <= 3500


async def test_system_faulty_miner_does_not_hold_up_the_fleet(tmp_path: Path) -> None:
    loaded = load_site(
        site_dict(
            tmp_path, miners=12, efficiencies=(34.0,), faults={"m000": "refuse", "m001": "stall"}
        )
    )
    async with rig(loaded) as r:
        await r.post(*r.signed(r.curtailment(2)))
        await r.run_until(lambda: len(r.asleep()) >= 10, within_s=5)
        assert r.farm.miners["m000"].fault.mode is Fault.REFUSE
