"""Prometheus metrics read off a real daemon over a simulated farm with a meter, a PDU and a
sensor: what a curtailment leaves in them, a stalled meter going down, separate registries,
and the Grafana dashboard asking only for what is exported."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.adapters.metrics import Metrics
from controller.core.model import fleet_mode
from controller.core.operator import HoldMode
from controller.core.signals import ObligationStatus
from controller.intake.desk import Desk, Principal, Role
from sim.faults import Fault
from tests.conftest import load_site, site_dict
from tests.system.harness import Rig, rig

pytestmark = pytest.mark.system

METER = "site-meter"
PDU = "pdu-1"
SENSOR = "c1-ambient"
MINERS = 8
DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "curtaild.json"

Samples = dict[str, list[tuple[dict[str, str], float]]]


def metered_site(tmp_path: Path) -> Any:
    """LuxOS miners on one switched PDU, a site meter with a base load, a sensor in c1."""
    data = site_dict(tmp_path, miners=MINERS, margin_kw=1.0)
    net = data["miners"][0]["host"].rsplit(".", 2)[0]
    data["pdus"] = [
        {
            "id": PDU,
            "host": f"{net}.250.1",
            "port": 1502,
            "map": "pdu-coil-24",
            "outlets": [{"pattern": "m{n:03d}", "first": 0, "count": MINERS}],
        }
    ]
    data["meter"] = {
        "id": METER,
        "host": f"{net}.250.2",
        "port": 1502,
        "map": "meter-float32",
        "interval_s": 0.25,
        "stale_after_s": 2,
        "update_lag_s": 0.5,
    }
    data["sensors"] = [
        {
            "id": SENSOR,
            "host": f"{net}.250.3",
            "port": 1502,
            "map": "sensor-temp",
            "container": "c1",
        }
    ]
    data["escalation"] = {"lower_first": False, "pdu_interval_s": 0.5}
    data["simulation"]["meter"] = {"base_load_kw": 1.0, "noise_kw": 0.0, "update_interval_s": 0.5}
    return load_site(data)


def scrape(m: Metrics) -> Samples:
    """Every sample of one exposition, by sample name (histograms as _bucket, _count...)."""
    body, content_type = m.exposition()
    assert content_type.startswith("text/plain")
    out: Samples = defaultdict(list)
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[sample.name].append((sample.labels, sample.value))
    return out


def declared(m: Metrics) -> set[str]:
    """The families an exposition declares (HELP and TYPE), with or without a sample: a
    gauge that is unknown for now (a stale meter, a plan without curves) is still one."""
    body, _ = m.exposition()
    return {family.name for family in text_string_to_metric_families(body.decode())}


def value(samples: Samples, name: str, **labels: str) -> float:
    [found] = [v for ls, v in samples[name] if all(ls.get(k) == w for k, w in labels.items())]
    return found


def by(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {ls[label]: v for ls, v in samples[name]}


async def curtailed(r: Rig) -> tuple[Metrics, float]:
    """Observe the loop, then drive a curtailment to half the draw to its deadline."""
    r.daemon.supervisor.observer = m = Metrics(r.daemon.feed, r.daemon.mqtt)
    await r.step(2)
    limit_kw = round((r.sup.draw.measured_w or 0) / 1000 * 0.5, 1)
    await r.post(*r.signed(r.curtailment(limit_kw, deadline_s=10)))
    ob = await r.settled("evt-0017#r1", within_s=20)
    assert ob.status is ObligationStatus.REACHED, ob
    await r.run_until(lambda: r.sup.ledger.in_flight == 0, within_s=5)
    await r.step(1)  # the next report: the read model /metrics is built from
    return m, limit_kw


async def test_metrics_follow_a_curtailment_to_its_deadline(tmp_path: Path) -> None:
    async with rig(metered_site(tmp_path)) as r:
        m, limit_kw = await curtailed(r)
        s = scrape(m)

        assert value(s, "curtaild_deadlines_total", kind="curtailment", status="reached") == 1
        assert value(s, "curtaild_deadlines_total", kind="curtailment", status="missed") == 0
        counts = s["curtaild_command_duration_seconds_count"]
        assert sum(v for _, v in counts) == r.sup.ledger.sent > 0
        assert {(ls["family"], ls["action"], ls["outcome"]) for ls, _ in counts} == {
            ("luxos", "sleep", "ok")
        }
        assert value(s, "curtaild_commands_sent_total") == r.sup.ledger.sent
        assert value(s, "curtaild_commands_failed_total") == 0
        assert value(s, "curtaild_loop_cycle_seconds_count") > 0
        assert value(s, "curtaild_loop_cycles_total") == r.sup.cycles

        modes = by(s, "curtaild_miners", "mode")
        assert set(modes) == {"mining", "sleeping", "unknown", "cut"}
        assert sum(modes.values()) == MINERS
        assert modes["sleeping"] == len(r.asleep()) > 0
        assert modes["mining"] == MINERS - len(r.asleep())
        per_container: dict[str, float] = defaultdict(float)
        for ls, v in s["curtaild_miners_by_container"]:
            per_container[ls["container"]] += v
        assert per_container == {"c1": MINERS / 2, "c2": MINERS / 2}
        assert value(s, "curtaild_miners_pending") == 0
        assert value(s, "curtaild_miners_unhealthy") == 0

        assert value(s, "curtaild_grid_limit_watts") == limit_kw * 1000
        assert value(s, "curtaild_grid_draw_watts") == r.sup.draw.measured_w <= limit_kw * 1000
        assert value(s, "curtaild_expected_draw_watts") == r.sup.plan.expected_w
        assert value(s, "curtaild_unexplained_draw_watts") == r.sup.draw.offset_w
        # The hashrate the simulated farm holds, and what it costs per TH/s (its outlets
        # measure the miners' draw; the meter's base load is not theirs).
        hashrate = r.farm.hashrate_ths()
        assert 0 < value(s, "curtaild_hashrate_ths") == pytest.approx(hashrate, rel=1e-6)
        assert value(s, "curtaild_efficiency_j_per_th") == pytest.approx(
            r.farm.total_power_w() / hashrate, rel=0.02
        )
        expected = r.sup.plan.expected_ths  # None: planned without curves, and no sample
        shown = [v for _, v in s.get("curtaild_plan_expected_hashrate_ths", [])]
        assert shown == ([] if expected is None else [pytest.approx(expected)])
        tuned = [v for v in r.daemon.readings.views() if v.target_w is not None]
        assert value(s, "curtaild_miners_tuned") == sum(
            fleet_mode(v, r.clock.now(), r.loaded.plan_rules().stale_after) == "mining"
            for v in tuned
        )
        assert value(s, "curtaild_pending_deadlines") == 0
        assert value(s, "curtaild_ready") == 1
        assert value(s, "curtaild_automation_paused") == 0
        assert value(s, "curtaild_overrides_active") == 0
        assert by(s, "curtaild_holds_active", "mode") == {"sleep": 0, "run": 0}
        assert by(s, "curtaild_alarms_active", "kind") == {"heater-floor": 0, "unapproved-pool": 0}
        assert value(s, "curtaild_cold_cuts_total") == 0
        assert {(ls["device"], ls["kind"]): v for ls, v in s["curtaild_device_up"]} == {
            (METER, "meter"): 1,
            (PDU, "pdu"): 1,
            (SENSOR, "sensor"): 1,
        }


async def test_metrics_a_stalled_meter_goes_down_and_its_draw_unknown(tmp_path: Path) -> None:
    async with rig(metered_site(tmp_path)) as r:
        m = Metrics(r.daemon.feed, r.daemon.mqtt)
        await r.step(1)
        assert value(scrape(m), "curtaild_device_up", kind="meter") == 1
        await r.farm.set_fault(METER, Fault.STALL)
        await r.step(3)  # beyond its stale_after_s of 2
        s = scrape(m)
        assert value(s, "curtaild_device_up", kind="meter") == 0
        assert value(s, "curtaild_device_up", kind="pdu") == 1
        assert "curtaild_grid_draw_watts" not in s  # unknown: no sample, not a zero


async def test_metrics_instances_keep_separate_registries(tmp_path: Path) -> None:
    async with rig(load_site(site_dict(tmp_path, miners=4))) as r:
        first, second = Metrics(r.daemon.feed, r.daemon.mqtt), Metrics(r.daemon.feed, r.daemon.mqtt)
        r.daemon.supervisor.observer = first
        await r.step(2)
        assert value(scrape(first), "curtaild_loop_cycle_seconds_count") > 0
        assert value(scrape(second), "curtaild_loop_cycle_seconds_count") == 0
        assert first.registry is not second.registry
        default = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
        assert "curtaild_" not in default


async def test_metrics_show_the_operator_desk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(load_site(site_dict(tmp_path, miners=4))) as r:
        # The daemon's own desk where it has one; else one on its journal and inbox.
        desk = getattr(r.daemon, "desk", None) or Desk(
            journal=r.daemon.journal, inbox=r.daemon.inbox, miners=r.daemon.specs, now=r.clock.now()
        )
        monkeypatch.setattr(r.daemon, "desk", desk, raising=False)
        m = Metrics(r.daemon.feed, r.daemon.mqtt)
        now, later = r.clock.now(), r.clock.now() + timedelta(hours=1)
        who = Principal("operator-1", Role.OPERATOR)
        desk.set_automation(paused=True, reason="inspection", by=who, now=now)
        desk.hold("m000", HoldMode.SLEEP, expires_at=later, reason="fan", by=who, now=now)
        desk.hold("m001", HoldMode.RUN, expires_at=later, reason="pool test", by=who, now=now)
        desk.add_override(
            limit_w=5000,
            expires_at=later,
            reason="feeder work",
            by=who,
            now=now,
            grid_limit_w=10**9,
        )
        await r.step(1)  # the next report
        s = scrape(m)
        assert value(s, "curtaild_automation_paused") == 1
        assert by(s, "curtaild_holds_active", "mode") == {"sleep": 1, "run": 1}
        assert value(s, "curtaild_overrides_active") == 1


def dashboard_metrics() -> set[str]:
    data = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if "expr" in t)
            walk(panel.get("panels", []))

    walk(data["panels"])
    exprs.extend(v["definition"] for v in data["templating"]["list"] if "definition" in v)
    assert len(exprs) > 10
    return {name for expr in exprs for name in re.findall(r"curtaild_[a-z_]+", expr)}


async def test_metrics_dashboard_queries_only_exported_metrics(tmp_path: Path) -> None:
    async with rig(metered_site(tmp_path)) as r:
        m, _ = await curtailed(r)
        exported = {name for name, samples in scrape(m).items() if samples} | declared(m)
        wanted = dashboard_metrics()
        missing = sorted(wanted - exported)
        assert not missing, f"the dashboard asks for what curtaild does not export: {missing}"
        # Every exported curtaild family is charted somewhere (histograms via _bucket).
        bases = {re.sub(r"_(bucket|count|sum|created)$", "", n) for n in wanted}
        families = {re.sub(r"_(bucket|count|sum|created|total)$", "", n) for n in exported}
        charted = {re.sub(r"_total$", "", n) for n in bases}
        assert {f for f in families if f.startswith("curtaild_")} <= charted
