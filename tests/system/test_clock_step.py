"""The wall clock steps an hour mid-curtailment: the deadline is judged on curtaild's own
steady time, the grant's end too, and the step is said, journaled and shown.

The FakeClock is the daemon's steady time; its `wall_step_s` is the system's wall clock
stepping away from it (SystemClock's own behaviour is in tests/unit/test_telemetry.py;
bench/chaos steps a real process's wall clock with libfaketime)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.core.signals import ObligationStatus
from controller.intake import wire
from tests.conftest import KEY, load_site, site_dict
from tests.system.harness import rig

pytestmark = pytest.mark.system


@pytest.mark.parametrize("step_s", [3600.0, -3600.0])
async def test_a_wall_clock_step_moves_no_deadline_or_grant(tmp_path: Path, step_s: float) -> None:
    data = site_dict(tmp_path, miners=12, mode="surplus-only", base_allowance_kw=1.0)
    data["grid"]["grant_end_lead_s"] = 10
    async with rig(load_site(data)) as r:
        full_kw = 12 * 3.2
        granted_at = r.clock.now()
        assert (await r.post(*r.signed(r.grant(full_kw * 2, end_in_s=120))))[0] == 202
        await r.step(30)
        limit_kw = round(r.farm.total_power_w() / 1000 * 0.5, 1)
        assert (await r.post(*r.signed(r.curtailment(limit_kw, deadline_s=10))))[0] == 202
        await r.step(1)
        r.clock.wall_step_s = step_s  # someone runs `date -s`
        ob = await r.settled("evt-0017#r1", within_s=15)
        assert ob.status is ObligationStatus.REACHED
        assert ob.time_to_target_s is not None
        assert ob.time_to_target_s <= 10
        status = r.daemon.recorder.latest_status
        assert status is not None
        assert status["wall_clock_offset_s"] == round(step_s)
        events = r.daemon.journal.rows("SELECT subject, detail FROM events WHERE kind='clock'")
        assert events == [("stepped", f'{{"offset_s": {step_s}}}')]
        # The grant still ends 120 s after it began on curtaild's time: the farm is at its
        # base allowance by then, not an hour early or late.
        end = await r.settled("korem-h10#r1#end", within_s=100, dt=1.0)
        assert end.status is ObligationStatus.REACHED
        assert end.due_at == granted_at + timedelta(seconds=120)
        assert r.farm.total_power_w() <= 1000
        r.clock.wall_step_s = 0.0
        await r.step(1)
        status = r.daemon.recorder.latest_status
        assert status is not None
        assert status["wall_clock_offset_s"] is None


async def test_signals_are_judged_by_the_wall_clock_the_grid_signs_with(tmp_path: Path) -> None:
    """A box that booted slow and was then synchronized: the grid's signatures carry the
    synchronized time, and are taken; a synchronized step that lasts is adopted by a
    restart, with the ladder's times carried across it."""
    async with rig(load_site(site_dict(tmp_path, miners=6))) as r:
        r.clock.wall_step_s = 120.0  # NTP put the wall clock two minutes on
        await r.step(1)
        body = json.dumps(r.curtailment(10.0)).encode()
        ts = int(r.clock.wall_time())  # the grid's synchronized clock
        headers = {wire.TIMESTAMP_HEADER: str(ts), wire.SIGNATURE_HEADER: wire.sign(KEY, ts, body)}
        status, _ = await r.post(body, headers)
        assert status == 202
        stale = int(r.clock.time())  # our own steady time is two minutes behind the grid's
        headers = {
            wire.TIMESTAMP_HEADER: str(stale),
            wire.SIGNATURE_HEADER: wire.sign(KEY, stale, body),
        }
        status, problem = await r.post(body, headers)
        assert status == 401
        assert "replay window" in problem["detail"]

        await r.step(70)
        assert not r.sup.restart_wanted.is_set()  # the system does not say it is synced
        r.clock.wall_synced = True
        await r.step(2)
        assert r.sup.restart_wanted.is_set()
        assert r.sup.restart_reason == "adopting the synchronized wall clock (+120 s)"
        assert r.daemon.journal.site_state()["clock"] == {"adopted_s": 120.0}


def test_restored_ladder_times_move_with_an_adopted_clock_and_never_lie_ahead() -> None:
    from controller.loop.telemetry import Readings  # noqa: PLC0415 - the unit under test
    from tests.unit.test_telemetry import SPEC  # noqa: PLC0415

    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    before = (now - timedelta(minutes=3)).isoformat()
    ahead = (now + timedelta(minutes=30)).isoformat()
    readings = Readings({"m1": SPEC, "m2": SPEC})
    readings.restore_ladder(
        {"m1": {"cut_at": before}, "m2": {"cut_at": ahead, "lowered_at": ahead}},
        now,
        timedelta(minutes=5),
        shift=timedelta(minutes=2),
    )
    assert readings.view("m1").cut_at == now - timedelta(minutes=1)  # carried two minutes on
    assert readings.view("m2").cut_at == now  # a time ahead of now is now
    assert readings.view("m2").lowered_at == now
