"""The chaos run's rig: real processes on loopback, and the means to watch them.

A `curtaild sim` of the demo farm (its own loopback /16, free at start), mosquitto
brokers, `curtaild run` daemons, each a subprocess with its own log; the simulator's truth
through its control API, a daemon's journal read-only (SQLite `mode=ro`), its status, its
/metrics, and the grid's end of the contract: signed signals over HTTP and MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self, cast

import aiohttp
import yaml

from controller.adapters.mqtt_signals import GridSide
from controller.config import Loaded, parse
from controller.intake import wire
from drivers.registry import default_registry
from drivers.shipped import shipped

FARM = shipped("sim-farm.yaml")
MOSQUITTO_NAMES = ("mosquitto",)
MOSQUITTO_DIRS = ("/usr/sbin", "/usr/local/sbin")  # Debian installs it off the user's PATH
# Where Debian's libfaketime (package `libfaketime`) puts the preload library.
LIBFAKETIME_GLOBS = (
    "/usr/lib/*/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)
HTTP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 60.0  # a daemon's start: imports, config, first telemetry of 300 miners
STOP_TIMEOUT_S = 60.0  # SIGTERM lets commands in flight finish (within 45 s)
API_TOKEN_NAME = "chaos-viewer"
HEARTBEAT_S = 30.0  # the demo farm's source goes stale after 120 s of silence
STEPS_BACK = ("wake", "warm", "raise", "restore")  # commands that bring draw back
SHEDS = ("lower", "sleep", "cut")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def listening_octets() -> set[int]:
    """The second octets of every 127.x.0.0/16 with a listening TCP socket now."""
    octets: set[int] = set()
    with contextlib.suppress(OSError), Path("/proc/net/tcp").open() as table:
        for line in list(table)[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # LISTEN
                address = int(fields[1].split(":")[0], 16)  # little-endian IPv4
                if address & 0xFF == 127:
                    octets.add((address >> 8) & 0xFF)
    return octets


def free_subnet() -> str:
    """A loopback /16 nothing listens on: not the demo's (127.31), not the tests' (127.64
    and up, tests/conftest.py), nor the fan-out bench's (127.100)."""
    busy = listening_octets()
    for octet in range(32, 64):
        if octet not in busy:
            return f"127.{octet}"
    raise RuntimeError("no free 127.32-63 subnet for the simulated farm")


def mosquitto_path() -> str | None:
    for name in MOSQUITTO_NAMES:
        for folder in (*os.get_exec_path(), *MOSQUITTO_DIRS):
            candidate = Path(folder, name)
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def libfaketime_path() -> str | None:
    override = os.environ.get("CURTAILD_LIBFAKETIME")
    if override:
        return override if Path(override).is_file() else None
    for pattern in LIBFAKETIME_GLOBS:
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return str(found[0])
    return None


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def now_utc() -> datetime:
    return datetime.now(UTC)


def parse_ts(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a helper task and wait for it to end; a cancel of the task waiting here (an
    interrupted run) goes on up, where a bare suppress would swallow it."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def wait_port(host: str, port: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            async with asyncio.timeout(0.5):
                _, writer = await asyncio.open_connection(host, port)
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(0.5):
                    await writer.wait_closed()
        except (OSError, TimeoutError):
            await asyncio.sleep(0.05)
            continue
        return
    raise TimeoutError(f"{host}:{port} never listened within {within_s:g} s")


# -- processes --------------------------------------------------------------------------------


# Every child started and not yet seen to exit: what an interrupted run kills on its way out.
LIVE: set[Proc] = set()


def kill_all() -> None:
    """SIGKILL every child's process group at once (a second interrupt: no time to be kind)."""
    for proc in list(LIVE):
        proc.kill_group()


class Proc:
    """A child process with its output in a log file, in a process group of its own: a
    terminal's interrupt reaches only the rig, which stops its children in order, and a
    kill takes whatever the child started with it."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.args = args
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        LIVE.add(self)
        self.started_at = time.monotonic()

    def kill_group(self) -> None:
        """SIGKILL the process group while its leader is not yet reaped (so the group's id
        cannot have been reused)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def _reap(self, timeout_s: float) -> None:
        assert self.proc is not None
        self.proc.wait(timeout_s)
        LIVE.discard(self)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill9(self) -> None:
        """A crash: SIGKILL to the whole group, nothing flushed, no goodbye."""
        assert self.proc is not None
        self.kill_group()
        self._reap(10)

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL to its group after `timeout_s`; the exit code (None: it had
        to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            LIVE.discard(self)
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        try:
            while self.proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        finally:  # interrupted while waiting, too: nothing is left behind
            if self.proc.poll() is None:
                self.kill_group()
                self._reap(10)
                killed = True
            else:
                LIVE.discard(self)
                killed = False
        return None if killed else self.proc.returncode


def curtaild_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "controller.cli", *args]


class Mosquitto:
    """A mosquitto broker on a free loopback port; with persistence, its sessions and
    queued QoS 1 messages survive a kill -9 and a restart on the same port and file."""

    def __init__(self, tmp: Path, name: str, *, persistent: bool = False) -> None:
        binary = mosquitto_path()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.port = free_port()
        folder = tmp / f"broker-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "set_tcp_nodelay true",
            # The flood queues thousands of QoS 1 messages for the daemon's session while it
            # journals them one fsync at a time; mosquitto's default (1000) would drop the rest.
            "max_queued_messages 200000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.environ.get("CURTAILD_CHAOS_BROKER_LOG") == "all":  # every packet, to debug a loss
            lines.append("log_type all")
        if os.geteuid() == 0:
            # As root mosquitto drops to its own user, which cannot write into our private
            # temporary directory (its persistence file).
            lines.append("user root")
        if persistent:
            lines += [
                "persistence true",
                f"persistence_location {folder}/",
                # Saved after every change: a kill -9 loses nothing the broker acknowledged
                # (the default saves every 30 minutes and on a clean exit only).
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        conf = folder / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.proc = Proc(f"mosquitto-{name}", [binary, "-c", str(conf)], folder / "log", {})

    async def start(self) -> None:
        self.proc.start()
        await wait_port("127.0.0.1", self.port, 10)

    def kill9(self) -> None:
        self.proc.kill9()

    async def stop(self) -> None:
        await self.proc.stop(10)


# -- the farm, its simulator and its truth ---------------------------------------------------


def _resubnet(value: object, old: str, new: str) -> object:
    if isinstance(value, str):
        return value.replace(old, new)  # a host, or a range "a.b.c.d-a.b.c.e"
    if isinstance(value, dict):
        return {k: _resubnet(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_resubnet(v, old, new) for v in value]
    return value


def farm_data(subnet: str) -> dict[str, Any]:
    """The demo farm on `subnet`: full power under the site cap (grid mode always-on),
    mining from the start, no simulated faults (scenarios set their own)."""
    data: dict[str, Any] = yaml.safe_load(FARM.read_text())
    first = data["miners"][0].get("host") or data["miners"][0]["hosts"]
    old = ".".join(first.split(".")[:2]) + "."
    data = cast("dict[str, Any]", _resubnet(data, old, subnet + "."))
    data["grid"]["mode"] = "always-on"
    simulation = data.setdefault("simulation", {})
    simulation["start_mode"] = "mining"
    simulation["faults"] = {}
    data["logging"] = {"level": "INFO", "format": "json"}
    return data


def api_token() -> tuple[str, dict[str, Any]]:
    token = secrets.token_urlsafe(24)
    entry = {
        "name": API_TOKEN_NAME,
        "role": "viewer",
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
    }
    return token, entry


class SimApi:
    """The simulated farm's control API (drivers/sim/control.py): its true state."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self._session = session
        self._base = f"http://127.0.0.1:{port}/v1"

    async def farm(self) -> dict[str, Any]:
        return await self._json("GET", "/farm")

    async def miners(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = await self._json("GET", "/miners")  # type: ignore[assignment]
        return data

    async def reset(self, mode: str = "mining") -> None:
        await self._json("POST", "/reset", {"mode": mode})

    async def fault(self, miner_id: str, mode: str) -> None:
        await self._json("PUT", f"/miners/{miner_id}/fault", {"mode": mode})

    async def _json(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with self._session.request(
            method, self._base + path, json=body, timeout=timeout
        ) as reply:
            reply.raise_for_status()
            data: dict[str, Any] = await reply.json()
            return data


@dataclass
class Sample:
    """The farm's truth at one instant (monotonic seconds)."""

    t: float
    power_kw: float
    starts: int
    cuts: int


@dataclass
class Watch:
    """Samples the simulator's truth in the background."""

    api: SimApi
    interval_s: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chaos.watch")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    def between(self, start: float, end: float = float("inf")) -> list[Sample]:
        return [s for s in self.samples if start <= s.t <= end]

    async def _run(self) -> None:
        while True:
            try:
                farm = await self.api.farm()
                self.samples.append(
                    Sample(
                        time.monotonic(), farm["power_w"] / 1000, int(farm["starts"]), farm["cuts"]
                    )
                )
            except (aiohttp.ClientError, TimeoutError):
                self.errors += 1
            await asyncio.sleep(self.interval_s)


# -- the daemon ------------------------------------------------------------------------------


class Journal:
    """A daemon's journal, read-only beside it (or after it died)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        uri = f"file:{self.path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as db:
            return list(db.execute(sql, params))

    def count(self, table: str) -> int:
        [(n,)] = self.rows(f"SELECT count(*) FROM {table}")
        return int(n)

    def max_seq(self, table: str) -> int:
        [(n,)] = self.rows(f"SELECT coalesce(max(seq), 0) FROM {table}")
        return int(n)

    def decided(self, *, after_seq: int = 0, upto_seq: int | None = None) -> dict[str, set[str]]:
        """Every miner each kind of action was decided for (Journal.decision_actions)."""
        out: dict[str, set[str]] = {}
        sql = "SELECT seq, actions FROM decisions WHERE seq > ?"
        params: tuple[Any, ...] = (after_seq,)
        if upto_seq is not None:
            sql += " AND seq <= ?"
            params = (after_seq, upto_seq)
        for _, blob in self.rows(sql, params):
            grouped: dict[str, dict[str, list[str]]] = json.loads(zlib.decompress(blob))
            for kind, by_reason in grouped.items():
                for miners in by_reason.values():
                    out.setdefault(kind, set()).update(miners)
        return out

    def decisions_at(self, kinds: tuple[str, ...]) -> list[tuple[datetime, set[str]]]:
        """When each decision with actions of `kinds` was taken, and for which miners."""
        out = []
        for at, blob in self.rows("SELECT at, actions FROM decisions ORDER BY seq"):
            grouped: dict[str, dict[str, list[str]]] = json.loads(zlib.decompress(blob))
            miners = {m for kind in kinds for ms in grouped.get(kind, {}).values() for m in ms}
            if miners:
                out.append((parse_ts(at), miners))
        return out

    def commands(self, actions: tuple[str, ...]) -> list[tuple[str, str, datetime, str]]:
        """(miner, action, started_at, outcome) of every command of these kinds."""
        marks = ",".join("?" * len(actions))
        rows = self.rows(
            "SELECT miner_id, action, started_at, outcome FROM commands "
            f"WHERE action IN ({marks}) ORDER BY seq",
            actions,
        )
        return [(str(m), str(a), parse_ts(s), str(o)) for m, a, s, o in rows]

    def finished(self, since: datetime, until: datetime) -> list[tuple[str, str, datetime]]:
        """(miner, action, finished_at) of every command that finished in [since, until]:
        as the daemon counts them (curtaild_commands_sent counts a command once it is over)."""
        rows = self.rows("SELECT miner_id, action, finished_at FROM commands ORDER BY seq")
        out = [(str(m), str(a), parse_ts(f)) for m, a, f in rows]
        return [(m, a, f) for m, a, f in out if since <= f <= until]

    def shed_decisions(self) -> list[tuple[int, datetime, dict[str, set[str]]]]:
        """(seq, at, {kind: miners}) of every decision that sheds (lower, sleep or cut)."""
        out = []
        for seq, at, blob in self.rows("SELECT seq, at, actions FROM decisions ORDER BY seq"):
            grouped: dict[str, dict[str, list[str]]] = json.loads(zlib.decompress(blob))
            kinds = {
                kind: {m for ms in grouped.get(kind, {}).values() for m in ms} for kind in SHEDS
            }
            kinds = {kind: miners for kind, miners in kinds.items() if miners}
            if kinds:
                out.append((int(seq), parse_ts(at), kinds))
        return out

    def last_failure(self, miner_id: str) -> datetime | None:
        """When the miner's last failed command finished."""
        [(at,)] = self.rows(
            "SELECT max(finished_at) FROM commands WHERE miner_id=? AND outcome NOT IN "
            "('ok', 'withdrawn')",
            (miner_id,),
        )
        return parse_ts(at) if at else None

    def obligation(self, key: str) -> dict[str, Any] | None:
        rows = self.rows(
            "SELECT status, starts_at, due_at, reached_at, measured_w, measured_by, limit_w "
            "FROM obligations WHERE key=?",
            (key,),
        )
        if not rows:
            return None
        status, starts, due, reached, measured, by, limit = rows[0]
        return {
            "status": status,
            "starts_at": parse_ts(starts),
            "due_at": parse_ts(due),
            "reached_at": parse_ts(reached) if reached else None,
            "measured_w": measured,
            "measured_by": by,
            "limit_w": limit,
        }

    def events(self, kind: str) -> list[tuple[datetime, str, str]]:
        rows = self.rows(
            "SELECT at, subject, detail FROM events WHERE kind=? ORDER BY seq", (kind,)
        )
        return [(parse_ts(a), str(s), str(d)) for a, s, d in rows]


class Daemon:
    """One `curtaild run` process on a site config of its own."""

    def __init__(
        self,
        rig: Rig,
        name: str,
        *,
        broker: Mosquitto,
        journal: Path,
        mode: str = "always-on",
        client_id: str | None = None,
        edit: Callable[[dict[str, Any]], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.rig = rig
        self.name = name
        self.site_id = f"chaos-{name}"
        self.http_port = free_port()
        self.api_port = free_port()
        self.token, entry = api_token()
        data = copy.deepcopy(rig.farm)
        data["site"]["id"] = self.site_id
        data["grid"]["mode"] = mode
        data["signals"]["mqtt"] = {
            "url": f"mqtt://127.0.0.1:{broker.port}",
            "client_id": client_id or f"curtaild-{self.site_id}",
        }
        data["signals"]["http"] = {"listen": f"127.0.0.1:{self.http_port}"}
        data["api"] = {"listen": f"127.0.0.1:{self.api_port}", "tokens": [entry]}
        data["journal"]["path"] = str(journal)
        if edit is not None:
            edit(data)
        self.data = data
        self.config = rig.tmp / f"site-{name}.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.journal = Journal(journal)
        self.env = {**rig.env, **(env or {})}
        self.runs: list[Proc] = []

    @property
    def proc(self) -> Proc:
        return self.runs[-1]

    def start(self) -> Proc:
        n = len(self.runs) + 1
        proc = Proc(
            f"curtaild-{self.name}-{n}",
            curtaild_args("run", "-c", str(self.config)),
            self.rig.tmp / f"run-{self.name}-{n}.log",
            self.env,
        )
        proc.start()
        self.runs.append(proc)
        return proc

    async def ready(self, within_s: float = START_TIMEOUT_S) -> float:
        """Seconds from this run's start until /healthz says it is controlling."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"{self.proc.name} exited {self.proc.returncode()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                health = await self.get_json("/healthz")
                if health.get("status") in ("ok", "degraded"):
                    return time.monotonic() - self.proc.started_at
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.proc.name} not ready within {within_s:g} s")

    async def get_json(self, path: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.rig.http.get(
            f"http://127.0.0.1:{self.api_port}{path}", headers=headers, timeout=timeout
        ) as reply:
            data: dict[str, Any] = await reply.json(content_type=None)
            return data

    async def status(self) -> dict[str, Any]:
        return await self.get_json("/api/v1/status")

    async def metrics(self) -> dict[str, float]:
        """/metrics as {'name{labels}': value}."""
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with self.rig.http.get(
            f"http://127.0.0.1:{self.api_port}/metrics", timeout=timeout
        ) as reply:
            text = await reply.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """POST /grid/v1/signals; the status and the JSON answer ({} if none)."""
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with self.rig.http.post(
            f"http://127.0.0.1:{self.http_port}/grid/v1/signals",
            data=body,
            headers=headers,
            timeout=timeout,
        ) as reply:
            text = await reply.text()
            try:
                data = json.loads(text)
            except ValueError:
                data = {"raw": text[:200]}
            return reply.status, data if isinstance(data, dict) else {"raw": data}

    async def stop(self) -> int | None:
        return await self.proc.stop()


# -- the grid --------------------------------------------------------------------------------


class Grid:
    """The grid operator: signs with the source's key, sends over HTTP or MQTT."""

    def __init__(self, rig: Rig, daemon: Daemon) -> None:
        self.rig = rig
        self.daemon = daemon
        self.key = rig.key

    def signed_headers(self, body: bytes, ts: int | None = None) -> dict[str, str]:
        stamp = int(time.time()) if ts is None else ts
        return {
            wire.TIMESTAMP_HEADER: str(stamp),
            wire.SIGNATURE_HEADER: wire.sign(self.key, stamp, body),
        }

    def sealed(self, signal_: dict[str, Any], ts: int | None = None) -> bytes:
        return wire.seal(self.key, int(time.time()) if ts is None else ts, encode(signal_))

    async def post(
        self, signal_: dict[str, Any], *, clock_offset_s: int = 0
    ) -> tuple[int, dict[str, Any]]:
        """POST a signal signed now, on a clock `clock_offset_s` from this machine's."""
        body = encode(signal_)
        ts = int(time.time()) + clock_offset_s
        return await self.daemon.post(body, self.signed_headers(body, ts))

    async def heartbeats(self, every_s: float = HEARTBEAT_S) -> None:
        """A signed heartbeat over HTTP every `every_s`, whatever else happens."""
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await self.post({"type": "heartbeat", "issued_at": iso(now_utc())})

    def side(self, client_id: str) -> GridSide:
        return GridSide(
            "127.0.0.1",
            self.daemon_broker_port(),
            site_id=self.daemon.site_id,
            client_id=client_id,
        )

    def daemon_broker_port(self) -> int:
        url: str = self.daemon.data["signals"]["mqtt"]["url"]
        return int(url.rsplit(":", 1)[1])


def encode(signal_: dict[str, Any]) -> bytes:
    return json.dumps(signal_).encode()


def curtailment(
    signal_id: str,
    revision: int,
    limit_kw: float,
    deadline_s: float = 10.0,
    *,
    end: datetime | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "curtailment",
        "id": signal_id,
        "revision": revision,
        "issued_at": iso(now_utc()),
        "limit_kw": limit_kw,
        "deadline_s": deadline_s,
        "emergency": False,
    }
    if end is not None:
        out["end"] = iso(end)
    return out


def cancel(signal_id: str, revision: int) -> dict[str, Any]:
    return {"type": "cancel", "id": signal_id, "revision": revision, "issued_at": iso(now_utc())}


def grant(signal_id: str, granted_kw: float, length_s: float) -> tuple[dict[str, Any], datetime]:
    start = now_utc().replace(microsecond=0)
    end = start + timedelta(seconds=length_s)
    signal_ = {
        "type": "grant",
        "id": signal_id,
        "revision": 1,
        "issued_at": iso(start),
        "start": iso(start),
        "end": iso(end),
        "granted_kw": granted_kw,
    }
    return signal_, end


async def wait_ack(
    side: GridSide, signal_id: str, revision: int, statuses: tuple[str, ...], within_s: float
) -> dict[str, Any] | None:
    """The first ack for (id, revision) with one of `statuses`, or None."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for ack in list(side.acks):
            if (
                ack.get("id") == signal_id
                and ack.get("revision") == revision
                and ack.get("status") in statuses
            ):
                return ack
        await asyncio.sleep(0.05)
    return None


async def wait_for(condition: Callable[[], bool], within_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + within_s
    # The conditions span other processes: there is no event to wait on.
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(interval_s)
    return condition()


# -- the rig ---------------------------------------------------------------------------------


@dataclass
class Rig:
    """One simulated farm for the whole run, and what every scenario shares."""

    tmp: Path
    subnet: str
    farm: dict[str, Any]
    loaded: Loaded
    key: bytes
    env: dict[str, str]
    http: aiohttp.ClientSession
    sim: Proc
    api: SimApi

    @classmethod
    @contextlib.asynccontextmanager
    async def up(cls, tmp: Path) -> AsyncIterator[Self]:
        subnet = free_subnet()
        farm = farm_data(subnet)
        key_env: str = farm["signals"]["sources"][0]["key"]["env"]
        key = secrets.token_hex(32).encode()
        env = {**os.environ, key_env: key.decode(), "PYTHONUNBUFFERED": "1"}
        os.environ[key_env] = key.decode()  # parse() below resolves it
        loaded = parse(yaml.safe_dump(farm), origin="chaos farm")
        sim_config = tmp / "farm.yaml"
        sim_config.write_text(yaml.safe_dump(farm))
        control_port = free_port()
        sim = Proc(
            "curtaild-sim",
            curtaild_args("sim", "-c", str(sim_config), "--control", f"127.0.0.1:{control_port}"),
            tmp / "sim.log",
            env,
        )
        sim.start()
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as http:
            try:
                await wait_port("127.0.0.1", control_port, START_TIMEOUT_S)
                rig = cls(
                    tmp, subnet, farm, loaded, key, env, http, sim, SimApi(http, control_port)
                )
                yield rig
            finally:
                await sim.stop(20)

    @property
    def rated_kw(self) -> float:
        return sum(m.rated_power_w for m in self.loaded.miners) / 1000

    @property
    def base_load_kw(self) -> float:
        meter = self.farm.get("simulation", {}).get("meter", {})
        return float(meter.get("base_load_kw", 0.0))

    def ramp_down_s(self, driver: str) -> float:
        return default_registry().get(driver).traits.ramp_down_s

    def driver_of(self) -> dict[str, str]:
        return {m.id: m.driver for m in self.loaded.miners}

    async def steady(
        self, *, within_s: float = 240.0, band: float = 0.005, hold_s: float = 4.0
    ) -> float:
        """Wait until the farm's true draw holds within `band` for `hold_s`; that draw (kW)."""
        deadline = time.monotonic() + within_s
        since: float | None = None
        reference = -1.0
        while time.monotonic() < deadline:
            power = float((await self.api.farm())["power_w"]) / 1000
            now = time.monotonic()
            if abs(power - reference) > band * max(reference, 1.0):
                since, reference = now, power
            elif since is not None and now - since >= hold_s:
                return power
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the farm's draw never settled (last {reference:.1f} kW)")


# -- what every scenario shares ----------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much of each scenario a run does."""

    signals: int  # hostile signals in the flood
    kills: tuple[float, ...]  # seconds after the signal at which each round's daemon dies
    outage_s: float  # how long the broker stays dead
    grant_s: float = 120.0  # the surplus grant the clock scenario steps within


@dataclass
class Result:
    """One scenario's verdict: named criteria, figures, notes."""

    scenario: str
    criteria: dict[str, dict[str, object]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    started: float = field(default_factory=time.monotonic)
    duration_s: float = 0.0

    def check(self, name: str, ok: bool, **detail: object) -> bool:
        self.criteria[name] = {"ok": bool(ok), **detail}
        return bool(ok)

    @property
    def ok(self) -> bool | None:
        if self.skipped is not None:
            return None
        return bool(self.criteria) and all(c["ok"] for c in self.criteria.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "ok": self.ok,
            "skipped": self.skipped,
            "duration_s": round(self.duration_s, 1),
            "criteria": self.criteria,
            "figures": self.figures,
            "notes": self.notes,
        }


class Stage:
    """A scenario's brokers and daemons, all stopped when it ends, however it ends."""

    def __init__(self, rig: Rig, name: str) -> None:
        self.rig = rig
        self.name = name
        self.brokers: list[Mosquitto] = []
        self.daemons: list[Daemon] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Every process is stopped even if something before fails or is interrupted
        # (Proc.stop kills what it could not stop); the first error is raised once all are
        # down. What the helper tasks raised as they ended is theirs: not the stage's.
        errors: list[BaseException] = []
        for task in self.tasks:
            try:
                await cancel_and_wait(task)
            except Exception:  # a heartbeat's failure, not the stage's
                continue
            except BaseException as err:  # a cancel of the run: stop the processes first
                errors.append(err)
        procs = [(run, STOP_TIMEOUT_S) for daemon in self.daemons for run in daemon.runs]
        procs += [(broker.proc, 10.0) for broker in self.brokers]
        for proc, timeout_s in procs:
            try:
                await proc.stop(timeout_s)
            except BaseException as err:  # a cancel too: the rest are stopped first
                errors.append(err)
        if errors:
            raise errors[0]

    async def broker(self, *, persistent: bool = False) -> Mosquitto:
        name = f"{self.name}-{len(self.brokers) + 1}"
        broker = Mosquitto(self.rig.tmp, name, persistent=persistent)
        self.brokers.append(broker)
        await broker.start()
        return broker

    async def up(
        self,
        *,
        persistent: bool = False,
        journal: Path | None = None,
        mode: str = "always-on",
        env: dict[str, str] | None = None,
        heartbeats: bool = True,
    ) -> tuple[Daemon, Grid]:
        """A broker, and a daemon on it, started and controlling; the grid's end of it,
        which sends heartbeats as a grid does (the demo farm's source falls back to its base
        allowance after 120 s of silence), unless told not to."""
        broker = await self.broker(persistent=persistent)
        daemon = Daemon(
            self.rig,
            self.name,
            broker=broker,
            journal=journal or self.rig.tmp / f"journal-{self.name}.db",
            mode=mode,
            env=env,
        )
        self.daemons.append(daemon)
        daemon.start()
        await daemon.ready()
        grid = Grid(self.rig, daemon)
        if heartbeats:
            self.tasks.append(asyncio.create_task(grid.heartbeats(), name="chaos.heartbeats"))
        return daemon, grid


@contextlib.asynccontextmanager
async def grid_side(grid: Grid, client_id: str) -> AsyncIterator[GridSide]:
    """The grid's MQTT end, once the daemon's status says online; leaving it never raises
    (its broker may have died under it)."""
    side = grid.side(client_id)
    await side.__aenter__()
    try:
        await online(side)
        yield side
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await side.__aexit__(None, None, None)


async def online(side: GridSide, within_s: float = 20.0) -> dict[str, Any]:
    def up() -> bool:
        return side.status is not None and side.status.get("state") == "online"

    if not await wait_for(up, within_s):
        raise TimeoutError(f"no online status within {within_s:g} s")
    assert side.status is not None
    return side.status


async def verdict(side: GridSide, signal_id: str, revision: int, within_s: float) -> dict[str, Any]:
    """The signal's deadline verdict (reached or missed), or status "none"."""
    ack = await wait_ack(side, signal_id, revision, ("reached", "missed"), within_s)
    return ack or {"status": "none", "detail": f"no verdict within {within_s:g} s"}


def time_to_target(ob: dict[str, Any] | None) -> float | None:
    if ob is None or ob["reached_at"] is None:
        return None
    elapsed: timedelta = ob["reached_at"] - ob["starts_at"]
    return round(elapsed.total_seconds(), 2)


def met(ob: dict[str, Any] | None) -> bool:
    """Reached by its deadline: a `reached` after the deadline is not met."""
    return (
        ob is not None
        and ob["status"] == "reached"
        and ob["reached_at"] is not None
        and ob["reached_at"] <= ob["due_at"]
    )


def held_state(side: GridSide) -> str:
    """The held signals and the limit, as the retained status says."""
    status = side.status or {}
    signals = sorted(f"{s['id']}#r{s['revision']}" for s in status.get("signals", []))
    return f"{','.join(signals)} limit {status.get('limit_kw')}"


def journal_writable(side: GridSide) -> bool | None:
    status = side.status or {}
    writable = status.get("journal", {}).get("writable")
    return writable if isinstance(writable, bool) else None


class MissingMetricError(KeyError):
    """A metric the run reads is not on /metrics (renamed, or never exported)."""

    def __str__(self) -> str:
        return f"{self.args[0]} is not on /metrics"


def metric_or_none(metrics: dict[str, float], name: str) -> float | None:
    """A counter or gauge from /metrics, with or without the `_total` suffix; None if absent."""
    for key in (name, f"{name}_total"):
        if key in metrics:
            return metrics[key]
    return None


def metric(metrics: dict[str, float], name: str) -> float:
    """A counter or gauge from /metrics, with or without the `_total` suffix. A missing one
    is an error, never a 0: a renamed metric must not make a check pass."""
    value = metric_or_none(metrics, name)
    if value is None:
        raise MissingMetricError(name)
    return value


def wall_to_monotonic(at: datetime) -> float:
    """A wall-clock instant (a journal's timestamp) on this process's monotonic clock."""
    return time.monotonic() - (time.time() - at.timestamp())


def held_under(truth: dict[str, Any]) -> bool:
    """The true draw stayed under the limit: over no sample, and some samples were taken."""
    return bool(truth["samples"] > 0 and truth["over"] == 0)


def truth_over(rig: Rig, watch: Watch, limit_kw: float, start: float, end: float) -> dict[str, Any]:
    """The worst true site draw (the miners plus the meter's base load) between two
    instants, against a limit (judge it with `held_under`: no samples is no evidence)."""
    samples = watch.between(start, end)
    sites = [s.power_kw + rig.base_load_kw for s in samples]
    return {
        "samples": len(samples),
        "max_site_kw": round(max(sites, default=float("nan")), 1),
        "limit_kw": limit_kw,
        "over": sum(kw > limit_kw for kw in sites),
    }


async def restored(watch: Watch, since: float, kw: float, within_s: float) -> float | None:
    """Seconds from `since` until the farm's true draw is at least `kw`; None if never."""

    def back() -> bool:
        last = watch.samples[-1] if watch.samples else None
        return last is not None and last.t > since and last.power_kw >= kw

    if not await wait_for(back, within_s, 0.5):
        return None
    return round(watch.samples[-1].t - since, 1)
