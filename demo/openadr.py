"""`curtaild demo --scenario openadr`: the demo farm enrolled with an OpenADR 2.0b VTN.

openleadr's own VTN (OpenADRServer) plays the grid on loopback, over HTTPS with client
certificates made for this run (a throwaway CA in the demo's scratch folder). The farm
starts mining; the site registers as a VEN; the VTN dispatches a SIMPLE level-2 event
(40 % of the farm's rated draw) with a 10 s ramp-up, then modifies it to level 3 (30 %),
and the event ends after its active period. Each modification is a deadline the site
meter judges, as for any signal; the summary is the usual one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from openleadr import OpenADRServer, objects, utils

from controller.clock import SystemClock
from controller.config import Loaded
from demo.farm import farm_from_config
from demo.grid import until

if TYPE_CHECKING:
    from controller.app import Daemon
    from controller.core.signals import Obligation
    from sim.farm import SimFarm

SOURCE = "demo-vtn"
VTN_ID = "DEMO-VTN"
POLL_S = 1.0
RAMP_UP_S = 10.0  # the event's ramp-up: the deadline of its first modification
EVENT_S = 30.0  # the active period
LEVELS = {1: 0.6, 2: 0.4, 3: 0.3}  # SIMPLE level -> fraction of the farm's rated draw
WAKE_TIMEOUT_S = 40.0
SETTLE_TIMEOUT_S = 30.0


def overlay(data: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The demo farm's config as a VEN of the VTN on `port`: always-on, mining from the
    start, signals from the VTN only (no broker), certificates made in `tmp`."""
    ca, ven = make_pki(tmp)
    port = free_port()
    rated_kw = _rated_kw(data)
    data["grid"]["mode"] = "always-on"
    data["signals"].pop("mqtt", None)  # no broker: the grid speaks OpenADR
    data["signals"]["sources"].append({"id": SOURCE, "heartbeat_timeout_s": 60, "on_stale": "hold"})
    data["grid"]["openadr"] = {
        "vtn_url": f"https://127.0.0.1:{port}/OpenADR2/Simple/2.0b",
        "ven_name": data["site"]["id"],
        "source": SOURCE,
        "cert": str(ven[0]),
        "key": str(ven[1]),
        "vtn_ca": str(ca),
        "poll_interval_s": POLL_S,
        "reregister_max_s": 5,
        "levels": {level: {"kw": round(rated_kw * f)} for level, f in LEVELS.items()},
    }
    data["simulation"]["start_mode"] = "mining"
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rated_kw(data: dict[str, Any]) -> float:
    total = 0.0
    for entry in data["miners"]:
        first, _, last = str(entry["hosts"]).partition("-")
        count = int(ipaddress.IPv4Address(last)) - int(ipaddress.IPv4Address(first)) + 1
        total += count * entry["rated_power_w"] / 1000
    return total


def make_pki(folder: Path) -> tuple[Path, tuple[Path, Path]]:
    """A CA, the VTN's server certificate (vtn.crt/.key, for 127.0.0.1) and the VEN's
    client certificate (ven.crt/.key); returns (CA file, VEN pair)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "curtaild demo CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    ca_file = folder / "demo-ca.crt"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(stem: str, usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
        own = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
            .issuer_name(name)
            .public_key(own.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            address = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
            builder = builder.add_extension(x509.SubjectAlternativeName([address]), critical=False)
        cert = builder.sign(key, hashes.SHA256())
        paths = folder / f"{stem}.crt", folder / f"{stem}.key"
        paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[1].write_bytes(
            own.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return paths

    leaf("vtn", ExtendedKeyUsageOID.SERVER_AUTH)
    return ca_file, leaf("ven", ExtendedKeyUsageOID.CLIENT_AUTH)


class DemoVtn:
    """openleadr's VTN as the grid operator: it accepts the VEN whose certificate it sees
    at registration, requests its telemetry every few seconds, and dispatches events."""

    def __init__(self, tmp: Path, port: int, say: Callable[[str], None]) -> None:
        self.say = say
        self.vens: dict[str, dict[str, Any]] = {}
        self.opts: list[tuple[str, int, str]] = []
        self.usage_kw: list[float] = []
        self.server = OpenADRServer(
            vtn_id=VTN_ID,
            http_port=port,
            http_host="127.0.0.1",
            http_cert=str(tmp / "vtn.crt"),
            http_key=str(tmp / "vtn.key"),
            http_ca_file=str(tmp / "demo-ca.crt"),
            requested_poll_freq=timedelta(seconds=POLL_S),
            ven_lookup=self.lookup,
            show_fingerprint=False,
        )
        self.server.add_handler("on_create_party_registration", self._register)
        self.server.add_handler("on_register_report", self._reports)

    def lookup(self, ven_id: str) -> dict[str, Any] | None:
        return self.vens.get(ven_id)

    def _register(self, payload: dict[str, Any]) -> tuple[str, str]:
        ven_id = payload.get("ven_id") or f"ven-{uuid.uuid4().hex[:8]}"
        registration = f"reg-{uuid.uuid4().hex[:8]}"
        self.vens[ven_id] = {
            "ven_id": ven_id,
            "fingerprint": payload["fingerprint"],
            "registration_id": registration,
        }
        self.say(f"VTN: registered VEN {payload['ven_name']} as {ven_id}")
        return ven_id, registration

    def _reports(self, report: dict[str, Any]) -> list[tuple[Any, ...]]:
        def usage(values: list[tuple[datetime, float]]) -> None:
            self.usage_kw.extend(v for _, v in values)

        return [
            (rd["r_id"], usage, timedelta(seconds=5))
            for rd in report["report_descriptions"]
            if rd["r_id"] == "site-meter"
        ]

    def _opted(self, ven_id: str, event_id: str, opt_type: str) -> None:
        del ven_id
        self.opts.append((event_id, 0, opt_type))
        self.say(f"VTN: {event_id}: {opt_type}")

    @property
    def ven_id(self) -> str:
        return next(iter(self.vens))

    def dispatch(self, event_id: str, level: int, start: datetime, seconds: float) -> None:
        self.server.add_event(
            ven_id=self.ven_id,
            signal_name="SIMPLE",
            signal_type="level",
            intervals=[
                objects.Interval(
                    dtstart=start, duration=timedelta(seconds=seconds), signal_payload=level
                )
            ],
            event_id=event_id,
            ramp_up_period=timedelta(seconds=RAMP_UP_S),
            callback=self._opted,
        )

    def modify(self, event_id: str, level: int) -> None:
        events = self.server.events[self.ven_id]
        event = utils.find_by(events, "event_descriptor.event_id", event_id)
        for signal in event.event_signals:
            for interval in signal.intervals:
                interval.signal_payload = level
        utils.increment_event_modification_number(event)
        self.server.events_updated[self.ven_id] = True


@contextlib.asynccontextmanager
async def running(vtn: DemoVtn, out: TextIO) -> AsyncIterator[DemoVtn]:
    # openleadr prints a banner on stdout, where --json writes the summary.
    with contextlib.redirect_stdout(out):
        await vtn.server.run()
    try:
        yield vtn
    finally:
        await vtn.server.stop()


async def play(vtn: DemoVtn, daemon: Daemon, rated_kw: float) -> None:
    """Register, a level-2 event with a ramp-up, a modification to level 3, the end."""
    sup = daemon.supervisor
    ven = daemon.openadr
    assert ven is not None
    await until(ven.registered.is_set, SETTLE_TIMEOUT_S)
    await until(lambda: (sup.draw.measured_w or 0) >= rated_kw * 1000 * 0.9, WAKE_TIMEOUT_S)
    start = datetime.now(UTC) + timedelta(seconds=RAMP_UP_S)
    vtn.say(
        f"VTN: event demo-1, SIMPLE level 2 ({LEVELS[2]:.0%} of {rated_kw:.0f} kW) from "
        f"{start:%H:%M:%S} for {EVENT_S:g} s, ramp-up {RAMP_UP_S:g} s"
    )
    vtn.dispatch("demo-1", 2, start, EVENT_S)
    first = f"{SOURCE}:demo-1#r1"
    await until(lambda: _settled(daemon, first), RAMP_UP_S + SETTLE_TIMEOUT_S)
    await asyncio.sleep(3)
    vtn.say(f"VTN: modification 1 of demo-1: SIMPLE level 3 ({LEVELS[3]:.0%})")
    vtn.modify("demo-1", 3)
    second = f"{SOURCE}:demo-1#r3"
    await until(lambda: _settled(daemon, second), SETTLE_TIMEOUT_S)
    remaining = (start + timedelta(seconds=EVENT_S) - datetime.now(UTC)).total_seconds()
    vtn.say(f"VTN: the event ends in {max(0.0, remaining):.0f} s")
    await asyncio.sleep(max(0.0, remaining) + 2)
    await until(lambda: not sup.pending_deadlines(), SETTLE_TIMEOUT_S)
    if vtn.usage_kw:
        vtn.say(f"VTN: {len(vtn.usage_kw)} TELEMETRY_USAGE values, last {vtn.usage_kw[-1]:.1f} kW")


def _settled(daemon: Daemon, key: str) -> bool:
    deadlines = daemon.supervisor.deadlines
    return any(ob.key == key for ob in deadlines.finished)


Summarize = Callable[["Loaded", list["Obligation"], "SimFarm", dict[str, str], "Daemon"], Any]


async def scenario(loaded: Loaded, tmp: Path, out: TextIO, summarize: Summarize) -> dict[str, Any]:
    """The farm, the VTN and the daemon; the usual summary of every deadline."""
    from controller.app import Daemon  # noqa: PLC0415 - demo/run.py's own import order

    clock = SystemClock()
    openadr = loaded.config.grid.openadr
    assert openadr is not None
    port = int(openadr.vtn_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    farm = farm_from_config(loaded, clock.time)
    rated_kw = sum(m.rated_power_w for m in loaded.miners) / 1000
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", file=out, flush=True)

    vtn = DemoVtn(tmp, port, say)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running(vtn, out))
        await stack.enter_async_context(farm)
        say(f"simulated farm: {len(farm.miners)} miners, {rated_kw:g} kW rated, mining")
        say(f"VTN (openleadr OpenADRServer) at {openadr.vtn_url}, client certificates")
        daemon = await stack.enter_async_context(Daemon(loaded, clock, tune_gc=True))
        await play(vtn, daemon, rated_kw)
        deadlines = daemon.supervisor.deadlines
        obligations = sorted(
            [*deadlines.finished, *deadlines.pending], key=lambda o: (o.starts_at, o.key)
        )
        summary: dict[str, Any] = summarize(loaded, obligations, farm, {}, daemon)
        summary["openadr"] = {
            "registrations": daemon.openadr.registrations if daemon.openadr else 0,
            "opt_responses": [opt for _, _, opt in vtn.opts],
            "telemetry_usage_values": len(vtn.usage_kw),
        }
        return summary
