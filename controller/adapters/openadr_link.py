"""The VEN's wire to its VTN: OpenADR 2.0b simpleHttp over mutual TLS, with openleadr's
message templates, schema and parser (its only import outside this adapter).

openleadr's own client is not used: it schedules with APScheduler on the wall clock,
logs failures instead of raising them, and has no timeouts of its own. Here every request
has a deadline and every failure is a typed error the VEN's backoff can act on.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
import structlog
from lxml.etree import XMLSyntaxError
from openleadr import objects
from openleadr.messaging import create_message, parse_message, validate_xml_schema

from controller.record.site import SiteView

log = structlog.get_logger("curtaild.openadr")

MAX_REPLY_BYTES = 1024 * 1024  # an oadrDistributeEvent of many events stays well below


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
        """(reply type, reply payload); an empty HTTP reply is ("", {})."""
        message = self._message(message_type, payload)
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
                content = await reply.content.read(MAX_REPLY_BYTES + 1)
                status = reply.status
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise VtnUnreachableError(f"{service}: {type(err).__name__}: {err}") from None
        if status != 200:  # noqa: PLR2004
            text = content[:200].decode("utf-8", errors="replace")
            raise VtnReplyError(f"{service}: HTTP {status}: {text}")
        if len(content) > MAX_REPLY_BYTES:
            raise VtnReplyError(f"{service}: reply larger than {MAX_REPLY_BYTES} bytes")
        if not content.strip():
            return "", {}
        try:
            validate_xml_schema(content)
            kind, parsed = parse_message(content)
        except XMLSyntaxError as err:
            raise VtnReplyError(f"{service}: reply fails the 2.0b schema: {err}") from None
        except Exception as err:  # noqa: BLE001 - openleadr's parser raises anything
            raise VtnReplyError(f"{service}: reply cannot be parsed: {err!r}") from None
        return str(kind), parsed

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


def xml_text(value: object, limit: int = 200) -> str:
    """Text for openleadr's templates, which do not escape: reasons, echoed ids."""
    return escape(str(value)[:limit])


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
