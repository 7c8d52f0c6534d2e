"""The pools check's loop (controller/loop/pools.py) on a fake clock, a real journal and
fake drivers: hostile replies never stop a sweep, a reply with no pool is unknown, a
verdict that cannot be renewed goes stale into an alarm, a miner kept asleep that cannot
answer is released, and a sweep's events are journaled in one transaction."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.clock import FakeClock
from controller.core.pools import Enforce, approved_pool
from controller.loop.alarms import Alarms
from controller.loop.pools import STALE_CHECKS, UNCHECKED, PoolCheck
from controller.loop.telemetry import Activity
from controller.record.journal import Journal
from drivers.errors import ProtocolError, UnreachableError, UnsupportedError
from drivers.pools import cgminer_pools, rows_pools
from drivers.types import MinerDriver, PoolConfig

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
APPROVED = "stratum+tcp://pool.kz:3333"
ROGUE = "stratum+tcp://rogue.example:3333"
INTERVAL = 60.0


class Pools:
    """A driver whose pools read is whatever `reply` does."""

    def __init__(self, miner_id: str, reply: Callable[[], tuple[PoolConfig, ...]]) -> None:
        self.miner_id = miner_id
        self.reply = reply

    async def pools(self) -> tuple[PoolConfig, ...]:
        return self.reply()


def on(*urls: str) -> Callable[[], tuple[PoolConfig, ...]]:
    return lambda: tuple(PoolConfig(u, "farm.1", i) for i, u in enumerate(urls))


def fails(err: Exception) -> Callable[[], tuple[PoolConfig, ...]]:
    def reply() -> tuple[PoolConfig, ...]:
        raise err

    return reply


def check_of(
    tmp_path: Path, drivers: dict[str, Pools], enforce: Enforce = Enforce.ALARM
) -> tuple[PoolCheck, FakeClock, Journal, Alarms]:
    clock = FakeClock(NOW)
    journal = Journal(tmp_path / "journal.db")
    alarms = Alarms(journal)
    check = PoolCheck(
        drivers=dict[str, MinerDriver](drivers.items()),  # type: ignore[arg-type]
        approved=(approved_pool(APPROVED),),
        enforce=enforce,
        interval_s=INTERVAL,
        concurrency=2,
        timeouts=dict.fromkeys(drivers, 5.0),
        journal=journal,
        alarms=alarms,
        clock=clock,
        activity=Activity(),
    )
    return check, clock, journal, alarms


def pools_events(journal: Journal) -> list[tuple[str, dict[str, Any]]]:
    rows = journal.rows("SELECT subject, detail FROM events WHERE kind='pools' ORDER BY seq")
    return [(s, json.loads(d)) for s, d in rows]


async def test_hostile_replies_never_stop_the_sweep(tmp_path: Path) -> None:
    drivers = {
        "m1": Pools("m1", on("stratum+tcp://evil\ud800:3333")),
        "m2": Pools("m2", on("stratum+tcp://evil:³")),
        "m3": Pools("m3", on("stratum+tcp://evil:٣٣٣٣", "\udfff")),
        "m4": Pools("m4", lambda: (PoolConfig(APPROVED, "\ud800", 0),)),
        "m5": Pools("m5", on(APPROVED)),
    }
    check, _, journal, alarms = check_of(tmp_path, drivers)
    await check.sweep()
    view = check.view()
    assert view.checked == 5
    unapproved = {m for m, p in view.miners.items() if p.verdict and not p.verdict.approved}
    assert unapproved == {"m1", "m2", "m3"}  # m4's odd worker name: no prefix is asked
    # Kept escaped: what the journal, the API and the reports can encode.
    assert view.miners["m1"].verdict is not None
    assert view.miners["m1"].verdict.unapproved == ("stratum+tcp://evil\\ud800:3333",)
    # Every miner's verdict journaled (the journal takes what a miner sends, escaped).
    assert sorted(m for m, _ in pools_events(journal)) == ["m1", "m2", "m3", "m4", "m5"]
    assert {s for k, s in alarms.raised} == {"m1", "m2", "m3"}


async def test_a_sweeps_verdicts_are_one_transaction(tmp_path: Path) -> None:
    drivers = {f"m{i}": Pools(f"m{i}", on(APPROVED if i % 2 else ROGUE)) for i in range(6)}
    check, _, journal, _ = check_of(tmp_path, drivers)
    calls: list[int] = []
    record_events = journal.record_events

    def counted(events: Any) -> None:
        calls.append(len(events))
        record_events(events)

    journal.record_events = counted  # type: ignore[method-assign]
    await check.sweep()
    assert calls == [6]
    assert len(pools_events(journal)) == 6


async def test_a_reply_listing_no_pool_is_unknown_and_unchecked(tmp_path: Path) -> None:
    drivers = {"m1": Pools("m1", on()), "m2": Pools("m2", on(APPROVED))}
    check, _, journal, alarms = check_of(tmp_path, drivers)
    await check.sweep()
    state = check.view().miners["m1"]
    assert state.verdict is None
    assert state.error is not None
    assert "no pool" in state.error
    assert check.view().checked == 1
    assert (UNCHECKED, "m1") in alarms.raised
    assert pools_events(journal)[0] == (
        "m1",
        {"approved": None, "reason": state.error, "pools": [], "unapproved": [],
         "action": "none"},
    )  # fmt: skip
    # Said once, not every sweep.
    await check.sweep()
    assert [m for m, _ in pools_events(journal)].count("m1") == 1
    # A reply with pools again: judged, the alarm cleared.
    drivers["m1"].reply = on(APPROVED)
    await check.sweep()
    assert check.view().miners["m1"].verdict is not None
    assert (UNCHECKED, "m1") not in alarms.raised


async def test_a_verdict_that_cannot_be_renewed_goes_stale(tmp_path: Path) -> None:
    drivers = {"m1": Pools("m1", on(APPROVED))}
    check, clock, _, alarms = check_of(tmp_path, drivers)
    await check.sweep()
    assert check.view().miners["m1"].verdict is not None
    drivers["m1"].reply = fails(UnsupportedError("m1", "pools", "firmware updated"))
    for _ in range(STALE_CHECKS - 1):
        clock.advance(INTERVAL)
        await check.sweep()
        assert check.view().miners["m1"].verdict is not None  # a while: it stands
    assert (UNCHECKED, "m1") not in alarms.raised
    clock.advance(INTERVAL)
    await check.sweep()
    state = check.view().miners["m1"]
    assert state.verdict is None
    assert check.view().checked == 0
    detail = alarms.raised[(UNCHECKED, "m1")][1]
    assert "last seen approved" in detail


async def test_a_miner_kept_asleep_that_cannot_answer_is_released(tmp_path: Path) -> None:
    drivers = {"m1": Pools("m1", on(ROGUE)), "m2": Pools("m2", on(APPROVED))}
    check, clock, journal, alarms = check_of(tmp_path, drivers, Enforce.SLEEP)
    replans: list[int] = []
    check.on_change = lambda: replans.append(1)
    await check.sweep()
    assert set(check.kept_asleep()) == {"m1"}
    assert len(replans) == 1
    # Asleep, its firmware cannot answer (btminer stopped): kept for a while, not forever.
    drivers["m1"].reply = fails(UnreachableError("m1", "pools", "connection refused"))
    for _ in range(STALE_CHECKS - 1):
        clock.advance(INTERVAL)
        await check.sweep()
        assert set(check.kept_asleep()) == {"m1"}
    clock.advance(INTERVAL)
    await check.sweep()
    assert check.kept_asleep() == {}
    assert len(replans) == 2  # the loop plans again: m1 is back in the normal plan
    detail = alarms.raised[(UNCHECKED, "m1")][1]
    assert "unapproved pool (stratum+tcp://rogue.example:3333)" in detail
    assert "released to the normal plan" in detail
    assert ("unapproved-pool", "m1") not in alarms.raised
    assert pools_events(journal)[-1][1]["action"] == "released to the normal plan"
    # Running, it answers: still the rogue pool, so it is kept asleep again.
    drivers["m1"].reply = on(ROGUE)
    clock.advance(INTERVAL)
    await check.sweep()
    assert set(check.kept_asleep()) == {"m1"}
    assert (UNCHECKED, "m1") not in alarms.raised
    assert len(replans) == 3


def test_a_pools_reply_in_another_layout_is_a_protocol_error_not_no_pools() -> None:
    status = [{"STATUS": "S"}]
    lower = {"STATUS": status, "POOLS": [{"url": ROGUE, "User": "x", "Status": "Alive"}]}
    with pytest.raises(ProtocolError, match="no pool row has a 'URL' field"):
        cgminer_pools(lower, device="m1")
    with pytest.raises(ProtocolError, match="no pool row has a 'address' field"):
        rows_pools([{"url": ROGUE}], device="m1", op="pools", url="address")
    # Empty slots are still empty slots: no pool, which the check calls unknown.
    empty = {"STATUS": status, "POOLS": [{"URL": "", "User": "", "Status": "Dead"}]}
    assert cgminer_pools(empty, device="m1") == ()
    surrogate = {"STATUS": status, "POOLS": [{"URL": "stratum+tcp://e\ud800:1", "User": "u"}]}
    assert cgminer_pools(surrogate, device="m1")[0].url == "stratum+tcp://e\\ud800:1"
