"""`curtaild demo`: a simulated farm, an embedded broker, the daemon and a scripted grid.

The farm mixes all four firmware families; PDUs feed container 1 and a site meter
judges the whole site; two units deceive (their firmware reports sleep, they keep
drawing). The grid operator plays a Kazakhstan-style day: a surplus grant wakes the farm;
a curtailment to 40 % of the draw arrives with a 10 s deadline, then a tighter revision
to 30 % (over HTTP), held, then a cancel; finally the grant ends and the farm must be
back under its base allowance by the end. Every signal is signed. The summary says, per
signal, how long the draw took to get within the limit by the meter and whether the
deadline was met, how many miners reached each step of the escalation ladder, and which
liars the measurements caught.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from controller import logs
from controller.adapters.mqtt_signals import GridSide
from controller.app import Daemon
from controller.clock import SystemClock
from controller.config import ConfigError, Loaded, parse
from controller.core import allocation
from controller.core.signals import Obligation, ObligationStatus
from controller.record import chain
from demo import day
from demo import openadr as demo_openadr
from demo import winter as demo_winter
from demo.farm import farm_from_config
from demo.grid import GridOperator
from drivers.shipped import shipped
from drivers.types import Mode
from sim.farm import SimFarm

DEFAULT_FARM = shipped("sim-farm.yaml")
DEFAULT_API = "127.0.0.1:8481"  # the dashboard; a free port instead if this one is taken
SETTLE_TIMEOUT_S = 30.0


async def run_demo(
    *,
    config: Path | None,
    as_json: bool,
    mqtt_url: str | None,
    scenario: str = "day",
    api_listen: str = DEFAULT_API,
) -> int:
    out = sys.stderr if as_json else sys.stdout
    logs.configure("WARNING", "console", stream=sys.stderr)
    for noisy in ("amqtt", "transitions", "aiohttp", "openleadr"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="curtaild-demo-") as tmp:
        try:
            token = secrets.token_urlsafe(24)
            loaded, key = _demo_config(
                config or DEFAULT_FARM, Path(tmp), mqtt_url, scenario, (api_listen, token)
            )
        except ConfigError as err:
            print(str(err), file=sys.stderr)
            return 2
        if scenario == "openadr":
            summary = await demo_openadr.scenario(loaded, Path(tmp), out, _summary)
        else:
            summary = await _scenario(
                loaded,
                key,
                out,
                embed_broker=mqtt_url is None,
                winter=scenario == "winter",
                token=token,
            )
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, out)
    return 0 if summary["ok"] else 1


def _demo_config(
    path: Path,
    tmp: Path,
    mqtt_url: str | None,
    scenario: str = "day",
    api: tuple[str, str] = (DEFAULT_API, ""),
) -> tuple[Loaded, bytes]:
    """The farm config pointed at a scratch journal, a free HTTP port and the broker; in
    winter, with the winter overlay (cold, sensors, the safety rules) merged on. The
    operator API and dashboard listen on `api` (a free port if that one is taken), with
    a viewer token made for this run (printed, never stored)."""
    try:
        data = yaml.safe_load(path.read_text())
        if scenario == "winter":
            data = demo_winter.merge(data, yaml.safe_load(demo_winter.OVERLAY.read_text()))
    except OSError as err:
        problem = f"cannot read the demo farm: {err.strerror}; pass one with -c"
        raise ConfigError(str(path), [problem]) from None
    source = data["signals"]["sources"][0]
    env = source["key"].get("env", "CURTAILD_DEMO_KEY")
    os.environ.setdefault(env, secrets.token_hex(32))  # the demo plays both sides
    data["journal"]["path"] = str(tmp / "journal.db")
    data["signals"]["mqtt"]["url"] = mqtt_url or f"mqtt://127.0.0.1:{_free_port()}"
    data["signals"]["http"] = {"listen": "127.0.0.1:0"}
    listen, token = api
    host, _, port = listen.rpartition(":")
    if port != "0" and not _port_free(host, int(port)):
        listen = f"{host}:0"
    digest = hashlib.sha256(token.encode()).hexdigest()
    data["api"] = {
        "listen": listen,
        "tokens": [{"name": "demo-viewer", "role": "viewer", "sha256": digest}],
        # --api on a non-loopback address asks for it on the network; the daemon warns.
        "allow_plaintext": True,
    }
    if scenario == "openadr":
        data = demo_openadr.overlay(data, tmp)
    loaded = parse(yaml.safe_dump(data), origin=str(path))
    return loaded, loaded.source_keys[source["id"]]


async def _scenario(
    loaded: Loaded,
    key: bytes,
    out: TextIO,
    *,
    embed_broker: bool,
    winter: bool = False,
    token: str = "",
) -> dict[str, Any]:
    clock = SystemClock()
    mqtt = loaded.config.signals.mqtt
    assert mqtt is not None
    farm = farm_from_config(loaded, clock.time)
    rated_kw = sum(m.rated_power_w for m in loaded.miners) / 1000
    started = time.monotonic()
    say: Callable[[str], None] = lambda text: print(  # noqa: E731
        f"[{time.monotonic() - started:6.1f}s] {text}", file=out, flush=True
    )
    async with contextlib.AsyncExitStack() as stack:
        if embed_broker:
            await stack.enter_async_context(_embedded_broker(mqtt.host, mqtt.port))
        await stack.enter_async_context(farm)
        families = collections.Counter(m.driver for m in loaded.miners)
        say(
            f"simulated farm: {len(farm.miners)} miners "
            f"({', '.join(f'{n} {name}' for name, n in sorted(families.items()))}), "
            f"{rated_kw:g} kW rated, asleep outside any grant"
        )
        daemon = await stack.enter_async_context(Daemon(loaded, clock, tune_gc=True))
        if daemon.api is not None:
            api_host = loaded.config.api.host if loaded.config.api else "127.0.0.1"
            say(
                f"dashboard: http://{api_host}:{daemon.api.port}/  "
                f"(viewer token for this run: {token})"
            )
        assert daemon.mqtt is not None
        assert daemon.http is not None
        assert daemon.http.port is not None
        await asyncio.wait_for(daemon.mqtt.connected.wait(), SETTLE_TIMEOUT_S)
        grid = await stack.enter_async_context(
            GridSide(mqtt.host, mqtt.port, site_id=loaded.config.site.id, prefix=mqtt.topic_prefix)
        )
        progress = asyncio.create_task(_progress(daemon, farm, say), name="demo.progress")
        watch = demo_winter.FloorWatch(loaded, farm, daemon) if winter else None
        try:
            operator = GridOperator(grid, key, clock, daemon.http.port, say)
            hashrate: dict[str, Any] | None = None
            if watch is not None:
                async with demo_winter.watching(watch, clock.time):
                    await demo_winter.play(operator, daemon, rated_kw)
            else:
                hashrate = await day.play(operator, daemon, rated_kw, lambda: _held(daemon))
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        obligations = sorted(
            [*daemon.supervisor.deadlines.finished, *daemon.supervisor.deadlines.pending],
            key=lambda o: (o.starts_at, o.key),
        )
        summary = _summary(loaded, obligations, farm, operator.kinds, daemon)
        summary["hashrate"] = hashrate
        summary.update(await _evidence(daemon, clock.now()))
        summary["ok"] = (
            summary["ok"] and summary["energy"]["adds_up"] and summary["journal"]["verified"]
        )
        if watch is not None:
            summary["winter"] = demo_winter.summary(loaded, farm, daemon, watch)
            summary["ok"] = summary["ok"] and demo_winter.passed(summary["winter"])
        return summary


async def _progress(daemon: Daemon, farm: SimFarm, say: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(2)
        view = daemon.feed.latest  # the daemon's side, as its status shows it
        if view is None:
            continue
        modes = farm.modes()
        limit = view.limit.limit_w / 1000 if view.limit else float("nan")
        measured = f"{view.measured_w / 1000:7.1f}" if view.measured_w is not None else "  stale"
        say(
            f"site {measured} kW ({view.measured_by}; miners' true draw "
            f"{farm.total_power_w() / 1000:7.1f})  limit {limit:7.1f} kW  "
            f"mining {modes[Mode.MINING]:3d}  sleeping {modes[Mode.SLEEPING]:3d}  "
            f"cut {farm.cut_count():2d}  "
            f"commands {view.commands_sent} ({view.commands_failed} failed)"
        )


def _summary(
    loaded: Loaded,
    obligations: list[Obligation],
    farm: SimFarm,
    kinds: dict[str, str],
    daemon: Daemon,
) -> dict[str, Any]:
    view = daemon.feed.latest  # the site's read model, as every reader sees it
    assert view is not None  # primed when the daemon is built
    signals = []
    for ob in obligations:
        met = (
            ob.status is ObligationStatus.REACHED
            and ob.reached_at is not None
            and ob.reached_at <= ob.due_at
        )
        signals.append(
            {
                "id": ob.signal_id,
                "revision": ob.revision,
                "type": kinds.get(ob.key, ob.kind) if ob.kind != "grant-end" else "grant-end",
                "limit_kw": ob.limit_w / 1000,
                "deadline_s": round(ob.deadline_s, 3),
                "time_to_target_s": (
                    round(ob.time_to_target_s, 3) if ob.time_to_target_s is not None else None
                ),
                "met": met,
                "status": ob.status.value,
                "measured_by": view.measured_by,
            }
        )
    ok = bool(signals) and all(s["met"] for s in signals)
    return {
        "ok": ok,
        "farm": {
            "miners": len(loaded.miners),
            "by_driver": dict(Counter(m.driver for m in loaded.miners)),
            "containers": len({m.container for m in loaded.miners}),
            "rated_kw": sum(m.rated_power_w for m in loaded.miners) / 1000,
        },
        "signals": signals,
        "measured_by": view.measured_by,
        # Miners that reached each step of the ladder (lower power target, sleep, cut).
        "escalations": dict(view.escalations),
        # Caught by their outlet or by a command's read-back, as the status lists them.
        "lying_miners_detected": len(view.lying),
        "lying_miners": sorted(view.lying),
        "outlets_cut_at_end": farm.cut_count(),
        "final_draw_kw": round(farm.total_power_w() / 1000, 3),
    }


def _held(daemon: Daemon) -> dict[str, Any]:
    """The hashrate the farm holds under the limit now, as its read model measures it,
    beside what a sleep-only plan would hold under the same budget on the same curves
    (every miner at its default, the least efficient asleep until the draw fits)."""
    sup = daemon.supervisor
    view = daemon.feed.latest
    plan = sup.plan
    if view is None or plan is None or sup.curves is None or sup.limit is None:
        return {"held_ths": None, "sleep_only_ths": None}
    _, only = allocation.sleep_only(list(sup.curves.curves.values()), plan.budget_w)
    return {
        "limit_kw": sup.limit.limit_w / 1000,
        "held_ths": round(view.hashrate_ths, 1),
        "sleep_only_ths": round(only, 1),
        "expected_ths": round(plan.expected_ths, 1) if plan.expected_ths is not None else None,
        "gain": round(view.hashrate_ths / only - 1, 4) if only > 0 else None,
        "tuned_miners": view.fleet.tuned,
        "efficiency_j_th": (
            round(view.efficiency_j_th, 2) if view.efficiency_j_th is not None else None
        ),
    }


async def _evidence(daemon: Daemon, now: datetime) -> dict[str, Any]:
    """What the farm could hand over after the run: the energy account (the minute in
    progress closed and journaled, as a graceful stop does), the approved-pools check and
    the journal's hash chain, walked as `curtaild verify` walks it."""
    if daemon.supervisor.energy is not None:
        daemon.supervisor.energy.close(now)
    (grid, within, base, excess, exempt, minutes, how), *_ = daemon.journal.rows(
        "SELECT coalesce(sum(grid_kwh), 0), coalesce(sum(within_grants_kwh), 0),"
        " coalesce(sum(base_allowance_kwh), 0), coalesce(sum(excess_kwh), 0),"
        " coalesce(sum(exempt_generation_kwh), 0), count(*), group_concat(DISTINCT measured_by)"
        " FROM energy_intervals"
    )
    verdict = await asyncio.to_thread(chain.verify, daemon.loaded.config.journal.path)
    view = daemon.feed.latest
    pools = view.pools.summary() if view is not None and view.pools is not None else None
    return {
        "energy": {
            "grid_kwh": round(grid, 3),
            "within_grants_kwh": round(within, 3),
            "base_allowance_kwh": round(base, 3),
            "excess_kwh": round(excess, 3),
            "exempt_generation_kwh": round(exempt, 3),
            "intervals": minutes,
            "measured_by": sorted((how or "").split(",")) if how else [],
            # The parts are computed to add up; this checks the journal says so.
            "adds_up": minutes > 0 and math.isclose(grid, within + base + excess, abs_tol=1e-6),
        },
        "pools": pools,
        "journal": {
            "verified": verdict.ok,
            "rows": verdict.rows,
            "problem": verdict.problem.text if verdict.problem is not None else None,
        },
    }


def _print_summary(summary: dict[str, Any], out: TextIO) -> None:
    farm = summary["farm"]
    print(
        f"\nsummary: {farm['miners']} miners "
        f"({', '.join(f'{n} {d}' for d, n in farm['by_driver'].items())}) in "
        f"{farm['containers']} containers",
        file=out,
    )
    print(
        f"{'signal':<22}{'type':<13}{'limit kW':>10}{'deadline':>10}{'to target':>11}  result",
        file=out,
    )
    for s in summary["signals"]:
        ttt = f"{s['time_to_target_s']:.1f} s" if s["time_to_target_s"] is not None else "-"
        print(
            f"{s['id'] + ' r' + str(s['revision']):<22}{s['type']:<13}{s['limit_kw']:>10.1f}"
            f"{s['deadline_s']:>8.1f} s{ttt:>11}  {'met' if s['met'] else 'MISSED'}",
            file=out,
        )
    esc = summary["escalations"]
    print(
        f"escalation ladder: {esc.get('lower', 0)} lowered, {esc.get('sleep', 0)} slept, "
        f"{esc.get('cut', 0)} cut; lying miners detected by measured power: "
        f"{summary['lying_miners_detected']} ({', '.join(summary['lying_miners']) or 'none'})",
        file=out,
    )
    winter = summary.get("winter")
    if winter is not None:
        ambient = ", ".join(f"{c} {t:g} °C" for c, t in winter["ambient_c"].items())
        lowest = ", ".join(f"{c} {kw:g} kW" for c, kw in winter["heater_floor_lowest_kw"].items())
        print(
            f"winter at {ambient}: {winter['cold_cuts']} cold cuts outside emergencies, "
            f"{winter['failed_cold_boots']} failed cold boots, "
            f"{winter['breaker_trips']} breaker trips, "
            f"{winter['heater_floor_violations']} heater-floor violations (lowest container "
            f"draw while the limit allowed the floor: {lowest}); {winter['warm_wakes']} warm "
            f"wakes; peak restart {winter['peak_wake_kw_per_s']:g} kW/s (planned limit "
            f"{winter['wake_limit_kw_per_s']:g} kW/s)",
            file=out,
        )
    hashrate = summary.get("hashrate")
    if hashrate is not None and hashrate.get("held_ths") is not None:
        gain = hashrate["gain"]
        print(
            f"hashrate under the {hashrate['limit_kw']:g} kW limit: held "
            f"{hashrate['held_ths']:,.0f} TH/s ({hashrate['tuned_miners']} miners retuned) "
            f"against {hashrate['sleep_only_ths']:,.0f} TH/s sleeping alone"
            + (f" ({gain:+.1%})" if gain is not None else ""),
            file=out,
        )
    energy = summary["energy"]
    print(
        f"energy from the grid: {energy['grid_kwh']:.2f} kWh = "
        f"{energy['within_grants_kwh']:.2f} inside grants + "
        f"{energy['base_allowance_kwh']:.2f} base allowance + {energy['excess_kwh']:.2f} excess "
        f"({energy['intervals']} journaled intervals; "
        f"adds up: {'yes' if energy['adds_up'] else 'NO'})",
        file=out,
    )
    pools = summary["pools"]
    if pools is not None:
        print(
            f"pools: {pools['checked']} miners checked, {pools['unapproved']} on an "
            f"unapproved pool (action: {pools['action']})",
            file=out,
        )
    journal = summary["journal"]
    print(
        f"journal: {journal['rows']} chained rows, hash chain "
        + ("verified" if journal["verified"] else f"BROKEN: {journal['problem']}"),
        file=out,
    )
    print(
        f"time to target measured by: the {summary['measured_by']}; every deadline met: "
        f"{'yes' if summary['ok'] else 'NO'}",
        file=out,
    )


@contextlib.asynccontextmanager
async def _embedded_broker(host: str, port: int) -> AsyncIterator[None]:
    from amqtt.broker import Broker  # noqa: PLC0415 - only the demo embeds a broker

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    try:
        yield
    finally:
        await broker.shutdown()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
