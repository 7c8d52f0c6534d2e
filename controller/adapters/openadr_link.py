"""The VEN's wire to its VTN: OpenADR 2.0b simpleHttp over mutual TLS, with openleadr's
message templates, schema and parser (its only import outside this adapter).

openleadr's own client is not used: it schedules with APScheduler on the wall clock,
logs failures instead of raising them, and has no timeouts of its own. Here every request
has a deadline and every failure is a typed error the VEN's backoff can act on.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
import structlog
from lxml import etree
from openleadr import objects
from openleadr.messaging import XML_SCHEMA, create_message, parse_message

from controller.record.site import SiteView

log = structlog.get_logger("curtaild.openadr")

# ~600 single-interval events, or a day of 15-minute intervals for many events; parsed in
# a worker thread (about 0.5 s of CPU at the cap), never on the event loop.
MAX_REPLY_BYTES = 1024 * 1024
_OADR = "{http://openadr.org/oadr-2.0b/2012/07}"
_EI = "{http://docs.oasis-open.org/ns/energyinterop/201110}"
# What a VTN-assigned venID or registrationID may be: it goes back into every message,
# whose templates do not escape.
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class OpenAdrError(Exception):
    """The VTN could not be spoken to, or said no."""


class VtnUnreachableError(OpenAdrError):
    """No answer: connection refused, TLS failed, timed out."""


class VtnReplyError(OpenAdrError):
    """An answer that is not a usable OpenADR message (HTTP error, schema, parse), or a
    refusal; `code` is the OpenADR response code when the VTN gave one."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class VenMessageError(OpenAdrError):
    """Our own message could not be built (openleadr's preflight or signing failed)."""


@dataclass(frozen=True, slots=True)
class Signing:
    """The VEN's certificate and key (PEM bytes), to sign each message's XML."""

    cert: bytes
    key: bytes
    password: str | None = None


class VtnLink:
    """One HTTPS session to the VTN; `request` posts one message and parses the reply."""

    def __init__(
        self,
        vtn_url: str,
        context: ssl.SSLContext,
        *,
        timeout_s: float,
        signing: Signing | None,
    ) -> None:
        self._url = vtn_url.rstrip("/")
        self._context = context
        self._timeout_s = timeout_s
        self._signing = signing
        self._session: aiohttp.ClientSession | None = None

    async def request(
        self, service: str, message_type: str, **payload: object
    ) -> tuple[str, dict[str, Any]]:
        """(reply type, reply payload); an empty HTTP reply is ("", {}). An
        oadrDistributeEvent's events that cannot be read are under "refused_events"."""
        try:
            message = self._message(message_type, payload)
        except Exception as err:  # noqa: BLE001 - openleadr's preflight and signxml raise anything
            raise VenMessageError(f"{message_type}: cannot be built: {err!r}") from None
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._context, limit=4),
                headers={"Content-Type": "application/xml"},
            )
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._session.post(f"{self._url}/{service}", data=message) as reply,
            ):
                status = reply.status
                content = await _read_capped(reply, service)
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise VtnUnreachableError(f"{service}: {type(err).__name__}: {err}") from None
        if status != 200:  # noqa: PLR2004
            text = content[:200].decode("utf-8", errors="replace")
            raise VtnReplyError(f"{service}: HTTP {status}: {text}")
        if not content.strip():
            return "", {}
        # lxml and xmltodict hold the GIL for much of it, but the loop gets its turns.
        return await asyncio.to_thread(parse_reply, content, service)

    def _message(self, message_type: str, payload: dict[str, object]) -> str:
        signing = self._signing
        text: str = create_message(
            message_type,
            cert=signing.cert if signing else None,
            key=signing.key if signing else None,
            passphrase=signing.password if signing else None,
            disable_signature=signing is None,
            **payload,
        )
        return text

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_capped(reply: aiohttp.ClientResponse, service: str) -> bytes:
    """The whole body (content.read(n) returns only what is buffered), refused above
    MAX_REPLY_BYTES, by its Content-Length before reading when it gives one."""
    too_big = f"{service}: reply larger than {MAX_REPLY_BYTES} bytes; refused"
    if reply.content_length is not None and reply.content_length > MAX_REPLY_BYTES:
        raise VtnReplyError(too_big)
    chunks: list[bytes] = []
    size = 0
    async for chunk in reply.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise VtnReplyError(too_big)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_reply(content: bytes, service: str = "reply") -> tuple[str, dict[str, Any]]:
    """A VTN's reply as (type, payload), read safely: no DTD, no entities, no network, no
    huge trees (a DOCTYPE is refused outright: one entity in openleadr's validating parser
    crashed the process), then the 2.0b schema, then openleadr's parser. In an
    oadrDistributeEvent an event that fails the schema or the parser is refused alone:
    the others are read, and it is listed under "refused_events" (event_id,
    modification_number, reason) so that it is answered, not dropped."""
    if b"<!DOCTYPE" in content or b"<!ENTITY" in content:
        raise VtnReplyError(f"{service}: reply has a DOCTYPE; refused")
    parser = etree.XMLParser(
        resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False
    )
    try:
        root = etree.fromstring(content, parser)
    except etree.XMLSyntaxError as err:
        raise VtnReplyError(f"{service}: reply is not well-formed XML: {err}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype:  # e.g. a UTF-16 DOCTYPE
        raise VtnReplyError(f"{service}: reply has a DOCTYPE; refused")
    try:
        return _validated(root)
    except _UnreadableError as err:
        distribute = root.find(f".//{_OADR}oadrDistributeEvent")
        if distribute is None:
            raise VtnReplyError(f"{service}: {err}") from None
    return _event_by_event(root, distribute, service)


class _UnreadableError(Exception):
    pass


def _validated(root: etree._Element) -> tuple[str, dict[str, Any]]:
    try:
        XML_SCHEMA.assertValid(root)
    except etree.DocumentInvalid as err:
        raise _UnreadableError(f"fails the 2.0b schema: {err}") from None
    try:
        kind, payload = parse_message(etree.tostring(root))
    except Exception as err:  # noqa: BLE001 - openleadr's parser raises anything
        raise _UnreadableError(f"cannot be parsed: {err!r}") from None
    if not isinstance(payload, dict):
        raise _UnreadableError("cannot be parsed: not a message")
    return str(kind), payload


def _event_by_event(
    root: etree._Element, distribute: etree._Element, service: str
) -> tuple[str, dict[str, Any]]:
    events = distribute.findall(f"{_OADR}oadrEvent")
    for event in events:
        distribute.remove(event)
    try:
        kind, payload = _validated(root)  # the envelope alone
    except _UnreadableError as err:
        raise VtnReplyError(f"{service}: {err}") from None
    payload["events"] = []
    refused: list[dict[str, Any]] = []
    for event in events:
        distribute.append(event)
        try:
            _, one = _validated(root)
            payload["events"].extend(one.get("events") or [])
        except _UnreadableError as err:
            refused.append(
                {
                    "event_id": event.findtext(f".//{_EI}eventDescriptor/{_EI}eventID"),
                    "modification_number": event.findtext(
                        f".//{_EI}eventDescriptor/{_EI}modificationNumber"
                    ),
                    "reason": f"the event {err}"[:500],
                }
            )
        distribute.remove(event)
    payload["refused_events"] = refused
    return kind, payload


def plain_id(value: object, what: str) -> str:
    """A VTN-assigned id we send back in every message: refused unless a plain token."""
    text = str(value)
    if not _PLAIN_ID.fullmatch(text):
        raise VtnReplyError(
            f"registration refused: the VTN's {what} {text[:60]!r} is not a "
            "plain id (1-128 of A-Z a-z 0-9 . _ : @ / + = -)"
        )
    return text


# Characters XML 1.0 cannot carry at all (escaping does not help): C0 controls but tab,
# newline and return; lone surrogates; U+FFFE/U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(value: object, limit: int = 200) -> str:
    """Text for openleadr's templates, which do not escape: reasons, echoed ids."""
    return escape(_NOT_XML.sub("?", str(value)[:limit]))


# The VEN's reports (r_ids are stable so a VTN can keep its requests across restarts).
USAGE_SPECIFIER = "curtaild-telemetry-usage"
STATUS_SPECIFIER = "curtaild-telemetry-status"
R_METER = "site-meter"  # the site meter's power, kW
R_ESTIMATE = "site-estimate"  # no fresh meter: firmware readings, the rest at rated power
R_ONLINE = "online"  # 1: the loop is running and ready
R_OVERRIDE = "manual-override"  # 1: an operator override, hold or paused automation
R_LIMIT = "load-control-kw"  # the limit in force, kW


def report_catalogue(resource: str, sampling_s: float, now: datetime) -> list[objects.Report]:
    """What oadrRegisterReport offers: TELEMETRY_USAGE (measured, or estimated and
    labelled so by its own r_id and reading type) and TELEMETRY_STATUS as floats
    (openleadr renders report payloads as payloadFloat only)."""
    rate = objects.SamplingRate(
        min_period=timedelta(seconds=sampling_s),
        max_period=timedelta(hours=1),
        on_change=False,
    )
    target = objects.Target(resource_id=resource)
    power = objects.Measurement(
        name="powerReal",
        description="RealPower",
        unit="W",
        scale="k",
        power_attributes=objects.PowerAttributes(hertz=50, voltage=230, ac=True),
    )

    def described(
        r_id: str, reading: str, measurement: objects.Measurement | None
    ) -> objects.ReportDescription:
        return objects.ReportDescription(
            r_id=r_id,
            market_context=None,
            reading_type=reading,
            report_subject=target,
            report_data_source=target,
            report_type="reading",
            sampling_rate=rate,
            measurement=measurement,
        )

    usage = objects.Report(
        report_specifier_id=USAGE_SPECIFIER,
        report_name="METADATA_TELEMETRY_USAGE",
        report_descriptions=[
            described(R_METER, "Direct Read", power),
            described(R_ESTIMATE, "Estimated", power),
        ],
        created_date_time=now,
        duration=timedelta(hours=1),
        dtstart=now,
    )
    status = objects.Report(
        report_specifier_id=STATUS_SPECIFIER,
        report_name="METADATA_TELEMETRY_STATUS",
        report_descriptions=[
            described(r, "x-notApplicable", None) for r in (R_ONLINE, R_OVERRIDE, R_LIMIT)
        ],
        created_date_time=now,
        duration=timedelta(hours=1),
        dtstart=now,
    )
    return [usage, status]


def telemetry_values(view: SiteView) -> dict[str, float]:
    """The r_ids this VEN reports and their values now. Usage goes under the meter's r_id
    only when the site meter measured it; otherwise under the estimate's."""
    values: dict[str, float] = {
        R_ONLINE: 1.0 if view.ready else 0.0,
        R_OVERRIDE: 1.0 if (view.overrides or view.holds or view.automation.paused) else 0.0,
    }
    if view.limit is not None:
        values[R_LIMIT] = view.limit.limit_w / 1000
    if view.measured_w is not None:
        usage = R_METER if view.measured_by == "meter" else R_ESTIMATE
        values[usage] = view.measured_w / 1000
    return values
