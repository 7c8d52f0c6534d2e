"""The operator API against the running daemon and its simulated farm: every endpoint and
role, overrides that shed the farm, holds, pause and resume, the journal's record of who
did what and why, and bad input that changes nothing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.adapters.operator_api.routes import ROUTES
from controller.clock import FakeClock
from controller.record.compliance import ComplianceError
from demo.farm import farm_from_config
from drivers.types import Mode
from tests.conftest import API_TOKENS, api_section, load_site, site_dict
from tests.energy_samples import FixedCompliance
from tests.system.harness import Rig, daemon_on, iso, rig

pytestmark = pytest.mark.system


class Api:
    """A client for one daemon's operator API."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"

    async def call(
        self,
        method: str,
        path: str,
        *,
        role: str | None = "viewer",
        token: str | None = None,
        body: Any = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {}
        if token is None and role is not None:
            token = API_TOKENS[role]
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        async with self.session.request(method, self.base + path, data=data, headers=headers) as r:
            text = await r.text()
            kind = r.headers.get("Content-Type", "")
            parsed = json.loads(text) if "json" in kind and text else text
            return r.status, parsed, r


@asynccontextmanager
async def api_rig(tmp_path: Path, **kw: Any) -> AsyncIterator[tuple[Rig, Api]]:
    loaded = load_site(site_dict(tmp_path, api=api_section(), **kw))
    async with (
        rig(loaded) as r,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
    ):
        assert r.daemon.api is not None
        assert r.daemon.api.port is not None
        yield r, Api(session, r.daemon.api.port)


def later(r: Rig, seconds: float) -> str:
    return (r.clock.now() + timedelta(seconds=seconds)).isoformat()


def cancel(r: Rig) -> dict[str, Any]:
    """Cancels the harness's curtailment evt-0017 (revision 1)."""
    return {"type": "cancel", "id": "evt-0017", "revision": 2, "issued_at": iso(r.clock)}


def operator_events(r: Rig) -> list[dict[str, Any]]:
    rows = r.daemon.journal.rows("SELECT subject, detail FROM events WHERE kind='operator'")
    return [{"subject": s, **json.loads(d)} for s, d in rows]


async def test_system_every_route_answers_by_role(tmp_path: Path) -> None:
    """No token, a wrong one and a weaker role are refused with a problem that leaks
    nothing; the right role gets through (a 400 for an empty body is past the door)."""
    async with api_rig(tmp_path, miners=4) as (r, api):
        assert r.daemon.api is not None
        for route in ROUTES:
            path = route.path.replace("{id}", "m000").replace("{name}", "app.js")
            if route.path == "/api/v1/overrides/{id}":
                path = "/api/v1/overrides/ov-none?reason=test"
            if route.role is None or route.path == "/metrics":
                status, _, _ = await api.call(route.method, path, role=None)
                assert status < 500, route.path
                continue
            for token in (None, "not-a-token", API_TOKENS["viewer"] + "x"):
                status, body, reply = await api.call(route.method, path, role=None, token=token)
                assert status == 401, (route.path, token)
                assert reply.headers["Content-Type"].startswith("application/problem+json")
                assert reply.headers["WWW-Authenticate"].startswith("Bearer")
                assert body["detail"] == "a valid bearer token is required"
            roles = ["viewer", "operator", "admin"]
            needed = route.role.name.lower()
            for role in roles[: roles.index(needed)]:
                status, body, _ = await api.call(route.method, path, role=role)
                assert status == 403, (route.path, role)
                assert body["detail"] == f"this needs the {needed} role"
            for role in roles[roles.index(needed) :]:
                if route.path == "/api/v1/stream":
                    continue  # endless: read by the dashboard test
                status, _, _ = await api.call(route.method, path, role=role)
                assert status in {200, 201, 204, 400, 404}, (route.path, role, status)


async def test_system_override_sheds_the_farm_and_is_journaled(tmp_path: Path) -> None:
    async with api_rig(tmp_path, miners=12) as (r, api):
        draw_kw = r.sup.draw.measured_w / 1000
        limit_kw = round(draw_kw * 0.5, 1)
        status, body, reply = await api.call(
            "POST",
            "/api/v1/overrides",
            role="operator",
            body={
                "limit_kw": limit_kw,
                "expires_at": later(r, 3600),
                "reason": "transformer T2 runs hot",
            },
        )
        assert status == 201, body
        assert reply.headers["Location"] == f"/api/v1/overrides/{body['id']}"
        assert (body["limit_kw"], body["by"]) == (limit_kw, "operator-1")
        await r.step(8)
        assert r.farm.total_power_w() <= limit_kw * 1000  # the simulator's truth
        _, state, _ = await api.call("GET", "/api/v1/status")
        assert state["limit"]["limit_kw"] == limit_kw
        assert any(
            "operator-1: transformer T2 runs hot" in why for why in state["limit"]["reasons"]
        )
        assert [o["id"] for o in state["overrides"]] == [body["id"]]
        assert state["grid_limit_kw"] > limit_kw
        assert state["miners"]["sleeping"] > 0
        assert sum(c["miners"]["total"] for c in state["containers"]) == 12
        # Withdrawn, with a reason; the farm comes back.
        path = f"/api/v1/overrides/{body['id']}?reason=T2+inspected"
        status, _, _ = await api.call("DELETE", path, role="operator")
        assert status == 204
        await r.step(30)
        assert r.asleep() == set()
        events = operator_events(r)
        assert [(e["what"], e["by"], e["why"]) for e in events] == [
            ("override created", "operator-1", "transformer T2 runs hot"),
            ("override removed", "operator-1", "T2 inspected"),
        ]
        status, page, _ = await api.call("GET", "/api/v1/events?limit=1")
        assert status == 200
        [first] = page["events"]
        assert first["kind"] == "operator"
        assert first["detail"]["what"] == "override created"
        _, rest, _ = await api.call("GET", f"/api/v1/events?after={page['next']}")
        assert [e["detail"]["what"] for e in rest["events"]] == ["override removed"]


async def test_system_bad_requests_change_nothing(tmp_path: Path) -> None:
    async with api_rig(tmp_path, miners=4) as (r, api):
        grid_kw = r.sup.grid_limit(r.clock.now()).limit_w / 1000
        cases: list[tuple[dict[str, Any] | bytes, int, str]] = [
            ({"limit_kw": -5, "expires_at": later(r, 60), "reason": "why"}, 400, "limit_kw"),
            ({"limit_kw": 5, "expires_at": later(r, 60)}, 400, "reason"),
            ({"limit_kw": 5, "expires_at": later(r, 60), "reason": "x", "y": 1}, 400, "reason"),
            ({"limit_kw": 5, "expires_at": "tomorrow", "reason": "why"}, 400, "expires_at"),
            (
                {"limit_kw": 5, "expires_at": "2026-11-23T10:00:00", "reason": "why"},
                400,
                "expires_at",
            ),
            ({"limit_kw": 5, "expires_at": later(r, -1), "reason": "why"}, 422, "expires_at"),
            (
                {"limit_kw": 5, "expires_at": later(r, 86400 * 40), "reason": "why"},
                422,
                "expires_at",
            ),
            (b"{not json", 400, "body"),
            (b"", 400, "body"),
            (b"x" * 20_000, 413, ""),
        ]
        for body, status, field in cases:
            raw = body if isinstance(body, bytes) else None
            got, problem, reply = await api.call(
                "POST",
                "/api/v1/overrides",
                role="operator",
                body=None if raw is not None else body,
                raw=raw,
            )
            assert got == status, (body, problem)
            assert reply.headers["Content-Type"].startswith("application/problem+json")
            if field:
                assert problem["detail"].startswith(field) or problem.get("field") == field, problem
        # Looser than the grid: 422, saying that grid limits win.
        got, problem, _ = await api.call(
            "POST",
            "/api/v1/overrides",
            role="operator",
            body={"limit_kw": grid_kw + 1, "expires_at": later(r, 60), "reason": "more please"},
        )
        assert got == 422
        assert problem["field"] == "limit_kw"
        assert "grid limits always win" in problem["detail"]
        bad_holds: list[tuple[str, dict[str, Any], int]] = [
            ("m000", {"mode": "sleep", "reason": "no until"}, 422),
            ("m000", {"mode": "nap", "until": later(r, 60), "reason": "bad mode"}, 400),
            ("m000", {"mode": "auto", "reason": "not held"}, 404),
            ("nope", {"mode": "sleep", "until": later(r, 60), "reason": "no such"}, 404),
        ]
        for miner, body, status in bad_holds:
            got, problem, _ = await api.call(
                "POST", f"/api/v1/miners/{miner}/mode", role="operator", body=body
            )
            assert got == status, (body, problem)
        got, _, _ = await api.call("PUT", "/api/v1/automation", role="operator", body={"paused": 1})
        assert got == 400
        got, _, _ = await api.call("GET", "/api/v1/miners?mode=dozing")
        assert got == 400
        got, _, _ = await api.call("GET", "/api/v1/events?since=yesterday")
        assert got == 400
        got, _, _ = await api.call("DELETE", "/api/v1/overrides/ov-x?reason=gone", role="operator")
        assert got == 404
        # Nothing held changed, and nothing was journaled.
        assert r.daemon.desk.overrides == {}
        assert r.daemon.desk.holds == {}
        assert not r.daemon.desk.paused
        assert r.daemon.inbox.overrides == ()
        assert operator_events(r) == []


async def test_system_holds_keep_a_miner_asleep_or_running(tmp_path: Path) -> None:
    async with api_rig(tmp_path, miners=8) as (r, api):
        # m000 is among the least efficient (shed first); hold it running, m001 asleep.
        status, out, _ = await api.call(
            "POST",
            "/api/v1/miners/m001/mode",
            role="operator",
            body={"mode": "sleep", "until": later(r, 600), "reason": "fan replacement"},
        )
        assert status == 200, out
        assert out["hold"]["mode"] == "sleep"
        most_wasteful = max(r.loaded.miners, key=lambda m: (m.efficiency_j_th, m.rated_power_w))
        keep = most_wasteful.id
        status, _, _ = await api.call(
            "POST",
            f"/api/v1/miners/{keep}/mode",
            role="operator",
            body={"mode": "run", "until": later(r, 600), "reason": "pool test"},
        )
        assert status == 200
        await r.step(6)
        assert r.asleep() == {"m001"}
        # A curtailment sheds the held-running miner last: others of its class go first.
        draw_kw = r.sup.draw.measured_w / 1000
        await r.post(*r.signed(r.curtailment(round(draw_kw * 0.7, 1))))
        await r.settled("evt-0017#r1", within_s=15)
        asleep = r.asleep()
        assert keep not in asleep
        same_class = {
            m.id for m in r.loaded.miners if m.efficiency_j_th == most_wasteful.efficiency_j_th
        }
        assert same_class - {keep} <= asleep
        # Cancelled: everything comes back except the miner held asleep.
        await r.post(*r.signed(cancel(r)))
        await r.step(30)
        assert r.asleep() == {"m001"}
        _, miners, _ = await api.call("GET", "/api/v1/miners?mode=sleeping")
        assert [m["id"] for m in miners["miners"]] == ["m001"]
        # Handed back: it wakes.
        status, out, _ = await api.call(
            "POST",
            "/api/v1/miners/m001/mode",
            role="operator",
            body={"mode": "auto", "reason": "fans replaced"},
        )
        assert status == 200
        assert out["hold"] is None
        await r.step(15)
        assert r.asleep() == set()
        whats = [e["what"] for e in operator_events(r)]
        assert whats == ["hold sleep", "hold run", "hold released"]


async def test_system_paused_automation_still_enforces_the_grid(tmp_path: Path) -> None:
    async with api_rig(tmp_path, miners=8) as (r, api):
        status, out, _ = await api.call(
            "PUT",
            "/api/v1/automation",
            role="operator",
            body={"paused": True, "reason": "firmware rollout"},
        )
        assert (status, out["paused"], out["by"]) == (200, True, "operator-1")
        limit_kw = round(r.sup.draw.measured_w / 1000 * 0.5, 1)
        await r.post(*r.signed(r.curtailment(limit_kw)))
        ob = await r.settled("evt-0017#r1", within_s=15)
        assert ob.status.value == "reached"  # the grid limit is still enforced
        shed = r.asleep()
        assert shed
        await r.post(*r.signed(cancel(r)))
        await r.step(30)
        assert r.asleep() == shed  # paused: nothing comes back
        assert any("automation paused by operator-1" in n for n in r.sup.plan.notes)
        status, out, _ = await api.call(
            "PUT",
            "/api/v1/automation",
            role="operator",
            body={"paused": False, "reason": "rollout done"},
        )
        assert (status, out["paused"]) == (200, False)
        await r.step(30)
        assert r.asleep() == set()


async def test_system_operator_state_survives_a_restart_and_expires(tmp_path: Path) -> None:
    loaded = load_site(site_dict(tmp_path, miners=6, api=api_section()))
    clock = FakeClock()
    farm = farm_from_config(loaded, clock.time)
    async with farm:
        async with daemon_on(loaded, clock, farm) as r:
            assert r.daemon.api is not None
            async with aiohttp.ClientSession() as session:
                api = Api(session, r.daemon.api.port or 0)
                grid_kw = r.sup.grid_limit(clock.now()).limit_w / 1000
                await api.call(
                    "POST",
                    "/api/v1/overrides",
                    role="admin",
                    body={"limit_kw": grid_kw / 2, "expires_at": later(r, 120), "reason": "a"
                          " short test"},
                )  # fmt: skip
                await api.call(
                    "POST",
                    "/api/v1/miners/m002/mode",
                    role="operator",
                    body={"mode": "sleep", "until": later(r, 600), "reason": "inspection"},
                )
                await api.call(
                    "PUT",
                    "/api/v1/automation",
                    role="operator",
                    body={"paused": True, "reason": "night shift"},
                )
        async with daemon_on(loaded, clock, farm) as r:
            desk = r.daemon.desk
            assert len(desk.overrides) == 1
            assert set(desk.holds) == {"m002"}
            assert desk.paused
            assert r.daemon.inbox.overrides  # in force again
            await r.step(125)  # the override lapses; the hold stays
            assert desk.overrides == {}
            assert set(desk.holds) == {"m002"}
            whats = [e["what"] for e in operator_events(r)]
            assert whats[-1] == "override expired"
            assert operator_events(r)[-1]["by"] == "curtaild"


async def test_system_reports_health_docs_and_schema(tmp_path: Path) -> None:
    async with api_rig(tmp_path, miners=4) as (r, api):
        await r.post(*r.signed(r.curtailment(5)))
        await r.settled("evt-0017#r1", within_s=15)
        status, report, _ = await api.call("GET", "/api/v1/reports/signals")
        assert status == 200
        [row] = report["signals"]
        assert (row["signal_id"], row["verdict"], row["status"]) == (
            "evt-0017",
            "received",
            "reached",
        )
        status, csv_text, reply = await api.call("GET", "/api/v1/reports/signals?format=csv")
        assert status == 200
        assert reply.headers["Content-Type"].startswith("text/csv")
        assert csv_text.splitlines()[0].startswith("received_at,")
        assert "evt-0017" in csv_text.splitlines()[1]
        status, health, _ = await api.call("GET", "/healthz", role=None)
        assert (status, health["status"], health["ready"]) == (200, "ok", True)
        status, doc, _ = await api.call("GET", "/openapi.json", role=None)
        assert doc["openapi"] == "3.1.0"
        assert set(doc["paths"]) >= {"/api/v1/status", "/api/v1/overrides", "/metrics"}
        schema = doc["components"]["schemas"]["OverrideIn"]
        assert set(schema["required"]) == {"limit_kw", "expires_at", "reason"}
        status, page, reply = await api.call("GET", "/docs", role=None)
        assert status == 200
        assert "/api/v1/overrides" in page
        assert "<script" not in page
        assert "https://" not in page  # offline: nothing from a CDN
        assert reply.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        await r.step(6)  # a point every 5 s
        _, history, _ = await api.call("GET", "/api/v1/history")
        assert history["points"]
        assert history["points"][-1]["limit_kw"] == 5
        status, metrics, _ = await api.call("GET", "/metrics", role=None)
        assert status == 200
        assert "curtaild_deadlines_total" in metrics
        _, one, _ = await api.call("GET", "/api/v1/miners/m000")
        assert one["id"] == "m000"
        assert one["mode"] in {"mining", "sleeping"}
        assert r.farm.miners["m000"].physics.mode in {Mode.MINING, Mode.SLEEPING}


async def test_system_operator_changes_stay_off_the_grid_side(tmp_path: Path) -> None:
    """An override binds the farm, but the grid's deadline is judged against the grid's
    own limit, and the status published on the grid's broker carries no operator's name
    or free text. A hold's sleep is not a grid shed."""
    async with api_rig(tmp_path, miners=8) as (r, api):
        draw_kw = r.sup.draw.measured_w / 1000
        await api.call(
            "POST",
            "/api/v1/overrides",
            role="operator",
            body={"limit_kw": round(draw_kw * 0.5, 1), "expires_at": later(r, 600),
                  "reason": "secret transformer trouble"},
        )  # fmt: skip
        grid_kw = round(draw_kw * 0.8, 1)
        await r.post(*r.signed(r.curtailment(grid_kw)))
        ob = await r.settled("evt-0017#r1", within_s=15)
        assert ob.limit_w == round(grid_kw * 1000)
        await r.step(2)
        published = r.daemon.recorder.latest_status
        assert published is not None
        assert not any("secret" in why or "operator-1" in why for why in published["reasons"])
        assert any(why.startswith("operator override: ") for why in published["reasons"])
        awake = next(m for m in sorted(r.loaded.miners, key=lambda m: m.efficiency_j_th)
                     if m.id not in r.asleep())  # fmt: skip
        await api.call(
            "POST",
            f"/api/v1/miners/{awake.id}/mode",
            role="operator",
            body={"mode": "sleep", "until": later(r, 600), "reason": "fan swap"},
        )
        await r.step(6)
        assert awake.id in r.asleep()
        assert awake.id not in r.sup.commands.escalations["sleep"]  # not counted as a grid shed


async def test_system_a_token_that_is_not_text_is_a_plain_401(tmp_path: Path) -> None:
    async with api_rig(tmp_path, miners=2) as (r, _):
        assert r.daemon.api is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", r.daemon.api.port)
        writer.write(
            b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer \xff\xfe\xc3(\r\n\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
        assert head.startswith(b"HTTP/1.1 401"), head[:200]
        assert b"application/problem+json" in head


class Failing(FixedCompliance):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def compliance(self, now: datetime) -> dict[str, Any]:
        raise self.error


async def test_system_compliance_from_the_source_it_is_given(tmp_path: Path) -> None:
    """GET /api/v1/compliance answers the injected source's figures as of the daemon's
    time; without a source, or one that cannot read, a 503 problem; a malformed answer is
    the account's bug, a 500 naming the field. (The daemon's own source, its journal, is
    tested in test_compliance.py.)"""
    async with api_rig(tmp_path, miners=2) as (r, api):
        assert r.daemon.api is not None
        status, _, _ = await api.call("GET", "/api/v1/compliance")
        assert status == 200  # the daemon's own, from its journal
        r.daemon.api.compliance = None
        status, body, reply = await api.call("GET", "/api/v1/compliance")
        assert status == 503
        assert reply.headers["Content-Type"].startswith("application/problem+json")
        assert body["detail"] == "compliance not available"

        source = FixedCompliance()
        r.daemon.api.compliance = source
        status, body, _ = await api.call("GET", "/api/v1/compliance")
        assert status == 200
        assert body["today"] == source.answer["today"]
        assert body["month"] == source.answer["month"]
        assert body["grants"] == source.answer["grants"]
        assert body["unapproved_pools"][0]["unapproved"] == ["stratum+tcp://pool.example.org:3333"]
        assert (body["chain"]["verified"], body["chain"]["rows"]) == (True, 4321)
        await r.step(2)
        await api.call("GET", "/api/v1/compliance")
        assert source.asked == [r.clock.now() - timedelta(seconds=2), r.clock.now()]

        for error in (ComplianceError("journal locked"), sqlite3.OperationalError("disk I/O")):
            r.daemon.api.compliance = Failing(error)
            status, body, _ = await api.call("GET", "/api/v1/compliance")
            assert (status, body["detail"]) == (
                503,
                "compliance not available: the account cannot be read",
            )

        broken = FixedCompliance()
        broken.answer["today"] = {**broken.answer["today"], "excess_kwh": "a lot"}
        r.daemon.api.compliance = broken
        status, body, _ = await api.call("GET", "/api/v1/compliance")
        assert (status, body["detail"]) == (
            500,
            "the energy account's figures are malformed at today.excess_kwh",
        )
        # The daemon goes on.
        status, _, _ = await api.call("GET", "/api/v1/status")
        assert status == 200


async def test_system_api_shows_the_hashrate_and_each_miners_setting(tmp_path: Path) -> None:
    """Under an override that sheds half the farm: the status's hashrate is the simulated
    farm's, and the sum of the miners' own; J/TH is the miners' draw over it; each miner's
    setting agrees with its mode, and a target the allocation set shows as tuned."""
    async with api_rig(tmp_path, miners=8) as (r, api):
        limit_kw = round(r.sup.draw.measured_w / 1000 * 0.5, 1)
        body = {"limit_kw": limit_kw, "expires_at": later(r, 600), "reason": "half the farm"}
        status, _, _ = await api.call("POST", "/api/v1/overrides", role="operator", body=body)
        assert status == 201
        await r.step(8)
        _, state, _ = await api.call("GET", "/api/v1/status")
        _, listed, _ = await api.call("GET", "/api/v1/miners?limit=1000")
        miners = listed["miners"]
        assert state["hashrate_ths"] == pytest.approx(r.farm.hashrate_ths(), abs=1e-3)
        mining = [m for m in miners if m["mode"] == "mining"]
        assert 0 < len(mining) < len(miners)
        assert state["hashrate_ths"] == pytest.approx(sum(m["hashrate_ths"] for m in mining))
        assert state["efficiency_j_th"] == pytest.approx(
            state["fresh_draw_kw"] * 1000 / state["hashrate_ths"], abs=0.01
        )
        expected = r.sup.plan.expected_ths
        assert state["expected_hashrate_ths"] == (
            None if expected is None else pytest.approx(expected, abs=1e-3)
        )
        floor = {s.id: s.floor_w() for s in r.daemon.specs.values()}
        for m in miners:
            if m["mode"] == "sleeping":
                assert (m["setting"], m["target_w"]) == ("asleep", None), m
            elif m["lowered"]:
                assert (m["setting"], m["target_w"]) == ("lowered", floor[m["id"]]), m
            else:
                assert m["setting"] in {"default", "tuned"}, m
                assert (m["target_w"] is None) == (m["setting"] == "default"), m
        assert state["miners"]["tuned"] == sum(m["setting"] == "tuned" for m in miners)

        # A target the allocation chose, shown as it is set (before a cycle acts on it).
        chosen = mining[0]
        r.daemon.readings.set_ladder(chosen["id"], target_w=2345)
        _, one, _ = await api.call("GET", f"/api/v1/miners/{chosen['id']}")
        assert (one["setting"], one["target_w"]) == ("tuned", 2345)
        r.daemon.readings.set_ladder(chosen["id"], target_w=None)
