"""Approved pools against the real daemon and its simulated farm: a miner moved to an
unapproved pool while it runs is flagged (a `pools` event in the journal, an alarm,
/api/v1/miners and /api/v1/status, /metrics), and under `enforce: sleep` it is put to
sleep and stays so until its pools are fixed, then wakes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sim.pools import SimPool
from tests.conftest import api_section, load_site, site_dict
from tests.system.harness import Rig, rig
from tests.system.test_metrics import scrape
from tests.system.test_operator_api import Api

pytestmark = pytest.mark.system

APPROVED = "stratum+tcp://pool.example:3333"
ROGUE = "stratum+tcp://unlisted-pool.example:3333"
CHECK_S = 10


@asynccontextmanager
async def pools_rig(tmp_path: Path, enforce: str) -> AsyncIterator[tuple[Rig, Api]]:
    pools = {
        "approved": [{"url": APPROVED, "users": ["farm."]}],
        "enforce": enforce,
        "check_interval_s": CHECK_S,
    }
    loaded = load_site(site_dict(tmp_path, miners=4, api=api_section(), pools=pools))
    async with (
        rig(loaded) as r,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
    ):
        assert r.daemon.api is not None
        assert r.daemon.api.port is not None
        yield r, Api(session, r.daemon.api.port)


def pools_events(r: Rig) -> list[dict[str, Any]]:
    rows = r.daemon.journal.rows("SELECT subject, detail FROM events WHERE kind='pools'")
    return [{"miner": s, **json.loads(d)} for s, d in rows]


def alarm_events(r: Rig) -> list[tuple[str, str, str]]:
    rows = r.daemon.journal.rows(
        "SELECT kind, subject, detail FROM events WHERE kind IN ('alarm', 'alarm-cleared')"
    )
    return [(k, s, d) for k, s, d in rows]


async def miners(api: Api) -> dict[str, dict[str, Any]]:
    status, out, _ = await api.call("GET", "/api/v1/miners")
    assert status == 200, out
    return {m["id"]: m for m in out["miners"]}


def unapproved_metric(r: Rig) -> dict[str, float]:
    assert r.daemon.metrics is not None
    samples = scrape(r.daemon.metrics)["curtaild_miners_unapproved_pools"]
    return {labels["action"]: value for labels, value in samples}


async def next_check(r: Rig) -> None:
    """Logical time up to and past the next pools check, and the read model built after
    it (once per status interval)."""
    pools = r.daemon.pools
    assert pools is not None
    sweeps = pools.sweeps
    await r.run_until(lambda: pools.sweeps > sweeps, within_s=CHECK_S + 2)
    await r.step(1.5)


async def test_system_a_miner_moved_to_an_unapproved_pool_is_flagged(tmp_path: Path) -> None:
    async with pools_rig(tmp_path, "alarm") as (r, api):
        # The first check, at start: every miner journaled once, all approved.
        await r.step(1.5)
        first = pools_events(r)
        assert sorted(e["miner"] for e in first) == ["m000", "m001", "m002", "m003"]
        assert all(e["approved"] and e["action"] == "none" for e in first)
        assert all(m["pools_ok"] is True for m in (await miners(api)).values())
        assert unapproved_metric(r) == {"alarm": 0}
        # Someone points m001 at a pool the state has not approved, as a failover.
        r.farm.set_pools("m001", [SimPool(APPROVED, "farm.1"), SimPool(ROGUE, "farm.1")])
        await next_check(r)
        (event,) = pools_events(r)[4:]
        assert event == {
            "miner": "m001",
            "approved": False,
            "pools": [
                {"url": APPROVED, "user": "farm.1", "active": True},
                {"url": ROGUE, "user": "farm.1", "active": False},
            ],
            "unapproved": [ROGUE],
            "action": "alarm",
        }
        found = await miners(api)
        assert [m for m, out in found.items() if out["pools_ok"] is False] == ["m001"]
        flagged = found["m001"]["pools"]
        assert (flagged["unapproved"], flagged["action"]) == ([ROGUE], "alarm")
        assert [p["approved"] for p in flagged["pools"]] == [True, False]
        _, status, _ = await api.call("GET", "/api/v1/status")
        assert status["pools"] == {"action": "alarm", "checked": 4, "unapproved": 1, "unchecked": 0}
        assert [(a["kind"], a["subject"]) for a in status["alarms"]] == [
            ("unapproved-pool", "m001")
        ]
        assert unapproved_metric(r) == {"alarm": 1}
        assert r.asleep() == set()  # an alarm, nothing more
        # Checked again unchanged: nothing new is journaled.
        await next_check(r)
        assert len(pools_events(r)) == 5
        # Fixed: journaled as approved, the alarm cleared.
        r.farm.set_pools("m001", [SimPool(APPROVED, "farm.1")])
        await next_check(r)
        assert pools_events(r)[-1] | {"pools": None} == {
            "miner": "m001",
            "approved": True,
            "pools": None,
            "unapproved": [],
            "action": "none",
        }
        assert [(k, s) for k, s, _ in alarm_events(r)] == [
            ("alarm", "m001"),
            ("alarm-cleared", "m001"),
        ]
        assert (await miners(api))["m001"]["pools_ok"] is True
        assert unapproved_metric(r) == {"alarm": 0}
        _, status, _ = await api.call("GET", "/api/v1/status")
        assert status["alarms"] == []


async def test_system_enforce_sleep_keeps_a_miner_asleep_until_its_pools_are_fixed(
    tmp_path: Path,
) -> None:
    async with pools_rig(tmp_path, "sleep") as (r, api):
        assert r.asleep() == set()
        r.farm.set_pools("m002", [SimPool(ROGUE, "farm.2")])
        await next_check(r)
        await r.run_until(lambda: r.asleep() == {"m002"}, within_s=10)
        assert pools_events(r)[-1]["action"] == "sleep"
        assert unapproved_metric(r) == {"sleep": 1}
        # Journaled as the pools rule's, not an operator's: no operator event, and the
        # decision that slept it says why.
        assert r.daemon.journal.rows("SELECT 1 FROM events WHERE kind='operator'") == []
        journal = r.daemon.journal
        actions = [
            a
            for (seq,) in journal.rows("SELECT seq FROM decisions")
            for a in journal.decision_actions(seq)
        ]
        assert [(m, k) for m, k, why in actions if "unapproved pool" in why] == [("m002", "sleep")]
        # It stays asleep through more checks and ticks, though the limit has room.
        await r.step(2 * CHECK_S)
        assert r.asleep() == {"m002"}
        assert (await miners(api))["m002"]["mode"] == "sleeping"
        # Fixed: the next check finds it approved, and it wakes under the wake rules.
        r.farm.set_pools("m002", [SimPool(APPROVED, "farm.2")])
        await next_check(r)
        await r.run_until(lambda: r.asleep() == set(), within_s=15)
        assert pools_events(r)[-1]["approved"] is True
        assert unapproved_metric(r) == {"sleep": 0}
        assert (await miners(api))["m002"]["pools_ok"] is True


async def test_system_hostile_pool_urls_do_not_stop_the_check(tmp_path: Path) -> None:
    """Miners reporting a superscript port, Arabic-Indic digits, a lone surrogate or no
    pool at all: each ends in a verdict (or unknown), the check goes on sweeping, and the
    daemon keeps answering."""
    async with pools_rig(tmp_path, "alarm") as (r, api):
        await r.step(1.5)
        r.farm.set_pools("m000", [SimPool("stratum+tcp://pool.example:³", "farm.0")])
        r.farm.set_pools("m001", [SimPool("stratum+tcp://pool.example:٣٣٣٣", "farm.1")])
        r.farm.set_pools("m002", [SimPool("stratum+tcp://evil\ud800:3333", "farm.\udfff")])
        r.farm.set_pools("m003", [])
        await next_check(r)
        await next_check(r)  # and the sweep after it
        found = await miners(api)
        assert [found[m]["pools_ok"] for m in ("m000", "m001", "m002", "m003")] == [
            False,
            False,
            False,
            None,  # no pool reported: unknown, not approved
        ]
        _, status, _ = await api.call("GET", "/api/v1/status")
        assert (status["pools"]["checked"], status["pools"]["unapproved"]) == (3, 3)
        assert {(a["kind"], a["subject"]) for a in status["alarms"]} == {
            ("unapproved-pool", "m000"),
            ("unapproved-pool", "m001"),
            ("unapproved-pool", "m002"),
            ("pools-unchecked", "m003"),
        }
        events = {e["miner"]: e for e in pools_events(r)[4:]}
        assert events["m002"]["unapproved"] == ["stratum+tcp://evil\\ud800:3333"]
        assert events["m003"]["approved"] is None
