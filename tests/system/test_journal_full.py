"""The journal cannot be written: curtaild accepts nothing it cannot journal, loosens
nothing, keeps enforcing the limits the journal already holds (a miner woken by hand is
put back to sleep, journaled once it can be), says so, and resumes when the journal
takes writes again.

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
    # The ladder alone: a retuned fleet would meet the hand-woken miner by lowering the
    # tuned ones (a shed too, as unjournaled), and this is about what the journal holds up.
    data = site_dict(tmp_path, miners=12, tuning={"enabled": False})
    async with rig(load_site(data)) as r:
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

        # Someone wakes a sleeping miner by hand, over the held limit: it is put back to
        # sleep at once, though the decision cannot be journaled yet; nothing else moves.
        sent = r.sup.ledger.sent
        woken = min(asleep)
        r.farm.miners[woken].device.reset(Mode.MINING)  # firmware and hardware both
        await r.run_until(lambda: woken in r.asleep(), within_s=20)
        await r.step(10)
        assert r.daemon._task is not None
        assert not r.daemon._task.done()  # the daemon runs on
        assert r.asleep() == asleep
        assert r.sup.ledger.sent == sent + 1  # that one sleep, and no wake
        assert journal_error(r) is not None
        status_doc = r.daemon.recorder.latest_status
        assert status_doc is not None
        assert status_doc["journal"]["writable"] is False
        assert status_doc["measured_kw"] <= limit_kw  # the draw is still measured
        late = r.daemon.journal.rows("SELECT count(*) FROM decisions WHERE cause LIKE '%late%'")
        assert late == [(0,)]

        writable(r)
        await r.step(2)
        assert journal_error(r) is None
        status_doc = r.daemon.recorder.latest_status
        assert status_doc is not None
        assert status_doc["journal"]["writable"] is True
        # The sleep it sent meanwhile is journaled now, with its result.
        [(seq, count)] = r.daemon.journal.rows(
            "SELECT seq, action_count FROM decisions WHERE cause LIKE '%journaled late%'"
        )
        assert count == 1
        assert r.daemon.journal.decision_actions(seq)[0][:2] == (woken, "sleep")
        rows = r.daemon.journal.rows(
            "SELECT outcome FROM commands WHERE miner_id=? AND action='sleep' ORDER BY seq DESC",
            (woken,),
        )
        assert rows[0] == ("ok",)
        # And the cancel, sent again by the grid, is taken now.
        status, _ = await r.post(*r.signed({**cancel, "issued_at": "2026-11-23T10:00Z"}))
        assert status == 202
