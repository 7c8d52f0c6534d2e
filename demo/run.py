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
import os
import secrets
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import yaml

from controller import logs
from controller.adapters.mqtt_signals import GridSide
from controller.app import Daemon
from controller.clock import SystemClock
from controller.config import ConfigError, Loaded, parse
from controller.core.signals import Obligation, ObligationStatus
from controller.intake import wire
from demo import winter as demo_winter
from demo.farm import farm_from_config
from drivers.shipped import shipped
from drivers.types import Mode
from sim.farm import SimFarm

DEFAULT_FARM = shipped("sim-farm.yaml")
DEFAULT_API = "127.0.0.1:8481"  # the dashboard; a free port instead if this one is taken
GRANT_LENGTH_S = 90.0  # the curtailment episode, a restore, then the 40 s lead to the end
CURTAIL_FRACTION = 0.40
TIGHTER_FRACTION = 0.30  # what the fast-shedding families can carry within 10 s
DEADLINE_S = 10.0
SETTLE_TIMEOUT_S = 30.0
HOLD_S = 8.0  # how long the tighter revision holds before the cancel


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
    for noisy in ("amqtt", "transitions", "aiohttp"):
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
            operator = _Operator(grid, key, clock, daemon.http.port, say)
            if watch is not None:
                async with demo_winter.watching(watch, clock.time):
                    await demo_winter.play(operator, daemon, rated_kw)
            else:
                await operator.play(daemon, rated_kw)
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        obligations = sorted(
            [*daemon.supervisor.finished, *daemon.supervisor.obligations],
            key=lambda o: (o.starts_at, o.key),
        )
        summary = _summary(loaded, obligations, farm, operator.kinds, daemon)
        if watch is not None:
            summary["winter"] = demo_winter.summary(loaded, farm, daemon, watch)
            summary["ok"] = summary["ok"] and demo_winter.passed(summary["winter"])
        return summary


class _Operator:
    """The scripted grid operator."""

    def __init__(
        self,
        grid: GridSide,
        key: bytes,
        clock: SystemClock,
        http_port: int,
        say: Callable[[str], None],
    ) -> None:
        self._grid = grid
        self._key = key
        self.clock = clock
        self._http = f"http://127.0.0.1:{http_port}/grid/v1/signals"
        self._say = say
        self.kinds: dict[str, str] = {}

    async def play(self, daemon: Daemon, rated_kw: float) -> None:
        sup = daemon.supervisor
        now = self.clock.now()
        grant_end = now + timedelta(seconds=GRANT_LENGTH_S)
        await self.mqtt(
            self.grant("korem-demo-h10", round(rated_kw * 1.05), grant_end),
            f"surplus grant {round(rated_kw * 1.05)} kW until {grant_end:%H:%M:%S}",
        )
        # Stock Antminers take ~90 s to full power; the episode starts once most are up.
        await _until(lambda: (sup.measured_w or 0) >= rated_kw * 1000 * 0.9, 25)
        # Limits are fractions of the farm's full draw: the slow families are still
        # ramping up (a stock Antminer needs ~90 s), and count at full draw in the plan.
        first = round(rated_kw * CURTAIL_FRACTION)
        await self.mqtt(
            self.curtailment("evt-demo-1", 1, first),
            f"curtailment evt-demo-1 to {first} kW (40 % of the farm's {rated_kw:.0f} kW; "
            f"drawing {(sup.measured_w or 0) / 1000:.0f} kW now) within {DEADLINE_S:g} s",
        )
        await self.reached("evt-demo-1", 1)
        await asyncio.sleep(2)
        tighter = round(rated_kw * TIGHTER_FRACTION)
        await self._post(
            self.curtailment("evt-demo-1", 2, tighter),
            f"tighter revision r2 to {tighter} kW (30 %), over HTTP",
        )
        await self.reached("evt-demo-1", 2)
        # The grid holds the curtailment long enough for the farm's two deceiving units to
        # be caught by their outlets' measurements (their firmware says they sleep).
        await asyncio.sleep(HOLD_S)
        await self.mqtt(self.cancel("evt-demo-1", 3), "cancel evt-demo-1")
        remaining = (grant_end - self.clock.now()).total_seconds()
        self._say(f"waiting for the grant to end in {remaining:.0f} s")
        await asyncio.sleep(max(0.0, remaining))
        await _until(lambda: not sup.pending_deadlines(), SETTLE_TIMEOUT_S)

    def curtailment(
        self, signal_id: str, revision: int, limit_kw: int, deadline_s: float = DEADLINE_S
    ) -> dict[str, Any]:
        return {
            "type": "curtailment",
            "id": signal_id,
            "revision": revision,
            "issued_at": _iso(self.clock.now()),
            "limit_kw": limit_kw,
            "deadline_s": deadline_s,
            "emergency": False,
        }

    def grant(self, signal_id: str, granted_kw: int, end: datetime) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "type": "grant",
            "id": signal_id,
            "revision": 1,
            "issued_at": _iso(now),
            "start": _iso(now),
            "end": _iso(end),
            "granted_kw": granted_kw,
        }

    def cancel(self, signal_id: str, revision: int) -> dict[str, Any]:
        return {
            "type": "cancel",
            "id": signal_id,
            "revision": revision,
            "issued_at": _iso(self.clock.now()),
        }

    async def mqtt(self, signal: dict[str, Any], what: str) -> None:
        body = json.dumps(signal).encode()
        self.kinds[f"{signal['id']}#r{signal['revision']}"] = signal["type"]
        self._say(f"grid -> MQTT: {what}")
        await self._grid.publish(wire.seal(self._key, int(self.clock.time()), body))
        ack = await self._grid.wait_ack(signal["id"], signal["revision"])
        self._say(f"ack: {ack['status']} ({ack['detail']})")

    async def heartbeat(self) -> None:
        body = json.dumps({"type": "heartbeat", "issued_at": _iso(self.clock.now())}).encode()
        await self._grid.publish(wire.seal(self._key, int(self.clock.time()), body))

    async def _post(self, signal: dict[str, Any], what: str) -> None:
        body = json.dumps(signal).encode()
        self.kinds[f"{signal['id']}#r{signal['revision']}"] = signal["type"]
        ts = int(self.clock.time())
        self._say(f"grid -> HTTP: {what}")
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                self._http,
                data=body,
                headers={
                    wire.TIMESTAMP_HEADER: str(ts),
                    wire.SIGNATURE_HEADER: wire.sign(self._key, ts, body),
                },
            ) as reply,
        ):
            self._say(f"HTTP {reply.status}: {await reply.text()}")

    async def reached(self, signal_id: str, revision: int, deadline_s: float = DEADLINE_S) -> None:
        with contextlib.suppress(TimeoutError):
            ack = await self._grid.wait_ack(signal_id, revision, timeout_s=deadline_s + 5)
            while ack["status"] not in ("reached", "missed"):
                ack = await self._next_verdict(signal_id, revision, deadline_s)
            self._say(f"ack: {ack['status']} ({ack['detail']})")

    async def _next_verdict(
        self, signal_id: str, revision: int, deadline_s: float
    ) -> dict[str, Any]:
        for status in ("reached", "missed"):
            with contextlib.suppress(TimeoutError):
                return await self._grid.wait_ack(
                    signal_id, revision, status, timeout_s=deadline_s / 2
                )
        return {"status": "missed", "detail": "no verdict acknowledged"}


async def _progress(daemon: Daemon, farm: SimFarm, say: Callable[[str], None]) -> None:
    sup = daemon.supervisor
    while True:
        await asyncio.sleep(2)
        modes = farm.modes()
        limit = sup.limit.limit_w / 1000 if sup.limit else float("nan")
        measured = f"{sup.measured_w / 1000:7.1f}" if sup.measured_w is not None else "  stale"
        say(
            f"site {measured} kW ({sup.measured_by}; miners' true draw "
            f"{farm.total_power_w() / 1000:7.1f})  limit {limit:7.1f} kW  "
            f"mining {modes[Mode.MINING]:3d}  sleeping {modes[Mode.SLEEPING]:3d}  "
            f"cut {farm.cut_count():2d}  "
            f"commands {sup.commands_sent} ({sup.commands_failed} failed)"
        )


def _summary(
    loaded: Loaded,
    obligations: list[Obligation],
    farm: SimFarm,
    kinds: dict[str, str],
    daemon: Daemon,
) -> dict[str, Any]:
    sup = daemon.supervisor
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
                "measured_by": sup.measured_by,
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
        "measured_by": sup.measured_by,
        # Miners that reached each step of the ladder (lower power target, sleep, cut).
        "escalations": {k: len(v) for k, v in sup.escalations.items()},
        "lying_miners_detected": len(sup.lying_detected),
        "lying_miners": sorted(sup.lying_detected),
        "outlets_cut_at_end": farm.cut_count(),
        "final_draw_kw": round(farm.total_power_w() / 1000, 3),
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
    print(
        f"time to target measured by: the {summary['measured_by']}; every deadline met: "
        f"{'yes' if summary['ok'] else 'NO'}",
        file=out,
    )


async def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    # Conditions span the daemon and the simulator; polling them is simpler than events.
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.25)


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


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
