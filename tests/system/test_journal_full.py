"""The journal cannot be written: curtaild commands nothing it cannot journal first, holds
what it holds, says so, and resumes when the journal takes writes again.

Here SQLite's `query_only` makes every write fail, as a file system remounted read-only
does; a full disk (SQLITE_FULL) takes the same path (tests/unit/test_journal.py), and
bench/chaos fills a real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.core.signals import ObligationStatus
from drivers.types import Mode
from tests.conftest import load_site, site_dict
from tests.system.harness import Rig, rig

pytestmark = pytest.mark.system


def journal_error(r: Rig) -> str | None:
    error: str | None = r.daemon.journal.error
    return error


def unwritable(r: Rig) -> None:
    r.daemon.journal.rows("PRAGMA query_only=ON")


def writable(r: Rig) -> None:
    r.daemon.journal.rows("PRAGMA query_only=OFF")


async def test_an_unwritable_journal_commands_nothing_and_holds_the_curtailment(
    tmp_path: Path,
) -> None:
    async with rig(load_site(site_dict(tmp_path, miners=12))) as r:
        limit_kw = round(r.farm.total_power_w() / 1000 * 0.4, 1)
        assert (await r.post(*r.signed(r.curtailment(limit_kw))))[0] == 202
        ob = await r.settled("evt-0017#r1", within_s=15)
        assert ob.status is ObligationStatus.REACHED
        await r.step(2)
        asleep = r.asleep()
        held = r.daemon.inbox.book

        unwritable(r)
        # A refused signal is still answered, though it cannot be journaled.
        status, problem = await r.post(*r.signed(r.curtailment(-1, signal_id="evt-bad")))
        assert status == 400
        assert journal_error(r) is not None
        # The cancel that would wake the farm cannot be journaled: refused, nothing moves.
        cancel = {"type": "cancel", "id": "evt-0017", "revision": 2}
        status, problem = await r.post(*r.signed({**cancel, "issued_at": "2026-11-23T10:00Z"}))
        assert status == 503
        assert "journal unavailable" in problem["detail"]
        assert r.daemon.inbox.book is held
        assert journal_error(r) is not None

        # Someone wakes a sleeping miner by hand: the plan to sleep it again cannot be
        # journaled, so it is not sent; nothing else moves either.
        sent = r.sup.commands_sent
        woken = min(asleep)
        r.farm.miners[woken].device.reset(Mode.MINING)  # firmware and hardware both
        await r.step(20)
        assert r.daemon._task is not None
        assert not r.daemon._task.done()  # the daemon runs on
        assert r.sup.commands_sent == sent
        assert r.asleep() == asleep - {woken}
        status_doc = r.daemon.recorder.latest_status
        assert status_doc is not None
        assert status_doc["journal"]["writable"] is False

        writable(r)
        await r.run_until(lambda: woken in r.asleep(), within_s=20)
        assert journal_error(r) is None
        assert r.asleep() >= asleep
        assert r.daemon.recorder.latest_status is not None
        await r.step(2)
        assert r.daemon.recorder.latest_status["journal"]["writable"] is True
