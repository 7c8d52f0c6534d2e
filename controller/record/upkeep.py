"""The daemon's care of its evidence, off the event loop: the journal's chain checked at
start and then incrementally (the dashboard shows whether it verifies), and rows older
than the retention window moved to the archive once a day."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from datetime import timedelta
from pathlib import Path

import structlog

from controller.clock import Clock
from controller.record.chain import ChainError, ChainStatus, ChainWatch
from controller.record.journal import Journal, JournalError
from controller.record.retention import archive_batch, default_archive

log = structlog.get_logger("curtaild.evidence")

CHECK_INTERVAL_S = 60.0  # the chain since the last check; a few rows, read in a thread
FULL_CHECK_EVERY = 1440  # checks: the whole chain again once a day
RETENTION_INTERVAL_S = 86_400.0


class Upkeep:
    def __init__(
        self,
        journal: Journal,
        clock: Clock,
        *,
        retention_days: int | None = None,
        archive_path: Path | None = None,
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._watch = ChainWatch(journal.path)
        self.retention_days = retention_days
        self.archive_path = archive_path or default_archive(journal.path)

    @property
    def chain(self) -> ChainStatus:
        """Whether the journal's chain verified at the last check (verified None: not yet)."""
        return self._watch.status

    async def check(self, *, full: bool = False) -> ChainStatus:
        """One check of the rows written since the last (all of them the first time and
        with `full`: an old row edited since is found by a full check)."""
        was = self._watch.status.verified
        status = await asyncio.to_thread(self._watch.check, self._clock.now(), full=full)
        if status.verified is False and was is not False:
            log.error("journal chain does not verify", problem=status.problem)
            self._event("chain", {"verified": False, "problem": status.problem})
        elif status.verified and was is False:
            log.warning("journal chain verifies again", rows=status.rows)
            self._event("chain", {"verified": True, "rows": status.rows})
        return status

    async def run_checks(self) -> None:
        try:
            for n in itertools.count(1):
                await self.check(full=n % FULL_CHECK_EVERY == 0)
                await self._clock.sleep(CHECK_INTERVAL_S)
        finally:
            self._watch.close()

    async def retain(self) -> int:
        """Move every row older than the window to the archive, a batch per thread call
        (the daemon's writes go in between); how many moved."""
        if self.retention_days is None:
            return 0
        now = self._clock.now()
        before = now - timedelta(days=self.retention_days)
        moved = 0
        try:
            while n := await asyncio.to_thread(
                archive_batch, self._journal.path, self.archive_path, before, now=now
            ):
                moved += n
        except (ChainError, sqlite3.Error, OSError) as err:
            log.exception("retention: nothing more archived", moved=moved)
            self._event("archive", {"moved": moved, "error": str(err)})
            return moved
        if moved:
            log.info("retention: archived", rows=moved, archive=str(self.archive_path))
            self._event("archive", {"moved": moved, "before": before.isoformat()})
        return moved

    async def run_retention(self) -> None:
        while True:
            await self.retain()
            await self._clock.sleep(RETENTION_INTERVAL_S)

    def _event(self, kind: str, detail: dict[str, object]) -> None:
        with contextlib.suppress(JournalError):  # an unwritable journal is reported already
            self._journal.record_event(self._clock.now(), kind, None, detail)
