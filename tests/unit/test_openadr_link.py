"""The VEN's wire (controller/adapters/openadr_link.py) against a hostile or large VTN
reply over real HTTPS with client certificates on loopback: a DOCTYPE is refused (in a
subprocess, so that a regression that crashes the parser cannot take the test run with
it), a reply far above 64 KB is read whole, one above the cap is refused, and one
unreadable event is refused alone."""

from __future__ import annotations

import ssl
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from lxml import etree
from openleadr import objects
from openleadr.messaging import create_message

from controller.adapters.openadr_link import (
    MAX_REPLY_BYTES,
    VtnLink,
    VtnReplyError,
    parse_reply,
    xml_text,
)
from controller.config import ConfigError, parse
from controller.tls import TlsFiles, client_context
from tests.conftest import free_port, site_dict
from tests.pki import CLIENT, Pki

REPO = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC).replace(microsecond=0)


def distribute(n: int, *, intervals: int = 1) -> str:
    events = [
        objects.Event(
            event_descriptor=objects.EventDescriptor(
                event_id=f"e{i}",
                modification_number=0,
                market_context="http://programme",
                event_status="far",
                created_date_time=NOW,
            ),
            active_period=objects.ActivePeriod(
                dtstart=NOW + timedelta(minutes=5), duration=timedelta(minutes=intervals)
            ),
            event_signals=[
                objects.EventSignal(
                    intervals=[
                        objects.Interval(
                            dtstart=NOW + timedelta(minutes=5 + k),
                            duration=timedelta(minutes=1),
                            signal_payload=1,
                        )
                        for k in range(intervals)
                    ],
                    signal_name="SIMPLE",
                    signal_type="level",
                    signal_id="s",
                )
            ],
            targets=[objects.Target(ven_id="ven")],
        )
        for i in range(n)
    ]
    message: str = create_message(
        "oadrDistributeEvent", request_id="r", vtn_id="vtn", events=[asdict(e) for e in events]
    )
    return message


@asynccontextmanager
async def replying(tmp_path: Path, body: bytes, *, chunked: bool = False) -> AsyncIterator[VtnLink]:
    """A VTN on loopback that answers every POST with `body`, and a VtnLink to it."""
    pki = Pki(tmp_path, "grid")
    server, client = pki.issue("vtn"), pki.issue("ven", usage=CLIENT)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*server)
    context.load_verify_locations(pki.ca_file)
    context.verify_mode = ssl.CERT_REQUIRED

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        if not chunked:
            return web.Response(body=body, content_type="application/xml")
        response = web.StreamResponse(headers={"Content-Type": "application/xml"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for at in range(0, len(body), 4096):  # no Content-Length: read until the end
            await response.write(body[at : at + 4096])
        await response.write_eof()
        return response

    app = web.Application(client_max_size=2**20)
    app.router.add_post("/OpenADR2/Simple/2.0b/{service}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    ctx, _ = client_context(TlsFiles(client[0], client[1], None), pki.ca_file)
    link = VtnLink(
        f"https://127.0.0.1:{port}/OpenADR2/Simple/2.0b", ctx, timeout_s=30, signing=None
    )
    try:
        yield link
    finally:
        await link.close()
        await runner.cleanup()


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_reply_far_above_64_kb_is_read_whole(tmp_path: Path, chunked: bool) -> None:
    body = distribute(60).encode()
    assert len(body) > 64 * 1024
    async with replying(tmp_path, body, chunked=chunked) as link:
        kind, payload = await link.request("OadrPoll", "oadrPoll", ven_id="ven")
    assert kind == "oadrDistributeEvent"
    assert [e["event_descriptor"]["event_id"] for e in payload["events"]] == [
        f"e{i}" for i in range(60)
    ]
    assert payload.get("refused_events", []) == []


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_reply_above_the_cap_is_refused_with_a_reason(
    tmp_path: Path, chunked: bool
) -> None:
    body = distribute(1) + " " * MAX_REPLY_BYTES  # whitespace after the root: well-formed
    async with replying(tmp_path, body.encode(), chunked=chunked) as link:
        with pytest.raises(VtnReplyError, match=f"larger than {MAX_REPLY_BYTES} bytes"):
            await link.request("OadrPoll", "oadrPoll", ven_id="ven")


def test_one_unreadable_event_is_refused_alone() -> None:
    text = distribute(3)
    start = text.index("<ei:eventID>e1</ei:eventID>")
    at = text.index("<ei:value>1", start)
    broken = text[:at] + "<ei:value>lots" + text[at + len("<ei:value>1") :]
    kind, payload = parse_reply(broken.encode())
    assert kind == "oadrDistributeEvent"
    assert [e["event_descriptor"]["event_id"] for e in payload["events"]] == ["e0", "e2"]
    [refused] = payload["refused_events"]
    assert (refused["event_id"], refused["modification_number"]) == ("e1", "0")
    assert "fails the 2.0b schema" in refused["reason"]


def test_a_reply_that_is_not_a_message_is_refused() -> None:
    with pytest.raises(VtnReplyError, match="not well-formed"):
        parse_reply(b"<oadrPayload")
    with pytest.raises(VtnReplyError, match=r"fails the 2\.0b schema"):
        parse_reply(b'<oadrPayload xmlns="http://openadr.org/oadr-2.0b/2012/07"/>')


# Run in a child process: before the fix, one internal entity in a reply crashed Python
# (SIGSEGV in libxml2 under openleadr's validating parser).
_DOCTYPE_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from openleadr.messaging import create_message
    from controller.adapters.openadr_link import VtnReplyError, parse_reply
    from tests.unit.test_openadr_link import replying

    ok = create_message(
        "oadrResponse",
        response={"response_code": 200, "response_description": "OK", "request_id": "r"},
        ven_id="v",
    )
    body = ok.split("?>", 1)[1].replace(">OK<", ">&ok;<", 1)
    hostile = {
        "entity": '<?xml version="1.0"?><!DOCTYPE oadrPayload [<!ENTITY ok "OK">]>' + body,
        "empty": '<?xml version="1.0"?><!DOCTYPE oadrPayload []>' + body.replace("&ok;", "OK"),
        "utf-16": '<!DOCTYPE oadrPayload [<!ENTITY ok "OK">]>' + body,
    }

    async def main() -> None:
        for name, text in hostile.items():
            data = text.encode("utf-16") if name == "utf-16" else text.encode()
            try:
                parse_reply(data)
                print(name, "accepted")
            except VtnReplyError as err:
                print(name, "refused:", err)
        async with replying(Path(sys.argv[1]), hostile["entity"].encode()) as link:
            try:
                print("link", await link.request("OadrPoll", "oadrPoll", ven_id="v"))
            except VtnReplyError as err:
                print("link refused:", err)

    asyncio.run(main())
    """
)


def test_a_doctype_reply_is_refused_without_crashing(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _DOCTYPE_CHILD, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    lines = child.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["entity", "empty", "utf-16", "link"]
    assert all("refused:" in line and "DOCTYPE" in line for line in lines), lines


def test_config_polls_faster_than_the_vtn_source_times_out(tmp_path: Path) -> None:
    pki = Pki(tmp_path, "grid")
    cert, key = pki.issue("ven", usage=CLIENT)
    data = site_dict(tmp_path, http=False)
    data["signals"] = {"sources": [{"id": "vtn", "heartbeat_timeout_s": 5}]}
    data["grid"]["openadr"] = {
        "vtn_url": "https://127.0.0.1:1/OpenADR2/Simple/2.0b",
        "ven_name": "ven",
        "source": "vtn",
        "cert": str(cert),
        "key": str(key),
        "vtn_ca": str(pki.ca_file),
        "poll_interval_s": 5,
        "levels": {1: {"fraction": 0.5}, 2: {"kw": 20}, 3: {"kw": 0}},
    }
    with pytest.raises(ConfigError) as err:
        parse(yaml.safe_dump(data))
    assert err.value.problems == [
        (
            "grid.openadr.poll_interval_s: 5 s must be below signals.sources[0]."
            "heartbeat_timeout_s (5 s): each poll is the VTN's heartbeat, so a slower poll "
            "makes it stale between polls"
        )
    ]
    data["grid"]["openadr"]["poll_interval_s"] = 4
    assert parse(yaml.safe_dump(data)).config.grid.openadr is not None


def test_text_for_the_templates_is_escaped_and_xml_safe() -> None:
    """An operator's reason goes into an oadrCreatedEvent: markup is escaped, and what XML
    cannot carry at all (C0 controls, lone surrogates) is replaced, so the answer can be
    built (one that cannot be built would be retried before every poll)."""
    text = xml_text("a<b>&c\x01d\ud800e\tf")
    assert text == "a&lt;b&gt;&amp;c?d?e\tf"
    etree.fromstring(f"<r>{text}</r>".encode())  # parses
