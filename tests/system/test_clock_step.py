"""The wall clock steps an hour mid-curtailment: the deadline is judged on curtaild's own
steady time, the grant's end too, and the step is said, journaled and shown.

The FakeClock is the daemon's steady time; its `wall_step_s` is the system's wall clock
stepping away from it (SystemClock's own behaviour is in tests/unit/test_telemetry.py;
bench/chaos steps a real process's wall clock with libfaketime)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from controller.core.signals import ObligationStatus
from tests.conftest import load_site, site_dict
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
