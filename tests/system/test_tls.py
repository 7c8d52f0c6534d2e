"""TLS on the grid endpoint and the operator API, on loopback with certificates made by the
test: clients verify the server, the grid endpoint verifies the client's certificate, and
a reload (SIGHUP) swaps certificates for new connections without stopping anything."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from structlog.testing import capture_logs

from controller.intake import wire
from tests.conftest import API_TOKENS, KEY, KEY_ENV, api_section, free_port, load_site, site_dict
from tests.pki import CLIENT, Pki, serial_of
from tests.system.harness import Rig, rig

pytestmark = pytest.mark.system

TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass
class Certs:
    pki: Pki
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]  # a client certificate from a CA the site does not trust
    client_ca: Path  # the grid endpoint's bundle: at first, the same CA as the server's


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    pki = Pki(tmp_path, "site")
    other = Pki(tmp_path, "other")
    client_ca = tmp_path / "grid-clients.pem"
    client_ca.write_bytes(pki.ca_file.read_bytes())
    return Certs(
        pki,
        pki.issue("server", serial=1001),
        pki.issue("grid-side", usage=CLIENT),
        other.issue("stranger", usage=CLIENT),
        client_ca,
    )


def tls_site(tmp_path: Path, certs: Certs, **grid_tls: Any) -> dict[str, Any]:
    """Both listeners on loopback with TLS; the grid endpoint requires a client cert."""
    cert, key = (str(p) for p in certs.server)
    data = site_dict(tmp_path, miners=4, api={**api_section(), "tls": {"cert": cert, "key": key}})
    grid = {
        "cert": cert,
        "key": key,
        "client_ca": str(certs.client_ca),
        "require_client_cert": True,
        **grid_tls,
    }
    data["signals"]["http"] = {"listen": "127.0.0.1:0", "tls": grid}
    return data


@asynccontextmanager
async def tls_rig(tmp_path: Path, certs: Certs, **grid_tls: Any) -> AsyncIterator[Rig]:
    async with rig(load_site(tls_site(tmp_path, certs, **grid_tls))) as r:
        yield r


def grid_port(r: Rig) -> int:
    assert r.daemon.http is not None
    assert r.daemon.http.port is not None
    return r.daemon.http.port


def api_port(r: Rig) -> int:
    assert r.daemon.api is not None
    assert r.daemon.api.port is not None
    return r.daemon.api.port


async def post_signal(
    r: Rig, context: ssl.SSLContext, signal_: dict[str, Any] | None = None, *, key: bytes = KEY
) -> tuple[int, dict[str, Any]]:
    body = json.dumps(signal_ or r.curtailment(30)).encode()
    ts = int(r.clock.time())
    headers = {wire.TIMESTAMP_HEADER: str(ts), wire.SIGNATURE_HEADER: wire.sign(key, ts, body)}
    url = f"https://127.0.0.1:{grid_port(r)}/grid/v1/signals"
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(url, data=body, headers=headers, ssl=context) as reply,
    ):
        return reply.status, json.loads(await reply.text())


async def served_serial(port: int, context: ssl.SSLContext) -> int:
    """The serial of the certificate a new connection to `port` is shown."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        return serial_of(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
    finally:
        writer.close()
        await writer.wait_closed()


def signal_rows(r: Rig) -> int:
    [(count,)] = r.daemon.journal.rows("SELECT count(*) FROM signals")
    return int(count)


async def test_tls_operator_api_over_https(tmp_path: Path, certs: Certs) -> None:
    async with (
        tls_rig(tmp_path, certs) as r,
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
    ):
        base = f"127.0.0.1:{api_port(r)}"
        headers = {"Authorization": f"Bearer {API_TOKENS['viewer']}"}
        trusting = certs.pki.client_context()
        async with session.get(
            f"https://{base}/api/v1/status", headers=headers, ssl=trusting
        ) as reply:
            assert reply.status == 200
            assert (await reply.json())["miners"]["total"] == 4
        # Plain HTTP to the TLS port gets no HTTP answer at all.
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://{base}/healthz") as reply:
                pytest.fail(f"plain HTTP was answered {reply.status}")
        # A client that does not trust the site's CA refuses the server.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(f"https://{base}/healthz", ssl=ssl.create_default_context()):
                pass
        assert await served_serial(api_port(r), trusting) == 1001


async def test_tls_grid_endpoint_requires_a_client_certificate(
    tmp_path: Path, certs: Certs
) -> None:
    async with tls_rig(tmp_path, certs) as r:
        for client in (None, certs.stranger):
            with pytest.raises(aiohttp.ClientError):
                await post_signal(r, certs.pki.client_context(client))
        # TLS 1.2 shows it in the handshake itself (1.3 closes right after it).
        tls12 = certs.pki.client_context()
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await served_serial(grid_port(r), tls12)
        assert signal_rows(r) == 0  # nothing reached the inbox

        verified = certs.pki.client_context(certs.client)
        status, reply = await post_signal(r, verified)
        assert (status, reply["status"]) == (202, "received")
        # The certificate gets a client to the door; the signature still decides.
        status, reply = await post_signal(
            r, verified, r.curtailment(20, revision=2), key=b"not-the-key"
        )
        assert status == 401
        assert signal_rows(r) == 2


async def test_tls_grid_endpoint_with_an_optional_client_certificate(
    tmp_path: Path, certs: Certs
) -> None:
    async with tls_rig(tmp_path, certs, require_client_cert=False) as r:
        status, _ = await post_signal(r, certs.pki.client_context())
        assert status == 202
        # A certificate is optional, but one that is sent must chain to the CA.
        with pytest.raises(aiohttp.ClientError):
            await post_signal(r, certs.pki.client_context(certs.stranger))


async def test_tls_reload_swaps_the_certificate_and_keeps_it_when_files_are_broken(
    tmp_path: Path, certs: Certs
) -> None:
    async with tls_rig(tmp_path, certs) as r:
        verified = certs.pki.client_context(certs.client)
        api = certs.pki.client_context()
        assert await served_serial(grid_port(r), verified) == 1001
        assert await served_serial(api_port(r), api) == 1001

        certs.pki.issue("server", serial=2002)  # renewed in place, as certbot would
        with capture_logs() as logs:
            assert r.daemon.reload_tls()
        assert await served_serial(grid_port(r), verified) == 2002
        assert await served_serial(api_port(r), api) == 2002
        reloaded = [e for e in logs if e["event"] == "TLS certificate reloaded"]
        assert {e["listener"] for e in reloaded} == {"signals.http", "api"}
        assert {e["serial"] for e in reloaded} == {f"{2002:x}"}

        # A renewal caught half-way: the new certificate is there, its key is not.
        cert, key = certs.server
        renewed = certs.pki.issue("renewed", serial=3003)
        cert.write_bytes(renewed[0].read_bytes())
        with capture_logs() as logs:
            assert not r.daemon.reload_tls()
        errors = [e for e in logs if e["log_level"] == "error"]
        assert {e["listener"] for e in errors} == {"signals.http", "api"}
        assert all(
            f"{key} does not match the certificate in {cert}" in e["problem"] for e in errors
        )
        assert await served_serial(grid_port(r), verified) == 2002  # the old one, still
        assert await served_serial(api_port(r), api) == 2002

        key.unlink()
        assert not r.daemon.reload_tls()
        assert await served_serial(grid_port(r), verified) == 2002
        assert r.daemon._task is not None
        assert not r.daemon._task.done()
        status, _ = await post_signal(r, verified)
        assert status == 202

        key.write_bytes(renewed[1].read_bytes())  # the renewal completes
        assert r.daemon.reload_tls()
        assert await served_serial(grid_port(r), verified) == 3003


async def test_tls_reload_replaces_the_client_ca(tmp_path: Path, certs: Certs) -> None:
    async with tls_rig(tmp_path, certs) as r:
        assert (await post_signal(r, certs.pki.client_context(certs.client)))[0] == 202
        # The grid side moves to a new CA; the old one is dropped from the bundle.
        new_ca = Pki(tmp_path, "next")
        new_client = new_ca.issue("grid-side-next", usage=CLIENT)
        certs.client_ca.write_bytes(new_ca.ca_file.read_bytes())
        assert r.daemon.reload_tls()
        assert r.daemon.tls["signals.http"].info.client_cas == 1
        with pytest.raises(aiohttp.ClientError):
            await post_signal(r, certs.pki.client_context(certs.client))
        status, _ = await post_signal(
            r, certs.pki.client_context(new_client), r.curtailment(20, revision=2)
        )
        assert status == 202


async def test_tls_allow_plaintext_off_loopback_warns_at_start(tmp_path: Path) -> None:
    data = site_dict(
        tmp_path, miners=2, api={**api_section(), "listen": "0.0.0.0:0", "allow_plaintext": True}
    )
    data["signals"]["http"] = {"listen": "0.0.0.0:0", "allow_plaintext": True}
    with capture_logs() as logs:
        async with rig(load_site(data)):
            pass
    warned = {e["listener"]: e for e in logs if e["log_level"] == "warning" and "listener" in e}
    assert set(warned) == {"signals.http", "api"}
    assert all("allow_plaintext: true" in e["event"] for e in warned.values())
    assert all(e["host"] == "0.0.0.0" for e in warned.values())


async def test_tls_loopback_plaintext_does_not_warn(tmp_path: Path) -> None:
    with capture_logs() as logs:
        async with rig(load_site(site_dict(tmp_path, miners=2, api=api_section()))):
            pass
    assert not [e for e in logs if "allow_plaintext" in str(e["event"])]


# -- the real process ------------------------------------------------------------------------


@pytest.fixture
def process() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def connect_serial(port: int, context: ssl.SSLContext, within_s: float = 20) -> int:
    """The served certificate's serial, once the port accepts connections."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
            ):
                return serial_of(conn.getpeercert(binary_form=True))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_serial(port: int, context: ssl.SSLContext, serial: int, within_s: float = 20) -> None:
    # The signal is handled by another process; there is nothing to wait on but the port.
    deadline = time.monotonic() + within_s
    while connect_serial(port, context) != serial:
        assert time.monotonic() < deadline, f"serial {serial:x} never served"
        time.sleep(0.05)


def log_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_tls_service_reloads_on_sighup(
    tmp_path: Path, certs: Certs, process: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    data = tls_site(tmp_path, certs)
    data["signals"]["http"]["listen"] = f"127.0.0.1:{port}"
    del data["api"]
    data["logging"] = {"level": "INFO", "format": "json"}
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    log = tmp_path / "run.log"
    env = {**os.environ, KEY_ENV: KEY.decode(), "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "run", "-c", str(site)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    process.append(run)
    verified = certs.pki.client_context(certs.client)
    assert connect_serial(port, verified) == 1001

    certs.pki.issue("server", serial=2002)
    run.send_signal(signal.SIGHUP)
    wait_serial(port, verified, 2002)

    certs.server[1].write_text("garbage\n")
    run.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while not any(e["event"].startswith("TLS reload failed") for e in log_events(log)):
        assert time.monotonic() < deadline, "the failed reload was never logged"
        time.sleep(0.05)
    assert run.poll() is None
    assert connect_serial(port, verified) == 2002

    run.send_signal(signal.SIGTERM)
    assert run.wait(30) == 0
    events = log_events(log)
    loaded = [e for e in events if e["event"].startswith("TLS certificate")]
    assert [(e["event"], e["serial"]) for e in loaded] == [
        ("TLS certificate loaded", f"{1001:x}"),
        ("TLS certificate reloaded", f"{2002:x}"),
    ]
    [failed] = [e for e in events if e["event"].startswith("TLS reload failed")]
    assert failed["level"] == "error"
    assert "holds no PEM private key" in failed["problem"]
